"""Start-up decisions for ``--runner`` / ``--convert`` / ``--pooler-config`` (vLLM's names).

``--runner auto`` runs a pooling-only architecture (BERT-family encoders, ``*ForSequenceClassification``,
base ``*Model`` decoders) or any model given ``--convert embed|classify|reward`` as a pooling model, and
everything else as a generative one. A pooling engine computes each prompt whole in one step and keeps
nothing afterwards, so it runs with chunked prefill, prefix caching and async scheduling off and a token
budget of at least ``max_model_len`` (so every admissible prompt fits one step). A classifier converted from
LM-head token rows (``classifier_from_token``, :class:`pagoda.pooling.config.FromTokenClassifier`) is checked and its
tokens looked up in the vocabulary here, and its labels and token ids written into the hf_config returned. A
Llama-family ``*ForCausalLM`` given ``--convert classify`` with those keys runs as its ``*ForSequenceClassification``
(vLLM's ``as_seq_cls_model``): the returned hf_config names that architecture.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pagoda.pooling.config import (
    FROM_TOKEN_ARCHS,
    FROM_TOKEN_KEYS,
    PoolerConfig,
    ResolvedPooler,
    check_no_resolved_ids,
    from_token_classifier,
    resolve_pooler,
    resolve_token_ids,
    sentence_transformers_max_len,
    with_from_token_labels,
)

CAUSAL_TO_CLASSIFIER = {a.replace("ForSequenceClassification", "ForCausalLM"): a for a in FROM_TOKEN_ARCHS}
"""``--convert classify`` of these generative architectures with ``classifier_from_token`` runs the classifier."""

RUNNERS = ("auto", "generate", "pooling")
CONVERTS = ("auto", "none", "embed", "classify", "reward")


@dataclass(frozen=True)
class RunnerChoice:
    runner: str  # generate | pooling
    pooler: ResolvedPooler | None
    max_len_cap: int | None  # sentence-transformers' max_seq_length / the encoder's position table
    hf_config: dict[str, Any]  # the engine's: the given one, with a from-token classifier's labels and token ids
    arch: str  # the architecture the engine runs: the given one, or a converted *ForCausalLM's classifier class


def resolve_runner(runner: str, convert: str, pooler_config: dict[str, Any] | PoolerConfig | None, arch: str,
                   hf_config: dict[str, Any], model_path: Path, tokenizer_path: Path | None = None) -> RunnerChoice:
    """The runner and pooler. ``tokenizer_path`` (default: the model's folder) looks up ``classifier_from_token``'s
    ids; the returned ``hf_config`` is the one the engine (and the model) must use."""
    from pagoda.models.registry import default_pooling, is_pooling_architecture

    if runner not in RUNNERS:
        raise ValueError(f"--runner must be one of {RUNNERS}, got {runner!r}.")
    if convert not in CONVERTS:
        raise ValueError(f"--convert must be one of {CONVERTS}, got {convert!r}.")
    check_no_resolved_ids(hf_config)
    pooling_arch = is_pooling_architecture(arch)
    wants_pooling = convert in ("embed", "classify", "reward")
    if runner == "auto":
        runner = "pooling" if pooling_arch or wants_pooling else "generate"
    if runner == "generate":
        if pooling_arch or wants_pooling:
            raise ValueError(f"{arch} (--convert {convert}) is a pooling model: it cannot generate text; "
                             f"use --runner pooling (or auto).")
        if pooler_config:
            raise ValueError("--pooler-config applies to pooling models only (--runner pooling).")
        from_token_classifier(hf_config, arch, None)  # its keys are a classifier's: refused here, by name
        return RunnerChoice("generate", None, None, hf_config, arch)
    if convert == "classify" and arch in CAUSAL_TO_CLASSIFIER and \
            any(hf_config.get(k) not in (None, False) for k in FROM_TOKEN_KEYS):
        arch = CAUSAL_TO_CLASSIFIER[arch]
        hf_config = {**hf_config, "architectures": [arch]}
    kind, default_type = default_pooling(arch, convert)
    if isinstance(pooler_config, PoolerConfig):  # LLM(pooler_config=PoolerConfig(...)), as vLLM's offline docs write
        pooler_config = {k: v for k, v in dataclasses.asdict(pooler_config).items() if v is not None}
    elif pooler_config is not None and not isinstance(pooler_config, dict):
        raise ValueError(f"--pooler-config must be a JSON object (or a PoolerConfig), got "
                         f"{type(pooler_config).__name__}.")
    user = PoolerConfig.from_dict(pooler_config) if pooler_config else None
    from_token = from_token_classifier(hf_config, arch, kind)
    if from_token is not None:
        from_token = resolve_token_ids(from_token, tokenizer_path or model_path)
        hf_config = with_from_token_labels(hf_config, from_token)
    pooler = resolve_pooler(model_path, hf_config, kind, default_type, user, from_token)
    cap = sentence_transformers_max_len(model_path)
    if arch.startswith(("Roberta", "XLMRoberta")):  # positions start at padding_idx + 1
        table = int(hf_config.get("max_position_embeddings", 514)) - int(hf_config.get("pad_token_id", 1)) - 1
        cap = min(cap, table) if cap else table
    return RunnerChoice("pooling", pooler, cap, hf_config, arch)
