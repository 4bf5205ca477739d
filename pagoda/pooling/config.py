"""How a pooling model turns hidden states into outputs (vLLM's ``PoolerConfig``), resolved once at start-up.

Sources, later ones winning: the model family's defaults (BERT-style encoders: CLS; decoders: LAST),
sentence-transformers' files in the model folder (``modules.json`` naming a ``Pooling`` module whose
``config.json`` gives the pooling mode, ``Dense`` projections applied after it, and a ``Normalize`` module turning
normalisation on; any other module is a start-up error), then
``--pooler-config``. ``dimensions`` the model accepts come from ``config.json``'s
``matryoshka_dimensions`` / ``is_matryoshka`` (as vLLM reads them); otherwise only its full width. A classifier's
activations (what ``use_activation`` applies) follow vLLM: classify from ``problem_type``, a cross-encoder's score
from its sentence-transformers ``activation_fn``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

PoolingType = Literal["CLS", "MEAN", "LAST", "ALL"]
POOLING_TYPES: tuple[str, ...] = get_args(PoolingType)
PoolingKind = Literal["embed", "classify", "reward"]

_ST_MODES = {"cls": "CLS", "mean": "MEAN", "lasttoken": "LAST"}
"""sentence-transformers' pooling modes pagoda pools, by its names (its 1_Pooling/config.json)."""
_ST_LEGACY_MODES = {  # sentence-transformers < 6: one boolean per mode
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
ST_ACTIVATIONS = ("torch.nn.modules.activation.Tanh", "torch.nn.modules.linear.Identity",
                  "torch.nn.modules.activation.ReLU", "torch.nn.modules.activation.GELU",
                  "torch.nn.modules.activation.Sigmoid", "torch.nn.modules.activation.SiLU")
"""The ``activation_function`` values of a sentence-transformers ``Dense`` module the pooler applies."""


@dataclass(frozen=True)
class DenseLayer:
    """A sentence-transformers ``Dense`` module (``modules.json``): ``activation(W x + b)`` on each embedding, after
    pooling and before ``dimensions`` and normalisation (as vLLM's projector). ``weights``: its safetensors or
    PyTorch file (tensors ``linear.weight`` [out, in], ``linear.bias``)."""

    weights: str
    in_features: int
    out_features: int
    bias: bool
    activation: str  # one of ST_ACTIVATIONS


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
        for k in ("normalize", "use_activation"):  # "false" as a string would read as true
            if d.get(k) is not None and not isinstance(d[k], bool):
                raise ValueError(f"--pooler-config: {k} must be true or false, got {d[k]!r}.")
        dims = d.get("dimensions")
        if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or dims < 1):
            raise ValueError(f"--pooler-config: dimensions must be a positive integer, got {dims!r}.")
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
    hidden_size: int = 0  # an embedding's full width: the model's hidden size, or the last Dense layer's output
    supported_tasks: tuple[str, ...] = field(default=())
    dense: tuple[DenseLayer, ...] = ()  # sentence-transformers Dense layers, applied to embeddings in order
    lowercase: bool = False  # sentence_bert_config.json's do_lower_case: text inputs are lowercased before tokenizing
    classify_activation: str = "classify"  # a key of ACTIVATIONS: what use_activation applies to classify logits
    score_activation: str = "classify"  # ... and to a cross-encoder's score logits
    use_sep_token: bool = True  # a score pair: tokenized as a text pair (True) or as text_1 + text_2 (use_sep_token())
    from_token: FromTokenClassifier | None = None  # a classifier built from LM-head token rows, if it is one

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


def _st_pooling(cfg_file: Path) -> str:
    """The pooling type of a sentence-transformers ``Pooling`` module: its ``pooling_mode`` (sentence-transformers
    6: a name or a list) or legacy ``pooling_mode_*`` flags; none set is its default, mean. A mode pagoda does not
    pool (max, weightedmean, several concatenated, prompt tokens left out) is a start-up error naming it."""
    cfg = json.loads(cfg_file.read_text(encoding="utf-8")) if cfg_file.exists() else {}
    mode = cfg.get("pooling_mode")
    if mode is not None:
        modes = [mode] if isinstance(mode, str) else list(mode)
    else:
        modes = [k.removeprefix("pooling_mode_") if k not in _ST_LEGACY_MODES else _ST_LEGACY_MODES[k]
                 for k, v in cfg.items() if k.startswith("pooling_mode_") and v] or ["mean"]
    if len(modes) != 1 or modes[0] not in _ST_MODES:
        raise ValueError(f"{cfg_file}: pooling mode {modes} is not supported (pagoda pools one of "
                         f"{sorted(_ST_MODES)}).")
    if cfg.get("include_prompt") is False:
        raise ValueError(f"{cfg_file}: include_prompt false (prompt tokens left out of the pooling) is not "
                         f"supported; pagoda pools every token of the input.")
    return _ST_MODES[modes[0]]


