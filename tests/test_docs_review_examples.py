"""The request examples of README.md and docs/serving.md, run as a newcomer runs them: every ``curl`` command and
every ``openai`` client block, against a real server (the tiny Llama served under the default model's name, so the
examples' ``model`` field names it; the host and port are this server's). Each curl request answers 200 with the
fields its route returns, and each Python block runs to its end with no exception.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "server"))

from server_utils import RemoteServer  # noqa: E402
from test_docs_consistency import ROOT, fenced_blocks  # noqa: E402
from tiny_models import build_long_context_model  # noqa: E402

DEFAULT_NAME = "SmolLM2-135M-Instruct"
DOCS = [ROOT / "README.md", ROOT / "docs" / "serving.md"]
DOC_ADDRESS = re.compile(r"(?:https?://)?(?:127\.0\.0\.1|localhost):8000")

# The fields each route's answer has (OpenAI's shapes; docs/serving.md, "Endpoints").
ANSWER_FIELDS = {
    "/v1/models": {"object", "data"},
    "/v1/completions": {"id", "object", "model", "choices", "usage"},
    "/v1/chat/completions": {"id", "object", "model", "choices", "usage"},
}


@pytest.fixture(scope="module")
def docs_server(tmp_path_factory):
    model = build_long_context_model(tmp_path_factory.mktemp("docs_examples") / "llama")
    srv = RemoteServer(str(model), ["--served-model-name", DEFAULT_NAME, "--kv-cache-memory-bytes", "64M"])
    yield srv
    srv.stop()


def curl_commands() -> list[tuple[str, list[str]]]:
    """(doc, argv) of each curl command in the shell blocks of README.md and docs/serving.md."""
    out = []
    for path in DOCS:
        for info, body in fenced_blocks(path.read_text()):
            if info != "bash":
                continue
            # a command runs on until a line that starts another one (a -d body spans lines)
            for command in re.split(r"\n(?=\S)", body):
                if command.startswith("curl "):
                    out.append((path.name, shlex.split(command.replace("\\\n", " "))))
    return out


def send_curl(argv: list[str], base_url: str) -> httpx.Response:
    """What ``curl`` would send for ``argv`` (``-H``, ``-d``; POST when there is a body), to ``base_url``."""
    headers, body, url = {}, None, None
    it = iter(argv[1:])
    for arg in it:
        if arg == "-H":
            name, value = next(it).split(":", 1)
            headers[name.strip()] = value.strip()
        elif arg == "-d":
            body = next(it)
        elif DOC_ADDRESS.match(arg):
            url = DOC_ADDRESS.sub(base_url, arg)
        else:
            raise AssertionError(f"the test does not read curl's {arg!r}: extend send_curl")
    assert url is not None, argv
    if body is None:
        return httpx.get(url, headers=headers, timeout=120)
    return httpx.post(url, content=body, headers=headers, timeout=120)


def test_docs_curl_examples_answer(docs_server):
    commands = curl_commands()
    assert len(commands) >= 5  # README's chat and structured-output requests, serving.md's three
    for doc, argv in commands:
        r = send_curl(argv, docs_server.url)
        assert r.status_code == 200, (doc, argv, r.text)
        route = DOC_ADDRESS.sub("", next(a for a in argv if DOC_ADDRESS.match(a)))
        assert ANSWER_FIELDS[route] <= set(r.json()), (doc, route, r.json())
        if "response_format" in (body := next((argv[i + 1] for i, a in enumerate(argv) if a == "-d"), "")):
            choice = r.json()["choices"][0]
            if choice["finish_reason"] == "stop":  # a finished constrained answer is the schema's JSON
                assert isinstance(json.loads(choice["message"]["content"]), dict), body


def client_blocks() -> list[tuple[str, str]]:
    """(doc, code): the Python blocks that use the ``openai`` client, each doc's in order (a later one may use the
    ``client`` an earlier one made)."""
    out = []
    for path in DOCS:
        blocks = [body for info, body in fenced_blocks(path.read_text()) if info == "python" and "client." in body]
        if blocks:
            out.append((path.name, "\n".join(blocks)))
    return out


def test_docs_openai_client_examples_run(docs_server):
    blocks = client_blocks()
    assert [doc for doc, _ in blocks] == ["README.md", "serving.md"]
    for doc, code in blocks:
        assert DOC_ADDRESS.search(code), doc
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(DOC_ADDRESS.sub(docs_server.url, code), doc, "exec"), {})  # noqa: S102
        assert out.getvalue().strip(), doc  # each example prints its answers
