"""The pooler: a step's hidden states to one output per finishing pooling request (vLLM's
``vllm/model_executor/layers/pooler.py`` idea, written for pagoda's flattened batch).

Input: hidden states ``[T, H]`` of the step's flattened tokens and, per pooling request, its row range
(``query_start_loc``; a pooling request is always computed whole in one step, so its rows are its whole
prompt). Sequence pooling is vectorised over the step: CLS / LAST gather one row per request, MEAN sums
segments with one ``index_add_``. Then, per request's task: ``embed`` (and ``token_embed``, per token) runs the
sentence-transformers Dense layers (as vLLM's projector), cuts to ``dimensions`` and L2-normalises (when asked);
``classify`` / ``score`` run the model's classifier head (``model.classify``) and the pooler's activation for the
task (by default softmax over several labels, sigmoid for one; :mod:`pagoda.pooling.config`); ``token_*`` keep every
row. Outputs are float32 on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from pagoda.layers.sampler import to_device
from pagoda.pooling.config import DenseLayer, ResolvedPooler
from pagoda.pooling.params import PoolingParams


def pool_sequences(hidden: torch.Tensor, starts: list[int], lens: list[int], ptype: str) -> torch.Tensor:
    """[B, H] pooled rows: CLS (first row), LAST (last row) or MEAN (the average) of each segment."""
    dev = hidden.device
    if ptype == "CLS":
        return hidden.index_select(0, to_device(starts, dev))
    if ptype == "LAST":
        return hidden.index_select(0, torch.tensor([s + n - 1 for s, n in zip(starts, lens, strict=True)],
                                                   device=dev))
    if ptype == "MEAN":
        seg = torch.repeat_interleave(torch.arange(len(lens), device=dev), to_device(lens, dev))
        rows = torch.cat([torch.arange(s, s + n, device=dev) for s, n in zip(starts, lens, strict=True)])
        sums = torch.zeros(len(lens), hidden.shape[1], dtype=torch.float32, device=dev)
        sums.index_add_(0, seg, hidden.index_select(0, rows).float())
        return sums / to_device(lens, dev, torch.float32).unsqueeze(1)
    raise ValueError(f"pooling type {ptype!r} pools no sequence (CLS, MEAN, LAST)")


_DENSE_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "torch.nn.modules.activation.Tanh": torch.tanh, "torch.nn.modules.linear.Identity": lambda x: x,
    "torch.nn.modules.activation.ReLU": F.relu, "torch.nn.modules.activation.GELU": F.gelu,
    "torch.nn.modules.activation.Sigmoid": torch.sigmoid, "torch.nn.modules.activation.SiLU": F.silu,
}  # keyed by pagoda.pooling.config.ST_ACTIVATIONS


class Projector:
    """sentence-transformers' ``Dense`` layers (:class:`DenseLayer`) in float32, applied along the last axis; the
    weights are read at start-up (a file that does not hold them as its config.json says is a start-up error) and
    moved to the hidden states' device on first use."""

    def __init__(self, layers: tuple[DenseLayer, ...]) -> None:
        self.layers: list[tuple[torch.Tensor, torch.Tensor | None, Callable[[torch.Tensor], torch.Tensor]]] = []
        for layer in layers:
            sd = _read_weights(layer.weights)
            w, b = sd.get("linear.weight"), sd.get("linear.bias")
            if w is None or tuple(w.shape) != (layer.out_features, layer.in_features) or (layer.bias and b is None):
                raise ValueError(f"{layer.weights}: expected linear.weight of shape [{layer.out_features}, "
                                 f"{layer.in_features}]{' and linear.bias' if layer.bias else ''}.")
            self.layers.append((w.float(), b.float() if layer.bias and b is not None else None,
                                _DENSE_ACTIVATIONS[layer.activation]))

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        if self.layers and self.layers[0][0].device != v.device:
            self.layers = [(w.to(v.device), b.to(v.device) if b is not None else None, act)
                           for w, b, act in self.layers]
        for w, b, act in self.layers:
            v = act(F.linear(v.float(), w, b))
        return v


def _read_weights(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "classify": lambda x: torch.sigmoid(x) if x.shape[-1] == 1 else torch.softmax(x, dim=-1),
    "sigmoid": torch.sigmoid, "identity": lambda x: x, "tanh": torch.tanh, "relu": F.relu, "gelu": F.gelu,
    "silu": F.silu,
}  # keyed by pagoda.pooling.config.ACTIVATIONS


def _activation(logits: torch.Tensor, name: str = "classify") -> torch.Tensor:
    """``logits`` [..., num_labels] through the activation ``name`` (a key of ``ACTIVATIONS``)."""
    return _ACTIVATIONS[name](logits)


class Pooler:
    def __init__(self, cfg: ResolvedPooler, model: Any) -> None:
        self.cfg = cfg
        self.model = model
        self.projector = Projector(cfg.dense)

    def __call__(self, hidden: torch.Tensor, starts: list[int], lens: list[int],
                 params: list[PoolingParams]) -> list[torch.Tensor]:
        out: list[torch.Tensor | None] = [None] * len(params)
        seq = [i for i, p in enumerate(params) if not p.per_token]
        if seq:
            pooled = self._pool(hidden, [starts[i] for i in seq], [lens[i] for i in seq])
            self._heads(pooled, [params[i] for i in seq], seq, out)
        for i, p in enumerate(params):
            if p.per_token:
                rows = hidden[starts[i] : starts[i] + lens[i]]
                out[i] = self._token_head(rows, p)
        return [o.float().cpu() for o in out if o is not None]

    def _pool(self, hidden: torch.Tensor, starts: list[int], lens: list[int]) -> torch.Tensor:
        if hasattr(self.model, "pool"):  # a model with its own pooling head input (e.g. BERT's pooler)
            return self.model.pool(hidden, starts, lens, self.cfg.pooling_type)
        return pool_sequences(hidden, starts, lens, self.cfg.pooling_type)

    def _heads(self, pooled: torch.Tensor, params: list[PoolingParams], idx: list[int],
               out: list[torch.Tensor | None]) -> None:
        if self.cfg.kind == "embed":
            pooled = pooled.float()
            for j, p in enumerate(params):
                out[idx[j]] = self._embed_head(pooled[j], p)
            return
        logits = self.model.classify(pooled).float()
        for j, p in enumerate(params):
            act = p.use_activation if p.use_activation is not None else self.cfg.use_activation
            name = self.cfg.score_activation if p.task == "score" else self.cfg.classify_activation
            out[idx[j]] = _activation(logits[j], name) if act else logits[j]

    def _embed_head(self, v: torch.Tensor, p: PoolingParams) -> torch.Tensor:
        """An embedding ([H], or [T, H] per token): through the sentence-transformers Dense layers (if any), cut to
        ``dimensions`` (the request's, else the pooler's), then L2-normalised along the last axis when asked (the
        request's ``normalize``, else the pooler's)."""
        v = self.projector(v)
        dims = p.dimensions or self.cfg.default_dimensions
        if dims is not None:
            v = v[..., :dims]
        return F.normalize(v, p=2, dim=-1) if (p.normalize if p.normalize is not None else self.cfg.normalize) else v

    def _token_head(self, rows: torch.Tensor, p: PoolingParams) -> torch.Tensor:
        if p.task == "token_embed":
            return self._embed_head(rows.float(), p)
        logits = self.model.classify(rows).float()
        return _activation(logits) if p.use_activation else logits  # reward scores are raw unless asked
