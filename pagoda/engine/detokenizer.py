"""Incremental detokenization with stop-string detection.

Text is produced by decoding a short window of token ids twice (with and without the
newest token) and emitting only the difference, holding it back while it ends in an
incomplete UTF-8 sequence (U+FFFD); when the request finishes, what is still held back is
added as decoded (:meth:`IncrementalDetokenizer.finish`). The window is seeded with the
prompt's last tokens so tokenizers that drop a leading space at the start of a text keep it.

Each stop string is searched only where it would end in the new text (from ``len(stop) - 1``
characters before it), so strings spanning token boundaries are found at O(len(stop)) cost
per token, and one completed within ``min_tokens`` never counts later (vLLM's rule). Of the
matches, the one that ends first wins (at a tie, the first listed): the text a character-by-
character check would stop at, whatever the tokens' lengths (vLLM's ``check_stop_strings``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_SEED_TOKENS = 6
_MAX_SEED_TOKENS = 24
_MAX_CUT_TOKENS = 3  # trailing prompt tokens that may hold an incomplete character (one per byte of a UTF-8 one)


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
        seed, read, self._seed_text = self._seed(list(prompt_token_ids[-(_MAX_SEED_TOKENS + _MAX_CUT_TOKENS):]))
        self._ids: list[int] = seed
        self._seed_len = len(seed)
        self._prefix_offset = 0
        self._read_offset = read
        self.text = ""
        self._streamed = 0  # characters already handed out by ``take_stream_delta``

    def _seed(self, prompt: list[int]) -> tuple[list[int], int, str | None]:
        """The prompt's last tokens that start the window, how many of them are read, and the text they count for
        when it is not their decode. The window starts on a character, at least ``_SEED_TOKENS`` (up to
        ``_MAX_SEED_TOKENS``) tokens back: a byte-fallback decoder turns a whole run of bytes into U+FFFD when it
        starts inside a character, and with it the output's first characters.

        A prompt that ends inside a character counts only for its whole characters, so the output's first character
        takes the prompt's bytes of it (as vLLM's ``DecodeStream`` stepped through the prompt gives it) instead of
        being lost against a text that ends in U+FFFD. Its whole characters are the longer of: the decode of its
        tokens up to the last one that ends a character (byte-fallback: one token per byte), and its decode less
        the trailing U+FFFDs (byte-level tokens that hold a character's first bytes after whole ones)."""
        n = len(prompt)
        for end in range(n, max(n - _MAX_CUT_TOKENS, 0) - 1, -1):
            for size in range(min(_SEED_TOKENS, end), min(_MAX_SEED_TOKENS, end) + 1):
                whole = self._decode(prompt[end - size : end])
                if "\ufffd" in whole:
                    continue
                seed = prompt[end - size :]
                if end == n:
                    return seed, size, None
                stripped = self._decode(seed).rstrip("\ufffd")
                if len(stripped) > len(whole):
                    return seed, len(seed), stripped
                return seed, size, None
        seed = prompt[-_SEED_TOKENS:]
        return seed, len(seed), self._decode(seed).rstrip("\ufffd")

    def add_token(self, token_id: int) -> str | None:
        """Append a token. Returns the stop string if one now appears in the text."""
        self._ids.append(token_id)
        self._num_tokens += 1
        return self._read(final=False)

    def finish(self) -> str | None:
        """The request ended: text held back for an incomplete UTF-8 sequence at its end is added as the tokenizer
        decodes it (U+FFFD for the incomplete bytes), so the final text is the decode of every output token and
        no whole character before them is lost. Returns the stop string the added text completes, if any.
        Held-back bytes of the prompt alone (no output token after them) are not output text and stay out."""
        if len(self._ids) <= self._seed_len:
            return None
        return self._read(final=True)

    def _read(self, final: bool) -> str | None:
        """Move the text read so far up to the last token (unless the text ends inside a character and this is not
        ``final``), then look for a stop string ending in the new text."""
        if self._read_offset == len(self._ids):
            return None
        prefix = self._seed_text
        if prefix is None:
            prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        if full.endswith("\ufffd") and not final:
            return None
        if full.startswith(prefix):
            delta = full[len(prefix) :]
        else:  # the new bytes changed the text read (byte fallback: a run of bytes with an invalid one is all U+FFFD)
            delta = self._decode(self._ids[self._read_offset :])
        if not delta:
            return None
        self._seed_text = None
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        before = len(self.text)
        self.text += delta
        if not self.stop or self._num_tokens <= self.min_tokens:
            return None
        best: tuple[int, int, str] | None = None  # (end, start, stop string) of the match that ends first
        for s in self.stop:  # a match ends in the new text (vLLM's rule: one within min_tokens never counts)
            idx = self.text.find(s, max(0, before - len(s) + 1))
            if idx != -1 and (best is None or idx + len(s) < best[0]):
                best = (idx + len(s), idx, s)
        if best is None:
            return None
        _, idx, s = best
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
