"""The grammar-engine interface: one compiled grammar per :class:`GrammarKey`, one matcher per sequence.

A backend turns a key into a compiled grammar (slow: run it off the step, see
:mod:`pagoda.structured_output.manager`) and a compiled grammar into matchers (cheap). Token
bitmasks are packed int32 rows, ``ceil(vocab / 32)`` words, bit ``t % 32`` of word ``t // 32``
set when token ``t`` is allowed (the layout xgrammar and llguidance share).

A matcher's state is the output accepted so far. ``fill_bitmask`` writes the allowed next
tokens, every word of its row (the step's buffer is reused without clearing: see
:mod:`pagoda.structured_output.step_bitmask`); ``accept_token`` advances (False and no change
when the token is not allowed); ``rollback(k)`` undoes the last ``k`` accepted tokens
(speculative decoding verifies drafts with it); ``is_terminated`` is true once a stop token
ended the grammar; ``jump_forward_string`` is the text every continuation starts with (a JSON key and its
punctuation in a strict schema; empty when the grammar leaves a choice), which the n-gram proposer drafts
as tokens (``GrammarBackend.encode``). Stop tokens (the model's EOS) are allowed only where the grammar is
complete.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from pagoda.structured_output.params import GrammarKey


class Matcher(Protocol):
    def accept_token(self, token_id: int) -> bool: ...

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None: ...

    def rollback(self, num_tokens: int) -> None: ...

    def is_terminated(self) -> bool: ...

    def jump_forward_string(self) -> str: ...


class GrammarBackend(Protocol):
    name: str
    # The bitmask's vocabulary: the ids a grammar can allow (the tokenizer's), at most the logits' width; the
    # bitmask has ceil(vocab_size / 32) words and the logits columns past it are never allowed.
    vocab_size: int

    def compile(self, key: GrammarKey) -> Any:
        """A compiled grammar (raises ValueError on an invalid spec). Thread-safe."""
        ...

    def matcher(self, compiled: Any) -> Matcher: ...

    def encode(self, text: str) -> list[int]:
        """``text``'s token ids (no special tokens added)."""
        ...


def allocate_bitmask(rows: int, vocab_size: int) -> torch.Tensor:
    """An all-allowed packed bitmask [rows, ceil(vocab / 32)] (int32, host)."""
    return torch.full((rows, (vocab_size + 31) // 32), -1, dtype=torch.int32)


def choice_ebnf(choices: list[str]) -> str:
    """An EBNF grammar whose sentences are exactly ``choices``."""
    def lit(s: str) -> str:
        out = []
        for ch in s:
            if ch in '"\\':
                out.append("\\" + ch)
            elif ord(ch) < 0x20 or ch == "\x7f":  # \u reads exactly 4 digits; \x reads every hex digit after it
                out.append(f"\\u{ord(ch):04x}")
            else:
                out.append(ch)
        return '"' + "".join(out) + '"'
    return "root ::= " + " | ".join(lit(c) for c in choices)


def is_ebnf(grammar: str) -> bool:
    """GBNF/EBNF (``rule ::= ...``) rather than Lark (``rule: ...``)."""
    return "::=" in grammar
