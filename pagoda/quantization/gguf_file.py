"""Raw tensors of a GGUF file under Hugging Face names, quantized blocks left as bytes.

:func:`iter_gguf_tensors` yields, for each GGUF tensor, ``(hf_name, RawTensor)``:

- names: ``token_embd`` -> ``model.embed_tokens``, ``blk.N.attn_q`` -> ``model.layers.N.self_attn.q_proj``,
  ``ffn_gate`` -> ``mlp.gate_proj``, ``output_norm`` -> ``model.norm``, ``output`` -> ``lm_head`` (table
  ``_BLOCK_NAMES``); a tensor with no HF place (``rope_freqs``: pagoda computes RoPE from the config) is skipped.
- mixture of experts (``qwen2moe``, ``qwen3moe``): the router ``ffn_gate_inp`` -> ``mlp.gate``, the shared expert
  ``ffn_{gate,up,down}_shexp`` and its gate ``ffn_gate_inp_shexp``; the stacked experts ``ffn_{gate,up,down}_exps``
  (``[E, out, in]``) are yielded one expert at a time as ``mlp.experts.<e>.{gate,up,down}_proj`` (an expert's rows
  are whole block rows of the stacked data, so the split is exact and copies nothing).
- rows: llama.cpp's converter interleaves the rotary rows of ``attn_q`` / ``attn_k`` for architecture
  ``llama`` (transformers undoes it in ``LlamaTensorProcessor``); the same row permutation is applied to
  the raw rows here. Quantization blocks run along the input dimension, so permuting rows is exact.

Every error names the GGUF tensor.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pagoda.quantization.gguf_blocks import DENSE_TYPES, FORMATS
from pagoda.quantization.gguf_header import GGUFHeader, TensorInfo, read_gguf_header

_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_gate_inp": "mlp.gate",
    "ffn_gate_inp_shexp": "mlp.shared_expert_gate",
    "ffn_gate_shexp": "mlp.shared_expert.gate_proj",
    "ffn_up_shexp": "mlp.shared_expert.up_proj",
    "ffn_down_shexp": "mlp.shared_expert.down_proj",
}
_EXPERT_NAMES = {"ffn_gate_exps": "gate_proj", "ffn_up_exps": "up_proj", "ffn_down_exps": "down_proj"}
"""Stacked expert tensors ``[E, out, in]`` -> the per-expert projection each slice is."""
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_SKIPPED = ("rope_freqs",)
_PERMUTED_ARCHS = ("llama",)


@dataclass
class RawTensor:
    """One GGUF tensor: its GGUF ``name``, ``type_name`` (``Q4_1``, ``F32``, ...), logical ``shape``
    (PyTorch order, ``[out, in]`` for a matrix) and ``data`` (uint8 rows ``[out, bytes per row]`` for a
    quantized type, the raw bytes for a dense one)."""

    name: str
    type_name: str
    shape: tuple[int, ...]
    data: torch.Tensor

    @property
    def quantized(self) -> bool:
        return self.type_name not in DENSE_TYPES


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face parameter name of a GGUF tensor (``None``: not a model parameter); a stacked expert tensor
    gets ``model.layers.N.mlp.experts.{}.<proj>.<suffix>``, its expert index left as ``{}``."""
    base, _, suffix = gguf_name.rpartition(".")
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)", base)
    if m and m.group(2) in _BLOCK_NAMES:
        return f"model.layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}.{suffix}"
    if m and m.group(2) in _EXPERT_NAMES:
        return f"model.layers.{m.group(1)}.mlp.experts.{{}}.{_EXPERT_NAMES[m.group(2)]}.{suffix}"
    if base in _TOP_NAMES:
        return f"{_TOP_NAMES[base]}.{suffix}"
    if base in _SKIPPED:
        return None
    raise ValueError(f"GGUF tensor {gguf_name!r} has no place in pagoda's Llama / Qwen model")


def rotary_row_order(rows: int, n_head: int) -> torch.Tensor:
    """Indices ``p`` with ``hf_rows = gguf_rows[p]``: undoes llama.cpp's interleaving of q/k rows."""
    half = rows // n_head // 2
    return torch.arange(rows).view(n_head, half, 2).transpose(1, 2).reshape(rows)


