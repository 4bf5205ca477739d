"""The API-key check shared by the OpenAI server and the router: ``Authorization: Bearer KEY``."""

from __future__ import annotations

import hashlib
import secrets


def bearer_token(header: bytes) -> bytes | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, or None for another scheme. The scheme is
    case-insensitive (RFC 9110, and vLLM's check), so ``bearer KEY`` is the key too; spaces around the token are
    not part of it."""
    scheme, _, token = header.strip().partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" else None


class ApiKeys:
    """Any of ``keys`` (vLLM's ``--api-key`` takes several). The token's SHA-256 is compared with each key's in
    constant time (fixed length, so the time says nothing about a key's length; every key is compared, whichever
    matches)."""

    def __init__(self, keys: str | list[str]) -> None:
        self._digests = [_digest(k.encode()) for k in ([keys] if isinstance(keys, str) else keys)]

    def accepts(self, header: bytes) -> bool:
        """Whether an ``Authorization`` header's value carries one of the keys."""
        token = bearer_token(header)
        digest = _digest(token if token is not None else header)
        matched = [secrets.compare_digest(digest, key) for key in self._digests]  # no early exit
        return token is not None and any(matched)


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()
