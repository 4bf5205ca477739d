"""How a listening address is written in a URL."""

from __future__ import annotations


def url_host(host: str | None) -> str:
    """``host`` as a URL writes it: an IPv6 address in brackets (``[::]``), anything else as it is."""
    host = host or ""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