def _st_dense(folder: Path) -> DenseLayer:
    """A ``Dense`` module's layer from its folder (config.json and weights); what pagoda cannot apply is a start-up
    error naming the file."""
    cfg_file = folder / "config.json"
    cfg = json.loads(cfg_file.read_text(encoding="utf-8")) if cfg_file.exists() else {}
    act = str(cfg.get("activation_function", "torch.nn.modules.activation.Tanh"))  # sentence-transformers' default
    if act not in ST_ACTIVATIONS:
        raise ValueError(f"{cfg_file}: activation_function {act!r} is not supported (pagoda applies "
                         f"{', '.join(a.rsplit('.', 1)[1] for a in ST_ACTIVATIONS)}).")
    weights = next((folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).exists()), None)
    if weights is None or "in_features" not in cfg or "out_features" not in cfg:
        raise ValueError(f"{folder}: a sentence-transformers Dense module needs config.json's in_features / "
                         f"out_features and model.safetensors (or pytorch_model.bin).")
    return DenseLayer(str(weights), int(cfg["in_features"]), int(cfg["out_features"]), bool(cfg.get("bias", True)),
                      act)


def _sentence_transformers(model_path: Path) -> tuple[str | None, bool, tuple[DenseLayer, ...]]:
    """(pooling type, normalize module present, Dense layers in order) from sentence-transformers' modules.json, if
    any. Modules pagoda runs: the Transformer, Pooling, Dense and a last Normalize; any other module (or a Normalize
    before a Dense) is a start-up error naming it, since leaving it out would change every embedding."""
    modules_file = model_path / "modules.json"
    if not modules_file.exists():
        return None, False, ()
    modules = json.loads(modules_file.read_text(encoding="utf-8"))
    pooling, normalize, dense = None, False, []
    for m in modules:
        kind = str(m.get("type", "")).rsplit(".", 1)[-1]
        folder = model_path / str(m.get("path", ""))
        if normalize:
            raise ValueError(f"{modules_file}: module {m.get('type')!r} after Normalize is not supported "
                             f"(pagoda normalises last).")
        if kind == "Normalize":
            normalize = True
        elif kind == "Pooling":
            pooling = _st_pooling(folder / "config.json")
        elif kind == "Dense" and pooling is not None:
            dense.append(_st_dense(folder))
        elif kind != "Transformer" or pooling is not None:
            raise ValueError(f"{modules_file}: sentence-transformers module {m.get('type')!r} is not supported "
                             f"(pagoda runs Transformer, Pooling, Dense, Normalize).")
    return pooling, normalize, tuple(dense)


ACTIVATIONS = ("classify", "sigmoid", "identity", "tanh", "relu", "gelu", "silu")
"""What ``use_activation`` applies to a classifier's logits (vLLM's pooler activations): ``classify`` is sigmoid for
one label and softmax over several (vLLM's ``PoolerClassify``); ``sigmoid`` is per label (multi-label)."""

_TORCH_ACTIVATIONS = {  # a cross-encoder's configured activation (sentence-transformers' name) -> ours
    "torch.nn.modules.activation.Sigmoid": "classify", "torch.nn.modules.activation.Softmax": "classify",
    "torch.nn.modules.linear.Identity": "identity", "torch.nn.modules.activation.Tanh": "tanh",
    "torch.nn.modules.activation.ReLU": "relu", "torch.nn.modules.activation.GELU": "gelu",
    "torch.nn.modules.activation.SiLU": "silu",
}
_PROBLEM_TYPES = {"regression": "identity", "single_label_classification": "classify",
                  "multi_label_classification": "sigmoid"}


