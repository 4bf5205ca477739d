"""How a pooling model turns hidden states into outputs (vLLM's ``PoolerConfig``), resolved once at start-up.

Sources, later ones winning: the model family's defaults (BERT-style encoders: CLS; decoders: LAST),
sentence-transformers' files in the model folder (``modules.json`` naming a ``Pooling`` module whose
``config.json`` gives the pooling mode, and a ``Normalize`` module turning normalisation on), then
``--pooler-config``. ``dimensions`` the model accepts come from ``config.json``'s
``matryoshka_dimensions`` / ``is_matryoshka`` (as vLLM reads them); otherwise only its full width.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

PoolingType = Literal["CLS", "MEAN", "LAST", "ALL"]
POOLING_TYPES: tuple[str, ...] = get_args(PoolingType)
PoolingKind = Literal["embed", "classify", "reward"]

_ST_MODES = {  # sentence-transformers' 1_Pooling/config.json flag -> pooling type
    "pooling_mode_cls_token": "CLS",
    "pooling_mode_mean_tokens": "MEAN",
    "pooling_mode_lasttoken": "LAST",
}


@dataclass(frozen=True)
class PoolerConfig:
    """``--pooler-config`` fields (vLLM's names); None: the model's default."""

    pooling_type: str | None = None
    normalize: bool | None = None
    dimensions: int | None = None
    use_activation: bool | None = None

    @staticmethod
    def from_dict(d: dict[str, Any]) -> PoolerConfig:
        known = {f.name for f in fields(PoolerConfig)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"--pooler-config: unsupported field(s) {unknown}; pagoda knows {sorted(known)}.")
        pt = d.get("pooling_type")
        if pt is not None and str(pt).upper() not in POOLING_TYPES:
            raise ValueError(f"--pooler-config: pooling_type must be one of {POOLING_TYPES}, got {pt!r}.")
        return PoolerConfig(str(pt).upper() if pt is not None else None, d.get("normalize"), d.get("dimensions"),
                            d.get("use_activation"))


@dataclass(frozen=True)
class ResolvedPooler:
    """What the engine's pooler does: ``kind`` (what the model is for), the sequence pooling type, and the
    defaults a request may override (``normalize`` for embeddings, ``use_activation`` for classifiers)."""

    kind: str
    pooling_type: str
    normalize: bool = True
    use_activation: bool = True
    default_dimensions: int | None = None
    matryoshka: tuple[int, ...] | bool = False  # True: any width up to the hidden size
    num_labels: int = 0
    hidden_size: int = 0
    supported_tasks: tuple[str, ...] = field(default=())

    def check_dimensions(self, dims: int | None) -> None:
        from pagoda.errors import ValidationError

        if dims is None or dims == self.hidden_size:
            return
        if self.kind != "embed":
            raise ValidationError("dimensions is only for embedding models.", "dimensions")
        ok = (self.matryoshka is True and 1 <= dims <= self.hidden_size) or (
            isinstance(self.matryoshka, tuple) and dims in self.matryoshka)
        if not ok:
            what = ("this model does not support Matryoshka dimensions" if not self.matryoshka
                    else f"supported: {self.matryoshka if self.matryoshka is not True else f'1..{self.hidden_size}'}")
            raise ValidationError(f"dimensions={dims} is not supported ({what}; full width {self.hidden_size}).",
                                  "dimensions")


def _sentence_transformers(model_path: Path) -> tuple[str | None, bool]:
    """(pooling type, normalize module present) from sentence-transformers' modules.json, if any."""
    modules_file = model_path / "modules.json"
    if not modules_file.exists():
        return None, False
    modules = json.loads(modules_file.read_text(encoding="utf-8"))
    pooling, normalize = None, False
    for m in modules:
        kind = str(m.get("type", ""))
        if kind.endswith("Normalize"):
            normalize = True
        elif kind.endswith("Pooling"):
            cfg_file = model_path / str(m.get("path", "")) / "config.json"
            cfg = json.loads(cfg_file.read_text(encoding="utf-8")) if cfg_file.exists() else {}
            on = [t for k, t in _ST_MODES.items() if cfg.get(k)]
            other = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v and k not in _ST_MODES]
            if other or len(on) > 1:
                raise ValueError(f"{cfg_file}: pooling mode(s) {other or on} are not supported "
                                 f"(pagoda pools one of CLS, MEAN, LAST)")
            pooling = on[0] if on else None
    return pooling, normalize


def sentence_transformers_max_len(model_path: Path) -> int | None:
    """``max_seq_length`` of sentence_bert_config.json (sentence-transformers truncates there)."""
    f = model_path / "sentence_bert_config.json"
    if not f.exists():
        return None
    v = json.loads(f.read_text(encoding="utf-8")).get("max_seq_length")
    return int(v) if v else None


def num_labels(hf_config: dict[str, Any]) -> int:
    """Classifier outputs: ``id2label``'s size, else ``num_labels``, else 2 (transformers' default, which
    ``save_pretrained`` leaves out of config.json)."""
    return len(hf_config.get("id2label") or {}) or int(hf_config.get("num_labels") or 2)


_TASKS = {
    "embed": ("embed", "token_embed", "score"),
    "classify": ("classify", "score", "token_classify"),
    "reward": ("token_classify",),
}


def supported_tasks(kind: str, labels: int) -> tuple[str, ...]:
    """The pooling tasks a model of ``kind`` serves; a classifier scores pairs (cross-encoder) only with one label,
    as vLLM enables its score API only for ``num_labels == 1``."""
    tasks = _TASKS[kind]
    return tuple(t for t in tasks if t != "score") if kind == "classify" and labels != 1 else tasks


def resolve_pooler(model_path: Path, hf_config: dict[str, Any], kind: str, default_type: str,
                   user: PoolerConfig | None) -> ResolvedPooler:
    st_type, st_norm = _sentence_transformers(model_path)
    user = user or PoolerConfig()
    ptype = user.pooling_type or st_type or default_type
    if kind == "reward" and user.pooling_type is None:
        ptype = "ALL"
    hidden = int(hf_config.get("hidden_size") or 0)
    mdims = hf_config.get("matryoshka_dimensions")
    matryoshka: tuple[int, ...] | bool = (tuple(int(d) for d in mdims) if mdims
                                          else bool(hf_config.get("is_matryoshka", False)))
    if user.dimensions is not None:
        ResolvedPooler("embed", ptype, matryoshka=matryoshka, hidden_size=hidden).check_dimensions(user.dimensions)
    normalize = user.normalize if user.normalize is not None else (st_norm or st_type is None)
    labels = num_labels(hf_config) if kind != "embed" else 0
    return ResolvedPooler(
        kind=kind, pooling_type=ptype, normalize=bool(normalize),
        use_activation=True if user.use_activation is None else bool(user.use_activation),
        default_dimensions=user.dimensions, matryoshka=matryoshka, num_labels=labels,
        hidden_size=hidden, supported_tasks=supported_tasks(kind, labels),
    )
