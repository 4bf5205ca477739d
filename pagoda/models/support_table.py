"""What runs how: the table ``pagoda models`` prints and docs/models.md embeds, generated from the registry
(:mod:`pagoda.models.registry`) and the model classes' ``supports_<feature>`` attributes."""

from __future__ import annotations

from pagoda.models.registry import (
    MODEL_FEATURES,
    ModelRegistry,
    model_class,
    model_supports,
    native_architectures,
    pooling_architectures,
)
from pagoda.models.transformers_support import TESTED_FALLBACK_ARCHS

FALLBACK_ROW = "any other `*ForCausalLM` / `*LMHeadModel` transformers can build"


def _row(name: str, impl: str, cls: type) -> str:
    marks = " | ".join("yes" if model_supports(cls, f) else "no" for f in MODEL_FEATURES)
    return f"| {name} | {impl} | {marks} |"


def models_table() -> str:
    """A markdown table: one row per native or plugin architecture, then the transformers fallback."""
    from pagoda.models.transformers_backend import TransformersForCausalLM

    head = "| Architecture | Implementation | " + " | ".join(MODEL_FEATURES.values()) + " |"
    rows = [head, "|" + "---|" * (2 + len(MODEL_FEATURES))]
    native = native_architectures()
    for arch in ModelRegistry.get_supported_archs():
        cls = model_class(arch)
        impl = f"pagoda `{native[arch]}`" if arch not in ModelRegistry._plugins else f"plugin `{cls.__module__}`"
        rows.append(_row(f"`{arch}`", impl, cls))
    rows.append(_row(FALLBACK_ROW, "transformers fallback", TransformersForCausalLM))
    tested = ", ".join(f"`{a}`" for a in TESTED_FALLBACK_ARCHS)
    pooling = ["| Pooling architecture (`--runner pooling`) | Implementation | Default task |", "|---|---|---|"]
    pooling += [f"| `{arch}` | pagoda `{cls}` | {kind} |" for arch, cls, kind in pooling_architectures()]
    return ("\n".join(rows) + f"\n\nTested through the transformers fallback (parity with HF `generate`): {tested}.\n"
            + "\nPooling models (embeddings, classification, scoring; a generative architecture too with `--convert "
            "embed`):\n\n" + "\n".join(pooling) + "\n")
