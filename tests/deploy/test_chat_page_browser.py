"""The chat page at / in headless Chromium against the real default model behind ``pagoda serve --api-key``.

One server and one browser for the module; the tests run in order on the same page: the page loads without
the key and asks for it; typing the key fills the model selector; a question gets a streamed answer (seen
growing in several steps, equal to the API's own greedy answer); Stop ends a long generation and the server
aborts it; a reply holding HTML / <script> (from the browser's storage, and streamed through the page's own
SSE reader from a stubbed network response) is shown as text and never runs.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
from server_utils import API_KEY, RemoteServer, wait_for

pytestmark = pytest.mark.default_model

MODEL = "SmolLM2-135M-Instruct"
QUESTION = "What is the capital of France?"
EVIL = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"><b>bold?</b> é✓'

# Records every text the last assistant bubble is given (the page sets its textContent once per SSE delta).
OBSERVE = """
window.__seen = [];
new MutationObserver((recs) => {
  for (const r of recs) {
    if (r.target.classList && r.target.classList.contains('assistant'))
      for (const n of r.addedNodes) if (n.nodeType === Node.TEXT_NODE) window.__seen.push(n.data);
  }
}).observe(document.getElementById('messages'), {childList: true, subtree: true});
"""


@pytest.fixture(scope="module")
def srv():
    # No prefix caching: the page's answer is compared with the API's to the same question, which would otherwise
    # reuse the page's cached prompt; in bf16 on the CPU a cache hit may round differently and flip a near-tie
    # (on an AVX-512-BF16 AMD EPYC: "L'Étoile, ..." against "The capital of France is Paris.").
    s = RemoteServer(None, ["--max-model-len", "1024", "--kv-cache-memory-bytes", "256M", "--no-enable-prefix-caching"],
                     env={"OMP_NUM_THREADS": "2"}, api_key=API_KEY, wait=False)
    try:
        s.wait_ready(600)  # a loaded shared machine can take minutes to load the model
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def page(srv, browser):
    browser.get(srv.url + "/")
    browser.execute_script("localStorage.clear(); sessionStorage.clear();")
    browser.get(srv.url + "/")
    return browser


def by_id(drv, name):
    return drv.find_element("id", name)


def state(drv) -> str:
    return by_id(drv, "status").get_attribute("data-state")


def set_field(drv, name: str, value: str) -> None:
    el = by_id(drv, name)
    el.clear()
    el.send_keys(value)
    drv.execute_script("arguments[0].dispatchEvent(new Event('change'))", el)


def ask(drv, text: str) -> None:
    by_id(drv, "prompt").send_keys(text)
    by_id(drv, "send").click()


def assistant_texts(drv) -> list[str]:
    return [e.get_attribute("textContent") for e in drv.find_elements("css selector", "#messages .msg.assistant")]


def test_page_loads_without_the_key_and_asks_for_it(srv, page):
    r = httpx.get(srv.url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "script-src 'sha256-" in r.headers["content-security-policy"]
    assert "http://" not in r.text and "https://" not in r.text  # nothing fetched from elsewhere (offline)
    assert httpx.get(srv.url + "/v1/models").status_code == 401  # the data routes still need it
    assert wait_for(lambda: "API key" in by_id(page, "status").text, 30)
    assert by_id(page, "model").find_elements("tag name", "option") == []
    set_field(page, "api-key", API_KEY)
    assert wait_for(lambda: by_id(page, "model").get_attribute("value") == MODEL, 30)
    severe = [e for e in page.get_log("browser") if e["level"] == "SEVERE" and "/v1/models" not in e["message"]]
    assert severe == []  # e.g. no Content-Security-Policy refusal of the page's own script


def test_streamed_answer_appears_incrementally(srv, page):
    set_field(page, "temperature", "0")
    set_field(page, "max-tokens", "24")
    page.execute_script(OBSERVE)
    ask(page, QUESTION)
    assert wait_for(lambda: state(page) == "generating", 30)
    assert wait_for(lambda: state(page) == "idle", 120)
    shown = assistant_texts(page)[-1]
    seen = page.execute_script("return window.__seen")
    assert len(seen) >= 2, seen  # the text grew in steps, one per streamed delta
    for a, b in zip(seen, seen[1:], strict=False):
        assert b.startswith(a) and len(b) > len(a)
    assert seen[-1] == shown
    ref = srv.post("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}],
                                            "max_tokens": 24, "temperature": 0}).json()
    assert shown and shown == ref["choices"][0]["message"]["content"]  # the page shows what the API answers
    stored = json.loads(page.execute_script("return localStorage.getItem('pagoda-chat')"))
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant"]
    assert stored["messages"][1]["content"] == shown


def test_stop_aborts_the_generation(srv, page):
    by_id(page, "clear").click()
    set_field(page, "temperature", "0.8")
    set_field(page, "max-tokens", "900")
    aborted = srv.metric("pagoda:request_success_total", finished_reason="abort")
    ask(page, "Write a very long story about a dragon who learns to cook, with many chapters.")
    assert wait_for(lambda: len(assistant_texts(page)) == 1 and len(assistant_texts(page)[0]) > 0, 60)
    assert state(page) == "generating"  # still streaming: 900 tokens take far longer than this
    by_id(page, "stop").click()
    assert wait_for(lambda: state(page) == "idle", 10)
    assert by_id(page, "status").text == "stopped"
    bubble = page.find_element("css selector", "#messages .msg.assistant")
    assert "stopped" in bubble.get_attribute("class")
    # the server saw the client go and aborted the request (its KV blocks freed)
    assert wait_for(lambda: srv.metric("pagoda:request_success_total", finished_reason="abort") == aborted + 1, 30)
    assert wait_for(lambda: srv.metric("pagoda:num_requests_running") == 0, 30)
    text = bubble.get_attribute("textContent")
    time.sleep(0.5)
    assert bubble.get_attribute("textContent") == text  # nothing more arrives
    stored = json.loads(page.execute_script("return localStorage.getItem('pagoda-chat')"))
    assert stored["messages"][-1]["stopped"] is True


def test_stored_reply_with_markup_is_text(srv, page):
    convo = {"messages": [{"role": "user", "content": "<i>hi</i>"}, {"role": "assistant", "content": EVIL}],
             "settings": {"model": MODEL}}
    page.execute_script("localStorage.setItem('pagoda-chat', arguments[0])", json.dumps(convo))
    page.refresh()
    assert wait_for(lambda: len(assistant_texts(page)) == 1, 10)
    assert assistant_texts(page) == [EVIL]
    msgs = by_id(page, "messages")
    assert msgs.find_elements("css selector", "script, img, b, i") == []
    assert page.execute_script("return window.__pwned") is None


# Serves the page's next chat request from ``chunks`` (byte slices of an SSE body cut at awkward places:
# inside a line, inside a UTF-8 character), so markup in a streamed reply goes through the page's own reader.
STUB_FETCH = """
const body = new TextEncoder().encode(arguments[0]), step = arguments[1], real = window.fetch;
window.fetch = (url, init) => {
  if (!String(url).includes('chat/completions')) return real(url, init);
  window.fetch = real;
  const stream = new ReadableStream({start(c) {
    for (let i = 0; i < body.length; i += step) c.enqueue(body.slice(i, i + step));
    c.close();
  }});
  return Promise.resolve(new Response(stream, {status: 200, headers: {'content-type': 'text/event-stream'}}));
};
"""


def test_streamed_reply_with_script_is_shown_as_text(srv, page):
    assert wait_for(lambda: by_id(page, "model").get_attribute("value") == MODEL, 30)
    by_id(page, "clear").click()
    pieces = [EVIL[:9], EVIL[9:30], EVIL[30:]]
    events = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    events += [{"choices": [{"index": 0, "delta": {"content": p}}]} for p in pieces]
    sse = "".join(f"data: {json.dumps(e, ensure_ascii=False)}\r\n\r\n" for e in events) + "data: [DONE]\n\n"
    page.execute_script(STUB_FETCH, sse, 7)
    ask(page, "show me markup")
    assert wait_for(lambda: state(page) == "idle" and by_id(page, "status").text == "done", 30)
    assert assistant_texts(page) == [EVIL]
    assert by_id(page, "messages").find_elements("css selector", "script, img, b") == []
    assert page.execute_script("return window.__pwned") is None
