"""EAGLE and EAGLE-3 draft heads for a Llama-family target, in the published checkpoint layouts.

EAGLE-1/2 (``method: eagle``; e.g. yuhuili/EAGLE-LLaMA3-Instruct-8B): ``fc`` (2h -> h, with a bias when
the checkpoint has ``fc.bias``, as the EAGLE repository trains it by default) over
``cat(embed(token), hidden)``; ``num_hidden_layers`` Llama decoder layers ``layers.<i>.*`` of which
layer 0 has no ``input_layernorm``; no final norm. The embedding and the LM head are the target's (a
checkpoint copy of ``embed_tokens.weight`` is shape-checked and unused). The hidden input is the
target's last-layer output after its final norm.

EAGLE-3 (``method: eagle3``; e.g. yuhuili/EAGLE3-LLaMA3.1-Instruct-8B): ``fc`` (3 h_t -> h) over the
target's residual stream entering three layers (:func:`eagle3_aux_layers`); one decoder layer
``midlayer.*`` whose attention reads ``cat(input_layernorm(embed), hidden_norm(hidden))`` (2h wide) and
whose residual is ``hidden`` (``hidden_norm(hidden)`` with ``norm_before_residual``); a final ``norm``;
its own ``lm_head`` over ``draft_vocab_size`` rows, draft id ``i`` being target id ``i + d2t[i]``
(``t2d`` is not needed). ``embed_tokens.weight`` is used when the checkpoint has it, else the target's.

Both return ``(out, hidden_next)``: ``out`` gives the draft logits, ``hidden_next`` is the hidden input of
the next draft step (EAGLE-1: the layer output; EAGLE-3: the pre-norm output). The head runs the plain
(unfused) layer path in every device; its residual stream is float32 as in :mod:`pagoda.models.llama`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pagoda.attention.backend import AttentionBackend
from pagoda.attention.metadata import AttentionMetadata
from pagoda.layers.linear import Linear, UnquantizedLinearMethod
from pagoda.layers.norm import RMSNorm
from pagoda.layers.rotary import RotaryEmbedding
from pagoda.models.llama import DecoderLayer, LlamaShape, rope_for
from pagoda.models.weight_loading import load_weights, missing_weights

KEY = "speculative_config.model"


def eagle3_aux_layers(head_cfg: dict[str, Any], num_target_layers: int) -> tuple[int, ...]:
    """Target layers whose input residual stream feeds EAGLE-3's ``fc`` (layer ``i``'s input: the embeddings
    for 0): ``eagle_aux_hidden_state_layer_ids`` when the head's config.json names them (top level or in
    ``eagle_config``, as vLLM reads them), else vLLM's default (2, L // 2, L - 3)."""
    key = "eagle_aux_hidden_state_layer_ids"
    eagle_config = head_cfg.get("eagle_config") or {}
    ids = head_cfg.get(key) or (eagle_config.get(key) if isinstance(eagle_config, dict) else None)
    if ids and (not isinstance(ids, list) or not all(type(i) is int for i in ids)):
        raise ValueError(f"{KEY}: config.json {key} must be a list of target layer indices, got {ids!r}.")
    layers = tuple(ids) if ids else (2, num_target_layers // 2, num_target_layers - 3)
    if len(set(layers)) != 3 or not all(0 <= i < num_target_layers for i in layers):
        raise ValueError(f"{KEY}: EAGLE-3 reads three distinct target layers; {layers} are not three of the "
                         f"target's {num_target_layers} layers (config.json {key}).")
    return tuple(sorted(layers))  # concatenated in layer order, as vLLM does


_HEAD_SHAPE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers")
"""config.json fields a head must give (positive integers); the others have Llama's defaults."""


def read_head_config(path: str) -> dict[str, Any]:
    """The head's config.json as a dict; a missing or unreadable one is a ``ValueError`` naming the key and file."""
    f = Path(path) / "config.json"
    if not f.is_file():
        raise ValueError(f"{KEY}: no config.json in {path!r} (an EAGLE head checkpoint folder).")
    try:
        cfg = json.loads(f.read_text())
    except (ValueError, OSError) as e:
        raise ValueError(f"{KEY}: {f} is not valid JSON ({e}).") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"{KEY}: {f} must hold a JSON object, got {type(cfg).__name__}.")
    return cfg


def head_shape(cfg: dict[str, Any]) -> LlamaShape:
    """The head's layer shape; a field of :data:`_HEAD_SHAPE_FIELDS` missing or not a positive integer is a
    ``ValueError`` naming it."""
    for field in _HEAD_SHAPE_FIELDS:
        v = cfg.get(field)
        if type(v) is not int or v < 1:
            raise ValueError(f"{KEY}: the head's config.json {field} is {v!r}; expected a positive integer.")
    try:
        return LlamaShape.from_hf({"attention_bias": False, **cfg}, "LlamaForCausalLM")
    except (TypeError, ValueError) as e:
        raise ValueError(f"{KEY}: the head's config.json does not describe a Llama layer ({e}).") from e


