"""Structured outputs: grammar-constrained decoding (JSON schema, any JSON, regex, choice, EBNF/Lark).

The one call other features need: ``SamplingParams(structured_outputs=StructuredOutputsParams(json=schema))``
constrains a request's output (tool calling with ``tool_choice="required"`` or a named function
does exactly this). Modules:

* :mod:`.params` -- ``StructuredOutputsParams`` (per request), ``StructuredOutputsConfig`` (engine),
  ``GrammarKey`` (the compile-cache key);
* :mod:`.validate` -- the front end's admission check (builds the grammar, bounded in time);
* :mod:`.backend` (the interface), :mod:`.xgrammar_backend` -- the grammar engine;
* :mod:`.manager` -- the engine core's compile pool, per-sequence matchers and step bitmasks;
* :mod:`.bitmask` -- applying the packed bitmask to logits (the sampler calls it).
"""

from pagoda.structured_output.params import StructuredOutputsConfig, StructuredOutputsParams

__all__ = ["StructuredOutputsConfig", "StructuredOutputsParams"]
