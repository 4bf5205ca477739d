"""``--chat-template-content-format`` (vLLM's): how message content reaches the chat template. A template written
for OpenAI-style content (it loops over each message's parts) used to get the text as a string and render nothing
of it; ``auto`` now detects such a template, as vLLM does."""

from __future__ import annotations

import pytest

from pagoda import LLM, SamplingParams
from pagoda.engine.chat_content_format import detect_content_format, resolve_content_format

PARTS_ONLY = ("{% for m in messages %}<{{ m['role'] }}>{% for p in m['content'] %}{{ p['text'] }}{% endfor %}"
              "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
STRING_ONLY = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
               "{% if add_generation_prompt %}<assistant>{% endif %}")
EITHER = ("{% for m in messages %}<{{ m.role }}>{% if m.content is string %}{{ m.content }}{% else %}"
          "{% for p in m.content %}{{ p.text }}{% endfor %}{% endif %}{% endfor %}")


@pytest.mark.parametrize(("template", "expected"), [
    (PARTS_ONLY, "openai"), (STRING_ONLY, "string"), (EITHER, "openai"),
    ("{% for m in messages %}{% for p in m.content | selectattr('type', 'eq', 'text') %}{{ p.text }}{% endfor %}"
     "{% endfor %}", "openai"),
    ("{% for m in messages %}{{ m.content }}{% endfor %}{% if", "string"),  # does not parse: rendering says so
])
def test_auto_detects_templates_that_loop_over_the_content(template, expected):
    assert detect_content_format(template) == expected
    assert resolve_content_format("auto", template) == expected
    assert resolve_content_format("string", template) == "string"
    assert resolve_content_format("openai", template) == "openai"


def _rendered(llm: LLM, template: str, **kw) -> str:
    conv = [{"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hello"}, {"type": "text", "text": "there"}]}]
    prompt = llm.chat_prompt(conv, chat_template=template, **kw)
    return prompt["prompt"]


def test_offline_chat_renders_a_parts_template_with_the_text(tiny):
    llm = tiny.llm("llama")
    assert _rendered(llm, PARTS_ONLY) == "<system>be brief<user>hellothere<assistant>"  # auto: parts
    assert _rendered(llm, PARTS_ONLY, content_format="string") == "<system><user><assistant>"  # forced: as before
    assert _rendered(llm, STRING_ONLY) == "<system>be brief<user>hello\nthere<assistant>"  # parts joined, as vLLM
    assert _rendered(llm, STRING_ONLY, content_format="openai").startswith("<system>[{")  # the parts, as asked
    out = llm.chat([{"role": "user", "content": "hi"}], SamplingParams(max_tokens=2), chat_template=PARTS_ONLY,
                   use_tqdm=False)[0]
    assert out.prompt == "<user>hi<assistant>"
    with pytest.raises(ValueError, match="chat_template_content_format"):
        llm.chat([{"role": "user", "content": "hi"}], chat_template=PARTS_ONLY, chat_template_content_format="list")


def test_engine_default_and_bad_value(tiny):
    from pagoda.config import EngineArgs

    llm = tiny.llm("llama", chat_template_content_format="string")
    assert _rendered(llm, PARTS_ONLY) == "<system><user><assistant>"
    assert llm.chat([{"role": "user", "content": "hi"}], SamplingParams(max_tokens=1), chat_template=PARTS_ONLY,
                    chat_template_content_format="auto", use_tqdm=False)[0].prompt == "<user>hi<assistant>"
    with pytest.raises(ValueError, match=r"--chat-template-content-format\) must be one of"):
        EngineArgs(chat_template_content_format="list").validate()