def head_weights(path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """The head's tensors: ``*.safetensors`` files, else ``pytorch_model*.bin`` (read with weights_only). A
    truncated or corrupt file is a ``ValueError`` naming the key and the file."""
    import pickle

    from safetensors import SafetensorError

    folder = Path(path)
    st = sorted(folder.glob("*.safetensors"))
    if st:
        from safetensors.torch import load_file

        for f in st:
            try:
                tensors = load_file(str(f))
            except (SafetensorError, OSError) as e:
                raise ValueError(f"{KEY}: {f} is not a readable safetensors file ({e}); it is truncated or "
                                 f"corrupt.") from e
            yield from tensors.items()
        return
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if not bins:
        raise ValueError(f"{KEY}: no *.safetensors or pytorch_model*.bin weights in {path!r}.")
    for f in bins:
        try:
            state = torch.load(str(f), map_location="cpu", weights_only=True)
        except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as e:
            raise ValueError(f"{KEY}: {f} cannot be read ({e}); it is truncated or corrupt.") from e
        yield from state.items()


def _check(cfg: dict[str, Any], field: str, value: int, target: int, what: str) -> None:
    if value != target:
        raise ValueError(f"{KEY}: the head's config.json {field} ({value}) differs from the target's {what} "
                         f"({target}).")


class EagleHead(nn.Module):
    """One EAGLE or EAGLE-3 head (module docstring); built from the head's config.json, loaded with
    :meth:`load`, run with :meth:`forward` over a flattened batch like a pagoda model."""

    def __init__(self, cfg: dict[str, Any], method: str, target: Any, max_position: int, fc_bias: bool) -> None:
        super().__init__()
        self.method = method
        ts = target.shape
        s = head_shape(cfg)
        self.shape = s
        _check(cfg, "vocab_size", s.vocab_size, ts.vocab_size, "vocabulary size")
        if method == "eagle":
            _check(cfg, "hidden_size", s.hidden_size, ts.hidden_size, "hidden_size")
        else:
            _check(cfg, "target_hidden_size", int(cfg.get("target_hidden_size") or s.hidden_size), ts.hidden_size,
                   "hidden_size")
            if s.num_layers != 1:
                raise ValueError(f"{KEY}: an EAGLE-3 head has one decoder layer (midlayer); config.json "
                                 f"num_hidden_layers is {s.num_layers}.")
        rope = RotaryEmbedding(s.head_dim, max(max_position, s.max_position), rope_for(cfg, "LlamaForCausalLM"),
                               torch.get_default_dtype())
        self.rope = rope
        self.target = [target]  # not a submodule: its weights are the target's
        self.embed_tokens: nn.Embedding | None = None
        self.lm_head: Linear | None = None
        self.norm_before_residual = bool(cfg.get("norm_before_residual", False))
        h = s.hidden_size
        if method == "eagle":
            self.fc = Linear(2 * h, h, bias=fc_bias, linear_method=UnquantizedLinearMethod())
            self.layers = nn.ModuleList([DecoderLayer(s, rope, i) for i in range(s.num_layers)])
            self.layers[0].input_layernorm = nn.Identity()  # EAGLE: the first layer has none
        else:
            self.draft_vocab = int(cfg.get("draft_vocab_size") or s.vocab_size)
            self.fc = Linear(3 * ts.hidden_size, h, bias=False, linear_method=UnquantizedLinearMethod())
            self.midlayer = DecoderLayer(s, rope, 0)
            q, kv = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
            self.midlayer.self_attn.qkv_proj = Linear(2 * h, q + 2 * kv, bias=s.qkv_bias, output_sizes=(q, kv, kv),
                                                      linear_method=UnquantizedLinearMethod())
            self.midlayer.hidden_norm = RMSNorm(h, s.rms_norm_eps)
            self.norm = RMSNorm(h, s.rms_norm_eps)
            self.lm_head = Linear(h, self.draft_vocab, bias=False, linear_method=UnquantizedLinearMethod())
            self.d2t: torch.Tensor
            self.register_buffer("d2t", torch.zeros(self.draft_vocab, dtype=torch.long))

    # ------------------------------------------------------------ weights
    def load(self, weights: dict[str, torch.Tensor]) -> None:
        """Load the checkpoint's tensors; a missing, misshapen or unknown tensor is a ValueError naming it."""
        tw = self.target[0].shape
        own: list[tuple[str, torch.Tensor]] = []
        has_d2t = False
        for name, t in weights.items():
            if name == "t2d":
                continue
            if name == "embed_tokens.weight":
                if tuple(t.shape) != (tw.vocab_size, self.shape.hidden_size):
                    raise ValueError(f"{KEY}: checkpoint tensor 'embed_tokens.weight' has shape {tuple(t.shape)}, "
                                     f"expected ({tw.vocab_size}, {self.shape.hidden_size}).")
                if self.method == "eagle":
                    continue  # EAGLE-1 shares the target's embedding
                self.embed_tokens = nn.Embedding(tw.vocab_size, self.shape.hidden_size, device=self.fc.weight.device,
                                                 dtype=self.fc.weight.dtype)
            has_d2t = has_d2t or name == "d2t"
            own.append((name, t))
        try:
            loaded = load_weights(self, own, {"q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1),
                                              "v_proj": ("qkv_proj", 2), "gate_proj": ("gate_up_proj", 0),
                                              "up_proj": ("gate_up_proj", 1)}, prefix="")
        except ValueError as e:
            raise ValueError(f"{KEY}: {e}") from e
        missing = missing_weights(self, loaded)
        if missing:
            raise ValueError(f"{KEY}: the checkpoint lacks tensor(s) {sorted(missing)[:8]}.")
        if self.method == "eagle3":
            self._check_draft_map(has_d2t)
        if self.embed_tokens is None and self.shape.hidden_size != tw.hidden_size:
            raise ValueError(f"{KEY}: the head's hidden_size ({self.shape.hidden_size}) differs from the target's "
                             f"({tw.hidden_size}) and the checkpoint has no 'embed_tokens.weight' of its own.")

    def _check_draft_map(self, has_d2t: bool) -> None:
        vocab = self.target[0].shape.vocab_size
        if not has_d2t and self.draft_vocab != vocab:
            raise ValueError(f"{KEY}: draft_vocab_size ({self.draft_vocab}) differs from vocab_size ({vocab}) "
                             f"and the checkpoint lacks tensor 'd2t' (draft id -> target id offsets).")
        ids = torch.arange(self.draft_vocab, device=self.d2t.device) + self.d2t
        if self.draft_vocab and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise ValueError(f"{KEY}: checkpoint tensor 'd2t' maps draft ids outside the target's vocabulary "
                             f"(0..{vocab - 1}).")

    # ------------------------------------------------------------ forward
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        emb = self.embed_tokens if self.embed_tokens is not None else self.target[0].embed_tokens
        return emb(ids)

    def combine(self, target_hidden: torch.Tensor) -> torch.Tensor:
        """The hidden input of the first draft step from the target's rows (EAGLE-3: ``fc`` over its aux states)."""
        dt = self.fc.weight.dtype
        return self.fc(target_hidden.to(dt)) if self.method == "eagle3" else target_hidden.to(dt)

    def forward(self, ids: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor,
                kv_caches: list[tuple[torch.Tensor, torch.Tensor]], meta: AttentionMetadata,
                backend: AttentionBackend) -> tuple[torch.Tensor, torch.Tensor]:
        cos_sin = self.rope.cos_sin(positions)
        dt = self.fc.weight.dtype
        emb = self.embed(ids).to(dt)
        if self.method == "eagle":
            h = self.fc(torch.cat([emb, hidden.to(dt)], dim=-1)).float()
            layer: Any
            for i, (layer, kv) in enumerate(zip(self.layers, kv_caches, strict=True)):
                x = h.to(dt) if i == 0 else layer.input_layernorm(h)
                h = h + layer.self_attn(cos_sin, positions, x, kv, meta, backend)
                h = h + layer.mlp(layer.post_attention_layernorm(h))
            return h, h
        m: Any = self.midlayer
        hn = m.hidden_norm(hidden)
        residual = hn.float() if self.norm_before_residual else hidden.float()
        x = torch.cat([m.input_layernorm(emb), hn], dim=-1)
        h = residual + m.self_attn(cos_sin, positions, x, kv_caches[0], meta, backend)
        h = h + m.mlp(m.post_attention_layernorm(h))
        return self.norm(h), h

    def greedy(self, out: torch.Tensor) -> torch.Tensor:
        """The draft's greedy tokens (target ids) for rows ``out`` of :meth:`forward`."""
        if self.method == "eagle":
            return self.target[0].compute_logits(out.to(self.fc.weight.dtype)).argmax(dim=-1)
        assert self.lm_head is not None
        d = self.lm_head(out).argmax(dim=-1)
        return d + self.d2t[d]

    @property
    def num_layers(self) -> int:
        return self.shape.num_layers


def build_head(path: str, method: str, target: Any, max_model_len: int, dtype: torch.dtype,
               device: torch.device) -> EagleHead:
    """Read, build and load the head at ``path`` for ``target`` (start-up errors name the key or tensor)."""
    cfg = read_head_config(path)
    weights = {name.removeprefix("model."): t for name, t in head_weights(path)}
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            head = EagleHead(cfg, method, target, max_model_len, "fc.bias" in weights)
    finally:
        torch.set_default_dtype(old)
    head.load(weights)
    return head.eval()
