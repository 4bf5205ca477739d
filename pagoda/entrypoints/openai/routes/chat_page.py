"""GET /: the built-in chat page (``static/chat.html``), one self-contained file with no data in it.

The page needs no API key to load (it is in ``middleware.UNAUTHENTICATED_PATHS``): it holds no data;
its own calls to /v1/models and /v1/chat/completions carry the key the user types into it. Its
Content-Security-Policy allows only the page's own inline script and style (by hash) and requests to
this server, so nothing a reply holds could run even if it reached the page as markup.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter()

CHAT_PAGE = "static/chat.html"


@functools.cache
def chat_page() -> tuple[str, str]:
    """(the page's HTML, its Content-Security-Policy)."""
    html = resources.files("pagoda.entrypoints.openai").joinpath(CHAT_PAGE).read_text(encoding="utf-8")

    code = re.sub(r"<!--.*?-->", "", html, flags=re.S)  # a comment may mention a <script> tag

    def hashes(tag: str) -> str:
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", code, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in bodies)

    csp = (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; connect-src 'self'; "
           "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return html, csp


@router.get("/", include_in_schema=False)
async def index() -> HTMLResponse:
    html, csp = chat_page()
    return HTMLResponse(html, headers={"Content-Security-Policy": csp, "Cache-Control": "no-cache",
                                       "X-Content-Type-Options": "nosniff"})
