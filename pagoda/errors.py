"""The errors pagoda raises by kind, so callers (the server above all) act on the type, never on text.

* :class:`ValidationError` -- a request the engine refuses; the user can fix it. It names the
  request field (``parameter``, vLLM's ``VLLMValidationError(parameter=...)``) and may carry an
  OpenAI error ``code`` (``"context_length_exceeded"``). The server answers it with a 400 whose
  ``error.param`` is ``parameter``. It is a ``ValueError``, so ``except ValueError`` still works.
* :class:`EngineInvariantError` -- a component was handed something admission guarantees it never
  sees (a bug, not the user's fault); the server answers 500.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PARAM = "{parameter}"
"""Placeholder in a :class:`ValidationError` message for the field's name, filled in by ``str()``.

An endpoint that calls a field by another name (chat's ``top_logprobs`` is the engine's
``logprobs``) renames the error with :meth:`ValidationError.renamed`, and the message follows.
"""


class ValidationError(ValueError):
    """A request the engine refuses, naming the request field (``parameter``) at fault."""

    def __init__(self, message: str, parameter: str | None = None, *, code: str | None = None,
                 value: Any = None) -> None:
        super().__init__(message)
        self.template = message
        self.parameter = parameter
        self.code = code
        self.value = value

    def __str__(self) -> str:
        return self.template.replace(PARAM, self.parameter or "")

    @property
    def message(self) -> str:
        return str(self)

    def renamed(self, names: Mapping[str, str]) -> ValidationError:
        """The same error with ``parameter`` renamed through ``names`` (the message follows)."""
        if self.parameter is None or self.parameter not in names:
            return self
        return ValidationError(self.template, names[self.parameter], code=self.code, value=self.value)


class EngineInvariantError(RuntimeError):
    """A component received what admission guarantees it never sees: a bug, reported as a 500."""


class EngineFatalError(RuntimeError):
    """The engine cannot run another step (e.g. a tensor-parallel rank died). Unlike an ordinary step failure,
    which fails only that step's requests, it propagates: the engine core fails and reports why."""
