"""GET / serves the chat page without the API key; the page's CSP admits exactly its own inline script and
style. (The page's behaviour in a browser: tests/deploy/test_chat_page_browser.py.)"""

from __future__ import annotations

import base64
import hashlib
import re

import httpx


def csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_chat_page_needs_no_key_and_pins_its_script(server):
    r = httpx.get(server.url + "/", timeout=30)  # the shared server has an API key; no header sent
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'id="composer"' in r.text and "v1/chat/completions" in r.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", r.text)  # nothing loaded from elsewhere
    csp = dict(d.strip().split(" ", 1) for d in r.headers["content-security-policy"].split(";"))
    code = re.sub(r"<!--.*?-->", "", r.text, flags=re.S)
    scripts = re.findall(r"<script>(.*?)</script>", code, flags=re.S)
    styles = re.findall(r"<style>(.*?)</style>", code, flags=re.S)
    assert len(scripts) == 1 and len(styles) == 1
    assert csp["script-src"] == csp_hash(scripts[0]) and csp["style-src"] == csp_hash(styles[0])
    assert csp["default-src"] == "'none'" and csp["connect-src"] == "'self'"
    assert "innerHTML" not in r.text and "insertAdjacentHTML" not in r.text and "eval(" not in r.text
    # only the page is open: a POST to / is not a way around the key, and the API still needs it
    assert httpx.post(server.url + "/", json={}, timeout=30).status_code == 405
    assert httpx.get(server.url + "/v1/models", timeout=30).status_code == 401