def classify_activation(hf_config: dict[str, Any]) -> str:
    """The classify task's activation, from config.json's ``problem_type`` as transformers' loss reads it (vLLM's
    rule): regression -> identity, multi-label -> per-label sigmoid, else (single-label, unset) ``classify``."""
    pt = hf_config.get("problem_type")
    if pt is not None and pt not in _PROBLEM_TYPES:
        raise ValueError(f"config.json: problem_type {pt!r} is not supported (one of {sorted(_PROBLEM_TYPES)}).")
    return _PROBLEM_TYPES[pt] if pt is not None else "classify"


def score_activation(model_path: Path, hf_config: dict[str, Any]) -> str:
    """A cross-encoder's score activation, where sentence-transformers' CrossEncoder finds it:
    config_sentence_transformers.json's ``activation_fn`` (sentence-transformers 6, a folder with modules.json), else
    config.json's ``sentence_transformers.activation_fn`` (v4+), else ``sbert_ce_default_activation_function``
    (older; vLLM reads these two); none: ``classify`` (sigmoid for one label). One pagoda cannot apply is a start-up
    error naming it."""
    f = model_path / "config_sentence_transformers.json"
    st_folder = f.exists() and (model_path / "modules.json").exists()  # sentence-transformers reads it only then
    name = json.loads(f.read_text(encoding="utf-8")).get("activation_fn") if st_folder else None
    where = f.name
    if name is None:
        where = "config.json"
        name = ((hf_config.get("sentence_transformers") or {}).get("activation_fn")
                or hf_config.get("sbert_ce_default_activation_function"))
    if name is None:
        return "classify"
    if name not in _TORCH_ACTIVATIONS:
        raise ValueError(f"{where}: the cross-encoder activation_fn {name!r} is not supported (pagoda applies "
                         f"{', '.join(sorted(a.rsplit('.', 1)[1] for a in _TORCH_ACTIVATIONS))}).")
    return _TORCH_ACTIVATIONS[name]


FROM_TOKEN_KEYS = ("classifier_from_token", "method", "is_original_qwen3_reranker")
"""config.json / ``--hf-overrides`` keys of vLLM's "LLM as classifier" conversion (:class:`FromTokenClassifier`)."""
FROM_TOKEN_METHODS = ("from_2_way_softmax", "no_post_processing")
FROM_TOKEN_ARCHS = ("LlamaForSequenceClassification", "MistralForSequenceClassification",
                    "Qwen2ForSequenceClassification", "Qwen3ForSequenceClassification")
"""The architectures whose pooling class (``models/llama_pooling.py``) builds the classifier from LM-head rows."""
FROM_TOKEN_IDS_KEY = "classifier_from_token_ids"
"""Where :func:`with_from_token_labels` writes the tokens' resolved ids into the engine's hf_config (pagoda's own
key, read by the model when it loads the LM-head rows; set only by start-up, never by the user)."""


@dataclass(frozen=True)
class FromTokenClassifier:
    """vLLM's conversion of a causal LM into a classifier from its LM-head rows (``as_seq_cls_model``):
    ``from_2_way_softmax`` (two tokens ``[false, true]``, Qwen3-Reranker's ``["no", "yes"]``) is one label whose
    row is ``lm_head[true] - lm_head[false]``, so its sigmoid is ``softmax([logit_false, logit_true])[1]``;
    ``no_post_processing`` is one label per token, its row ``lm_head[token]`` (bge-reranker-v2-gemma's ``["Yes"]``).
    ``token_ids``: each token's id in the vocabulary (resolved at start-up; empty until then)."""

    tokens: tuple[str, ...]
    method: str  # one of FROM_TOKEN_METHODS
    token_ids: tuple[int, ...] = ()

    @property
    def num_labels(self) -> int:
        return 1 if self.method == "from_2_way_softmax" else len(self.tokens)