def open_gguf(path: Path) -> GGUFHeader:
    """The header of ``path`` (:mod:`.gguf_header`); a truncated or corrupt file is a ``ValueError`` naming it."""
    try:
        return read_gguf_header(path)
    except (IndexError, OSError, KeyError, struct.error) as exc:
        raise ValueError(f"GGUF file {path} cannot be read (truncated or corrupt?): {exc}") from exc


_TOKEN_ID_KEYS = ("bos", "eos", "unknown", "separator", "padding", "eot", "eom")


def check_gguf_metadata(head: GGUFHeader) -> None:
    """Refuse, naming the key (and the tensor it disagrees with), model metadata that is not a positive integer or
    that contradicts the tensor table: ``block_count`` against the ``blk.N`` tensors, ``embedding_length`` and the
    vocabulary against ``token_embd``, head counts that do not divide, special token ids past the vocabulary.
    Transformers builds the config and tokenizer from these values unchecked: a corrupt one was a
    ``ZeroDivisionError`` or ``IndexError`` naming nothing, or a model of two billion layers (a hang)."""
    path, meta = head.path, head.metadata
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise ValueError(f"GGUF file {path}: general.architecture is {arch!r}, not an architecture name (corrupt?)")
    dims = {t.name: t.dims for t in head.tensors}

    def count(key: str, required: bool = False) -> int | None:
        v = meta.get(f"{arch}.{key}")
        if v is None and not required:
            return None
        if isinstance(v, list) and not required and all(type(x) is int and x >= 0 for x in v):
            return None  # a per-layer count (some architectures give head counts layer by layer): not checked here
        if type(v) is not int or v < 1:
            raise ValueError(f"GGUF file {path}: {arch}.{key} is {v!r}, not a positive integer (corrupt file?)")
        return v

    blocks = count("block_count", required=True)
    layers = {int(m.group(1)) for t in head.tensors if (m := re.match(r"blk\.(\d+)\.", t.name))}
    if layers and (max(layers) + 1 != blocks or len(layers) != blocks):
        raise ValueError(f"GGUF file {path}: {arch}.block_count is {blocks}, but its tensors are those of layers "
                         f"{min(layers)}..{max(layers)} ({len(layers)} layers; corrupt file?)")
    hidden = count("embedding_length")
    embd = dims.get("token_embd.weight")
    if hidden is not None and embd is not None and embd[0] != hidden:
        raise ValueError(f"GGUF file {path}: {arch}.embedding_length is {hidden}, but tensor 'token_embd.weight' has "
                         f"rows of {embd[0]} (corrupt file?)")
    heads = count("attention.head_count")
    kv_heads = count("attention.head_count_kv")
    if heads is not None and kv_heads is not None and heads % kv_heads:
        raise ValueError(f"GGUF file {path}: {arch}.attention.head_count {heads} is not a multiple of "
                         f"{arch}.attention.head_count_kv {kv_heads} (corrupt file?)")
    if heads is not None and hidden is not None and count("attention.key_length") is None and hidden % heads:
        raise ValueError(f"GGUF file {path}: {arch}.embedding_length {hidden} does not split into "
                         f"{arch}.attention.head_count {heads} heads (corrupt file?)")
    count("context_length")
    count("feed_forward_length")
    rope = count("rope.dimension_count")
    head_dim = count("attention.key_length") or (hidden // heads if hidden and heads else None)
    if rope is not None and (rope % 2 or (head_dim is not None and rope > head_dim)):
        raise ValueError(f"GGUF file {path}: {arch}.rope.dimension_count is {rope}; rotary dimensions are an even "
                         f"number of at most the head size {head_dim} (corrupt file?)")
    tokens = head.array_lengths.get("tokenizer.ggml.tokens")
    if tokens is not None and embd is not None and len(embd) > 1 and embd[1] != tokens:
        raise ValueError(f"GGUF file {path}: tokenizer.ggml.tokens holds {tokens} tokens, but tensor "
                         f"'token_embd.weight' has {embd[1]} rows (corrupt file?)")
    for name in _TOKEN_ID_KEYS:
        key = f"tokenizer.ggml.{name}_token_id"
        v = meta.get(key)
        if v is not None and tokens is not None and (type(v) is not int or not 0 <= v < tokens):
            raise ValueError(f"GGUF file {path}: {key} is {v!r}, not a token of its {tokens}-token vocabulary "
                             f"(corrupt file?)")


def _raw(head: GGUFHeader, t: TensorInfo) -> RawTensor:
    type_name = t.type_name
    shape = tuple(int(n) for n in reversed(t.dims))  # GGUF lists dims innermost first
    path = head.path
    if type_name not in FORMATS and type_name not in DENSE_TYPES:
        raise ValueError(f"GGUF tensor {t.name!r} in {path} has type {type_name}, which pagoda does not support "
                         f"quantized (supported: {', '.join([*FORMATS, *DENSE_TYPES])}); --load-format safetensors "
                         f"runs the file's dequantized conversion instead (float weights: more memory).")
    data = head.data(t)
    if type_name in FORMATS:
        fmt = FORMATS[type_name]
        in_f, out = shape[-1], int(np.prod(shape[:-1]))
        want = (out, in_f // fmt.block * fmt.type_size)
        if in_f % fmt.block or data.nbytes != want[0] * want[1]:
            raise ValueError(f"GGUF tensor {t.name!r} in {path}: {data.nbytes} bytes of {type_name} data do not "
                             f"hold shape {list(shape)} (truncated or corrupt file?)")
        tensor = torch.from_numpy(np.array(data.reshape(want)))
    else:
        expected = int(np.prod(shape)) * {"F32": 4, "F16": 2, "BF16": 2}[type_name]
        if data.nbytes != expected:
            raise ValueError(f"GGUF tensor {t.name!r} in {path}: {data.nbytes} bytes do not hold {type_name} "
                             f"shape {list(shape)} (truncated or corrupt file?)")
        tensor = torch.from_numpy(np.array(data))
    return RawTensor(t.name, type_name, shape, tensor)


def iter_gguf_tensors(path: Path, hf_config: dict[str, Any]) -> Iterator[tuple[str, RawTensor]]:
    """``(hf_name, RawTensor)`` for every model tensor of the GGUF file (module docstring)."""
    head = open_gguf(path)
    arch = head.metadata.get("general.architecture")
    heads = int(hf_config["num_attention_heads"])
    kv_heads = int(hf_config.get("num_key_value_heads") or heads)
    for t in head.tensors:
        try:
            name = hf_name(t.name)
        except ValueError as exc:
            raise ValueError(f"{exc} (in {path})") from None
        if name is None:
            continue
        raw = _raw(head, t)
        if arch in _PERMUTED_ARCHS and (".attn_q." in t.name or ".attn_k." in t.name):
            n_head = heads if ".attn_q." in t.name else kv_heads
            rows = raw.shape[0]
            if rows % (2 * n_head):
                raise ValueError(f"GGUF tensor {t.name!r} in {path}: {rows} rows do not split into {n_head} rotary "
                                 f"heads")
            raw.data = raw.data.view(rows, -1)[rotary_row_order(rows, n_head)].reshape(raw.data.shape)
        if "{}" in name:
            yield from _per_expert(name, raw)
        else:
            yield name, raw


def _per_expert(name: str, raw: RawTensor) -> Iterator[tuple[str, RawTensor]]:
    """A stacked ``[E, out, in]`` expert tensor as ``E`` tensors ``[out, in]`` (views of its rows)."""
    if len(raw.shape) != 3:
        raise ValueError(f"GGUF tensor {raw.name!r} holds experts but has shape {list(raw.shape)} (expected "
                         f"[experts, out, in])")
    experts, out = raw.shape[0], raw.shape[1]
    rows = raw.data.view(experts, out, -1) if raw.quantized else raw.data.view(experts, -1)
    for e in range(experts):
        yield name.format(e), RawTensor(f"{raw.name}[{e}]", raw.type_name, raw.shape[1:], rows[e])
