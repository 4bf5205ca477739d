"""Incremental detokenization with stop-string detection.

Text is produced by decoding a short window of token ids twice (with and without the
newest token) and emitting only the difference, holding it back while it ends in an
incomplete UTF-8 sequence (U+FFFD). The window is seeded with the prompt's last
tokens so tokenizers that drop a leading space at the start of a text keep it.

Each stop string is searched only where it would end in the new text (from ``len(stop) - 1``
characters before it), so strings spanning token boundaries are found at O(len(stop)) cost
per token, and one completed within ``min_tokens`` never counts later (vLLM's rule).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_SEED_TOKENS = 6


def _is_plain_fast_tokenizer(cls: type) -> bool:
    """A transformers fast tokenizer whose ``decode`` and ``_decode`` are transformers' own."""
    try:
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:  # another transformers layout: the general call
        return False
    return (issubclass(cls, TokenizersBackend) and getattr(cls, "decode", None) is PreTrainedTokenizerBase.decode
            and getattr(cls, "_decode", None) is TokenizersBackend._decode)


def ids_decoder(tokenizer: Any, skip_special_tokens: bool) -> Callable[[list[int]], str]:
    """``ids -> tokenizer.decode(ids, skip_special_tokens=..., clean_up_tokenization_spaces=False)``.

    For a transformers fast tokenizer whose ``decode`` / ``_decode`` are transformers' own, that is
    exactly the Rust tokenizer's ``decode`` (no clean-up asked for), which is called directly: the
    Python wrapper around it cost more than the decoding itself, twice per streamed token.
    """
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is not None and _is_plain_fast_tokenizer(type(tokenizer)):
        rust_decode = backend.decode
        return lambda ids: rust_decode(ids, skip_special_tokens=skip_special_tokens)
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=skip_special_tokens,
                                        clean_up_tokenization_spaces=False)


class IncrementalDetokenizer:
    def __init__(
        self,
        tokenizer: Any,
        prompt_token_ids: list[int],
        skip_special_tokens: bool = True,
        stop: list[str] | None = None,
        include_stop_str_in_output: bool = False,
        min_tokens: int = 0,
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._decode = ids_decoder(tokenizer, skip_special_tokens)
        self.stop = list(stop or [])
        self.include_stop = include_stop_str_in_output
        self.max_stop_len = max((len(s) for s in self.stop), default=0)
        # As in vLLM, stop strings count only once more than min_tokens tokens were generated.
        self.min_tokens = min_tokens
        self._num_tokens = 0
        seed = list(prompt_token_ids[-_SEED_TOKENS:])
        self._ids: list[int] = seed
        self._prefix_offset = 0
        self._read_offset = len(seed)
        self.text = ""
        self._streamed = 0  # characters already handed out by ``take_stream_delta``

    def add_token(self, token_id: int) -> str | None:
        """Append a token. Returns the stop string if one now appears in the text."""
        self._ids.append(token_id)
        self._num_tokens += 1
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return None
        delta = full[len(prefix) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        before = len(self.text)
        self.text += delta
        if not self.stop or self._num_tokens <= self.min_tokens:
            return None
        best: tuple[int, str] | None = None
        for s in self.stop:  # a match ends in the new text (vLLM's rule: one within min_tokens never counts)
            idx = self.text.find(s, max(0, before - len(s) + 1))
            if idx != -1 and (best is None or idx < best[0]):
                best = (idx, s)
        if best is None:
            return None
        idx, s = best
        self.text = self.text[: idx + len(s)] if self.include_stop else self.text[:idx]
        return s

    def _shown_end(self, finished: bool) -> int:
        """Where the text that may be shown ends: all of it once finished; while running, short of the last
        ``max_stop_len - 1`` characters when stop strings are left out of the output (they may begin one, and
        would be cut when it completes). A later stop string starts at or past this point, so what was shown
        is always a prefix of the final text (vLLM's ``stop_buffer_length``)."""
        end = len(self.text)
        if not finished and self.stop and not self.include_stop:
            end = max(0, end - (self.max_stop_len - 1))
        return end

    def shown_text(self, finished: bool) -> str:
        """The text a cumulative output carries (vLLM's ``get_next_output_text(finished, delta=False)``)."""
        return self.text[: self._shown_end(finished)]

    def take_stream_delta(self, finished: bool) -> str:
        """Text not yet streamed. While running, holds back a tail that may begin a stop string."""
        end = max(self._streamed, self._shown_end(finished))
        delta = self.text[self._streamed : end]
        self._streamed = end
        return delta


def decode_token(tokenizer: Any, token_id: int) -> str:
    return tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