def from_token_classifier(hf_config: dict[str, Any], arch: str, kind: str | None) -> FromTokenClassifier | None:
    """The model's :class:`FromTokenClassifier`, or None when none of :data:`FROM_TOKEN_KEYS` is set. vLLM's rules:
    ``is_original_qwen3_reranker`` (Qwen3 only) means ``method: from_2_way_softmax``; ``classifier_from_token`` needs
    a ``method`` and vice versa; ``from_2_way_softmax`` takes exactly two tokens. ``kind``: the pooling kind the
    model runs as (None: a generative model). Anything else is a start-up error naming the key (or the
    architecture, for one that is not a Llama-family ``*ForSequenceClassification`` run as a classifier)."""
    keys = [k for k in FROM_TOKEN_KEYS if hf_config.get(k) not in (None, False)]
    if not keys:
        return None
    where = f"config.json / --hf-overrides {keys}"
    if kind != "classify" or arch not in FROM_TOKEN_ARCHS:
        ran = "a generative model" if kind is None else f"--convert {kind}" if kind != "classify" else arch
        raise ValueError(f"{where}: a classifier converted from LM-head token rows (vLLM's Qwen3-Reranker / "
                         f"bge-reranker-v2-gemma recipe) runs on {', '.join(FROM_TOKEN_ARCHS)} as a classifier "
                         f"(--runner pooling); not on {arch} ({ran}). Set \"architectures\" to the checkpoint's "
                         f"*ForSequenceClassification in --hf-overrides, or use a converted checkpoint with a score "
                         f"weight.")
    raw = hf_config.get("classifier_from_token")
    if not isinstance(raw, (list, tuple)) or not raw or not all(isinstance(t, str) and t for t in raw):
        raise ValueError(f"{where}: classifier_from_token must be a non-empty list of token strings (e.g. "
                         f"[\"no\", \"yes\"]), got {raw!r}.")
    tokens = tuple(raw)
    method = hf_config.get("method")
    if hf_config.get("is_original_qwen3_reranker") not in (None, False):
        if arch != "Qwen3ForSequenceClassification":
            raise ValueError(f"{where}: is_original_qwen3_reranker is for Qwen3ForSequenceClassification (as in vLLM); "
                             f"for {arch} set \"method\": \"from_2_way_softmax\" instead.")
        if method not in (None, "from_2_way_softmax"):
            raise ValueError(f"{where}: is_original_qwen3_reranker means method from_2_way_softmax; got method "
                             f"{method!r}.")
        method = "from_2_way_softmax"
    if method not in FROM_TOKEN_METHODS:
        raise ValueError(f"{where}: method must be one of {FROM_TOKEN_METHODS} (how the token rows become the "
                         f"classifier), got {method!r}.")
    if method == "from_2_way_softmax" and len(tokens) != 2:
        raise ValueError(f"{where}: method from_2_way_softmax takes exactly two tokens [false, true] in "
                         f"classifier_from_token, got {list(tokens)}.")
    return FromTokenClassifier(tokens, str(method))


def check_no_resolved_ids(hf_config: dict[str, Any]) -> None:
    """The checkpoint's config (and ``--hf-overrides``) must not set :data:`FROM_TOKEN_IDS_KEY`: start-up alone
    writes it."""
    if FROM_TOKEN_IDS_KEY in hf_config:
        raise ValueError(f"config.json / --hf-overrides: {FROM_TOKEN_IDS_KEY!r} is pagoda's own (the resolved ids of "
                         f"classifier_from_token); set classifier_from_token instead.")


