"""``--chat-template-content-format`` through ``pagoda serve`` (the offline side: tests/test_chat_content_format.py)."""

from __future__ import annotations

from server_utils import RemoteServer

PARTS_ONLY = ("{% for m in messages %}<{{ m['role'] }}>{% for p in m['content'] %}{{ p['text'] }}{% endfor %}"
              "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")


def test_server_renders_a_parts_template_with_the_text(tiny_model_dir, tmp_path):
    """``pagoda serve --chat-template`` with a parts-only template: /tokenize's chat rendering (the chat route's own)
    carries the message text under the default ``auto``, and none of it under ``--chat-template-content-format
    string``."""
    template = tmp_path / "parts.jinja"
    template.write_text(PARTS_ONLY)
    body = {"messages": [{"role": "user", "content": "hello there"}], "add_generation_prompt": True}
    for fmt, expected in (("auto", "<user>hello there<assistant>"), ("string", "<user><assistant>")):
        srv = RemoteServer(str(tiny_model_dir), ["--chat-template", str(template), "--kv-cache-memory-bytes", "16M",
                                                 "--chat-template-content-format", fmt])
        try:
            ids = srv.post("/tokenize", body).json()["tokens"]
            assert srv.post("/detokenize", {"tokens": ids}).json()["prompt"] == expected, fmt
        finally:
            srv.stop()