def resolve_token_ids(spec: FromTokenClassifier, tokenizer_path: Path) -> FromTokenClassifier:
    """``spec`` with each token's id in the tokenizer's vocabulary (vLLM's ``convert_tokens_to_ids``: a vocabulary
    entry, e.g. ``"yes"``, not text to tokenize). A token that is not one entry of the vocabulary is a start-up
    error naming it."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(tokenizer_path), trust_remote_code=False)
    except Exception as e:
        raise ValueError(f"classifier_from_token: could not load the tokenizer from {tokenizer_path} to look up "
                         f"{list(spec.tokens)}: {e}") from e
    vocab = tok.get_vocab()
    missing = [t for t in spec.tokens if t not in vocab]
    if missing:
        hint = [tok.convert_ids_to_tokens(tok.encode(t, add_special_tokens=False)) for t in missing]
        raise ValueError(f"classifier_from_token: {missing} is not a single token in the vocabulary of "
                         f"{tokenizer_path} (it tokenizes as {hint}); give vocabulary entries (as vLLM's "
                         f"convert_tokens_to_ids reads them).")
    return dataclasses.replace(spec, token_ids=tuple(int(vocab[t]) for t in spec.tokens))


def with_from_token_labels(hf_config: dict[str, Any], spec: FromTokenClassifier) -> dict[str, Any]:
    """``hf_config`` as the converted classifier has it (vLLM sets ``num_labels`` alike): ``num_labels`` and
    transformers' default ``id2label`` for them, and the tokens' ids under :data:`FROM_TOKEN_IDS_KEY`."""
    n = spec.num_labels
    return {**hf_config, "num_labels": n, "id2label": {str(i): f"LABEL_{i}" for i in range(n)},
            FROM_TOKEN_IDS_KEY: list(spec.token_ids)}


def use_sep_token(hf_config: dict[str, Any], from_token: bool) -> bool:
    """Whether a score pair is tokenized as a text pair (with the tokenizer's separator) rather than as the two
    texts concatenated: config.json's ``use_sep_token`` (or its deprecated ``use_pad_token``), else vLLM's default,
    true for a cross-encoder and false for a classifier converted from LM-head token rows."""
    for k in ("use_pad_token", "use_sep_token"):
        v = hf_config.get(k)
        if v is not None:
            if not isinstance(v, bool):
                raise ValueError(f"config.json / --hf-overrides: {k} must be true or false, got {v!r}.")
            return v
    return not from_token


def _sentence_bert_config(model_path: Path) -> dict[str, Any]:
    f = model_path / "sentence_bert_config.json"
    return json.loads(f.read_text(encoding="utf-8")) if f.exists() else {}


def sentence_transformers_max_len(model_path: Path) -> int | None:
    """``max_seq_length`` of sentence_bert_config.json (sentence-transformers truncates there)."""
    v = _sentence_bert_config(model_path).get("max_seq_length")
    return int(v) if v else None


def num_labels(hf_config: dict[str, Any]) -> int:
    """Classifier outputs: ``id2label``'s size, else ``num_labels``, else 2 (transformers' default, which
    ``save_pretrained`` leaves out of config.json)."""
    return len(hf_config.get("id2label") or {}) or int(hf_config.get("num_labels") or 2)


def label_names(hf_config: dict[str, Any]) -> list[str]:
    """The classifier's label per output index: ``id2label``'s, else transformers' default ``LABEL_<i>`` (which
    ``save_pretrained`` leaves out of config.json for two labels, as it does ``num_labels``)."""
    id2label = {str(k): str(v) for k, v in (hf_config.get("id2label") or {}).items()}
    return [id2label.get(str(i), f"LABEL_{i}") for i in range(num_labels(hf_config))]


_TASKS = {  # an embedding model's score API runs "embed" (cosine of the embeddings): "score" is a cross-encoder's
    "embed": ("embed", "token_embed"),
    "classify": ("classify", "score", "token_classify"),
    "reward": ("token_classify",),
}


def supported_tasks(kind: str, labels: int) -> tuple[str, ...]:
    """The pooling tasks a model of ``kind`` serves; a classifier scores pairs (cross-encoder) only with one label,
    as vLLM enables its score API only for ``num_labels == 1``."""
    tasks = _TASKS[kind]
    return tuple(t for t in tasks if t != "score") if kind == "classify" and labels != 1 else tasks


def resolve_pooler(model_path: Path, hf_config: dict[str, Any], kind: str, default_type: str,
                   user: PoolerConfig | None, from_token: FromTokenClassifier | None = None) -> ResolvedPooler:
    """The pooler of a model of ``kind``; ``hf_config`` is the engine's (a ``from_token`` classifier's already has
    its labels, :func:`with_from_token_labels`)."""
    st_type, st_norm, dense = _sentence_transformers(model_path)
    user = user or PoolerConfig()
    ptype = user.pooling_type or st_type or default_type
    if kind == "reward" and user.pooling_type is None:
        ptype = "ALL"
    hidden = int(hf_config.get("hidden_size") or 0)
    if kind != "embed":
        dense = ()  # a classifier's head is the model's own; sentence-transformers' Dense is for embeddings
    for layer in dense:
        if layer.in_features != hidden:
            raise ValueError(f"{layer.weights}: the Dense layer takes {layer.in_features} features, the embedding "
                             f"before it has {hidden}.")
        hidden = layer.out_features
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
        hidden_size=hidden, supported_tasks=supported_tasks(kind, labels), dense=dense,
        # sentence-transformers (SentenceTransformer and CrossEncoder) and vLLM lowercase every text input with it
        lowercase=bool(_sentence_bert_config(model_path).get("do_lower_case", False)),
        classify_activation=classify_activation(hf_config) if kind != "embed" else "classify",
        score_activation=score_activation(model_path, hf_config) if kind == "classify" and labels == 1 else "classify",
        use_sep_token=use_sep_token(hf_config, from_token is not None), from_token=from_token,
    )
