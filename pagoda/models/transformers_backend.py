"""The transformers fallback: any HF decoder LM that transformers can build, run by pagoda's engine.

The HF model (``*ForCausalLM`` / ``*LMHeadModel``) is built as-is from config.json, with its attention
routed to pagoda's paged attention through transformers' attention-function registry
(:mod:`pagoda.models.transformers_attention`). pagoda's flattened token batch is the sequence of one
batch row: ``forward`` calls the HF base model with ``input_ids[None]`` and pagoda's positions as
``position_ids``, ``use_cache=False`` (HF keeps no cache of its own; the paged cache is pagoda's).
The interface is a native model's (:class:`pagoda.models.llama.LlamaForCausalLM`).

``compute_logits`` applies the HF output embeddings plus the logit post-processing that CausalLM
heads do in their ``forward`` (Cohere's ``logit_scale``, Granite's ``logits_scaling``,
``final_logit_softcapping``). At start-up a probe forward of a few tokens (plain causal attention)
checks that (a) every decoder layer's attention comes through pagoda, (b) our logits equal the HF
CausalLM's own, and learns the KV-cache shape; any mismatch is a start-up error naming the
architecture.

CUDA graphs: the forward reads pagoda's step metadata only through the tensors of the
:class:`AttentionMetadata` it is given (under graphs, the graph runner's static buffers) and HF's decoder
code is shape-only Python around device ops (no mask is built for a registered attention function; no
cache object exists), so the decode, verify and prefill-chunk graphs capture it as they capture a native
model. The probe checks that (:mod:`pagoda.models.transformers_graphs`: no host synchronisation in a
1-token and a 4-token forward); a model that fails it (e.g. HF's dynamic rope, which decides on the host)
runs eagerly, with a log line naming the op (``supports_cuda_graphs`` is then False).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pagoda.attention.backend import AttentionBackend
from pagoda.attention.metadata import AttentionMetadata
from pagoda.models import transformers_attention as tattn
from pagoda.models.transformers_graphs import HostSyncCheck, describe
from pagoda.models.transformers_norms import fuse_rms_norms
from pagoda.models.transformers_rotary import RotaryFusion
from pagoda.models.transformers_support import check_supported, hf_classes
from pagoda.models.transformers_weights import checkpoint_renamer
from pagoda.quantization.base import QuantizationConfig

logger = logging.getLogger("pagoda")

_PROBE_TOKENS = 4
_IGNORED_CHECKPOINT_SUFFIXES = (".rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")


@dataclass(frozen=True)
class TransformersShape:
    """The part of a native model's ``shape`` the engine reads."""

    vocab_size: int
    hidden_size: int


class TransformersForCausalLM(nn.Module):
    supports_quantization = False

    def __init__(self, hf_config: dict[str, Any], arch: str, dtype: torch.dtype,
                 quant_config: QuantizationConfig | None = None, trust_remote_code: bool = False,
                 model_dir: Path | None = None) -> None:
        super().__init__()
        if quant_config is not None:
            raise ValueError(f"The transformers fallback ({arch}) runs unquantized weights only; "
                             f"{quant_config.describe()} needs a native implementation.")
        from transformers.initialization import no_init_weights

        config, model_cls = hf_classes(hf_config, arch, trust_remote_code, model_dir)
        check_supported(config, model_cls, arch)
        tattn.register()
        config._attn_implementation = tattn.ATTN_IMPLEMENTATION
        config.use_cache = False
        with no_init_weights():  # the weights come from the checkpoint (or the dummy initialiser)
            hf = model_cls._from_config(config, dtype=dtype)
        if getattr(config, "tie_word_embeddings", False):
            hf.tie_weights()
        self.arch = arch
        self.hf = hf
        self.__dict__["_base"] = _decoder_stack(hf, arch)  # a submodule of hf: not registered a second time
        self.shape = TransformersShape(int(config.vocab_size), int(getattr(config, "hidden_size", 0) or 0))
        if hf.get_output_embeddings() is None:
            raise ValueError(f"{arch} has no output embeddings (LM head); it is not a generative LM.")
        self._step = tattn.StepContext()
        for m in hf.modules():
            m.__dict__[tattn.STEP_ATTR] = self._step
        self._kv_shape: tuple[int, int, int] | None = None  # (num_layers, num_kv_heads, head_dim), from the probe
        self._graph_problem: str | None = None  # why CUDA graphs cannot capture the forward (the probe's finding)
        self._rotary = RotaryFusion.none()  # enable_fused_kernels finds HF's rotary functions to fuse (CUDA)

    @property
    def base(self) -> nn.Module:
        """The HF base model (decoder stack without the LM head)."""
        base: nn.Module = self.__dict__["_base"]
        return base

    @property
    def lm_head(self) -> nn.Module:
        return self.hf.get_output_embeddings()

    # ---------------------------------------------------------------- shapes
    @property
    def num_layers(self) -> int:
        return self._probe()[0]

    @property
    def num_kv_heads(self) -> int:
        return self._probe()[1]

    @property
    def head_dim(self) -> int:
        return self._probe()[2]

    @property
    def supports_cuda_graphs(self) -> bool:  # the class attribute reads as True (``pagoda models``: "yes")
        """Whether the graph runner may capture this model: the probe found no host sync in its forward."""
        self._probe()
        return self._graph_problem is None

    # --------------------------------------------------------------- forward
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv_caches: list[tuple[torch.Tensor, torch.Tensor]], meta: AttentionMetadata,
                backend: AttentionBackend) -> torch.Tensor:
        step = self._step
        step.kv_caches, step.meta, step.backend, step.layers_called = kv_caches, meta, backend, []
        try:
            with self._rotary.active():
                out = self.base(input_ids=input_ids[None], position_ids=positions[None], use_cache=False)
        finally:
            step.kv_caches, step.meta, step.backend = None, None, None
        if len(step.layers_called) != len(kv_caches):
            raise RuntimeError(f"{self.arch}: {len(step.layers_called)} attention calls for {len(kv_caches)} layers")
        return out[0][0]

    def compute_logits_raw(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits in the model dtype, post-processed as the HF CausalLM head does."""
        logits = self.lm_head(hidden)
        cfg = self.hf.config
        scale = getattr(cfg, "logit_scale", None)  # Cohere: multiplies
        if isinstance(scale, (int, float)) and scale != 1:
            logits = logits * scale
        div = getattr(cfg, "logits_scaling", None)  # Granite: divides
        if isinstance(div, (int, float)) and div != 1:
            logits = logits / div
        cap = getattr(cfg, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits in float32 (what the sampler and logprobs use)."""
        return self.compute_logits_raw(hidden).float()

    # ------------------------------------------------------------ start-up
    @torch.inference_mode()
    def _probe(self) -> tuple[int, int, int]:
        """Run a few tokens through the HF model with plain causal attention (module docstring)."""
        if self._kv_shape is not None:
            return self._kv_shape
        dev = next(self.hf.parameters()).device
        n = _PROBE_TOKENS
        ids = (torch.arange(n, device=dev) % int(self.hf.config.vocab_size))[None]
        pos = torch.arange(n, device=dev)[None]
        step = self._step
        step.probe_shapes, step.layers_called = {}, []
        check = HostSyncCheck()
        try:
            ref = self.hf(input_ids=ids, position_ids=pos, use_cache=False).logits[0]
            with check:  # a prefill-chunk-shaped and a decode-shaped forward, as the graph runner captures them
                hidden = self.base(input_ids=ids, position_ids=pos, use_cache=False)[0][0]
                self.base(input_ids=ids[:, -1:], position_ids=pos[:, -1:] + n, use_cache=False)
            shapes = dict(step.probe_shapes)
        finally:
            step.probe_shapes = None
        self._kv_shape = self._check_probe(shapes, self.compute_logits_raw(hidden), ref)
        self._graph_problem = describe(check.problems)
        if self._graph_problem is not None:
            logger.log(logging.WARNING if dev.type == "cuda" else logging.DEBUG,
                       "%s through the transformers fallback runs without CUDA graphs: %s", self.arch,
                       self._graph_problem)
        return self._kv_shape

    def _check_probe(self, shapes: dict[int, tuple[int, int]], ours: torch.Tensor,
                     ref: torch.Tensor) -> tuple[int, int, int]:
        """(num_layers, num_kv_heads, head_dim) from the probe's findings, or a ValueError naming the problem."""
        layers = sorted(shapes)
        n_layers = int(getattr(self.hf.config, "num_hidden_layers", len(layers)) or len(layers))
        if not layers or layers != list(range(n_layers)):
            raise ValueError(
                f"{self.arch}: only layers {layers} of {n_layers} route attention through transformers' attention "
                f"registry; the transformers fallback cannot run this model."
            )
        if len(set(shapes.values())) != 1:
            raise ValueError(f"{self.arch}: layers differ in KV shape {sorted(set(shapes.values()))}; the paged "
                             f"cache needs one shape for every layer.")
        tol = 1e-3 if ours.dtype == torch.float32 else 3e-2  # HF may round its logits at another point than we do
        if not torch.allclose(ours.float(), ref.float(), rtol=tol, atol=tol):
            raise ValueError(f"{self.arch}: the HF model's forward post-processes logits in a way the transformers "
                             f"fallback does not reproduce; it cannot run this model.")
        heads, head_dim = shapes[0]
        return n_layers, heads, head_dim

    # --------------------------------------------------------------- weights
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Copy HF-named tensors into the HF model's parameters and persistent buffers (the state transformers'
        own loading fills, e.g. Apertus' xIELU ``act_fn.beta``; names with or without the base-model prefix).
        Returns the names loaded."""
        params: dict[str, torch.Tensor] = {**_persistent_buffers(self.hf), **dict(self.hf.named_parameters())}
        rename = checkpoint_renamer(self.hf, params)
        loaded: set[str] = set()
        for name, tensor in weights:
            target, converted = rename(name)
            if converted:
                raise ValueError(f"Checkpoint tensor {name!r} needs transformers' weight conversion (not a plain "
                                 f"copy), which the transformers fallback does not do.")
            if target not in params:
                if name.endswith(_IGNORED_CHECKPOINT_SUFFIXES) or self._is_tied_head(target):
                    continue
                raise ValueError(f"Checkpoint tensor {name!r} has no place in {self.arch} (transformers fallback).")
            param = params[target]
            if param.shape != tensor.shape:
                raise ValueError(f"Checkpoint tensor {name!r}: shape {tuple(tensor.shape)}, the model has "
                                 f"{tuple(param.shape)}.")
            with torch.no_grad():
                param.copy_(tensor)
            loaded.add(target)
        return loaded

    def _is_tied_head(self, name: str) -> bool:
        return bool(getattr(self.hf.config, "tie_word_embeddings", False)) and name.endswith("lm_head.weight")

    def missing_weights(self, loaded: set[str]) -> list[str]:
        return [n for n, _ in self.hf.named_parameters() if n not in loaded]

    def enable_fused_kernels(self) -> None:
        """CUDA with Triton: HF's RMSNorm modules as pagoda's fused kernel (models/transformers_norms.py), gated
        MLPs as one gate/up matmul and a fused SiLU-and-product (models/transformers_mlp.py), the rotary function
        as one launch during pagoda's forward (models/transformers_rotary.py), and the remaining ``nn.Linear``
        modules take pagoda's GEMV for the few-row shapes the native layers take it for (layers/dense_gemv.py)."""
        from pagoda.layers.dense_gemv import adopt_linears
        from pagoda.models.transformers_mlp import fuse_gated_mlps

        self._probe()  # before anything is swapped: the probe compares this model with the HF forward
        norms, mlps = fuse_rms_norms(self.hf, triton=True), fuse_gated_mlps(self.hf)
        self._rotary = RotaryFusion(self.hf)
        logger.debug("transformers fallback: %d RMSNorms, %d gated MLPs and %d rotary functions fused; %d linears "
                     "may take the GEMV", norms, mlps, len(self._rotary), adopt_linears(self.hf))

    def pack_for_cpu(self, batch_hint: int) -> int:
        """bf16 on the CPU: HF's RMSNorm modules as one ``F.rms_norm`` each (models/transformers_norms.py), and
        prepacked bf16 ``nn.Linear`` weights (the LM head included) for oneDNN; see layers/cpu_linear.py."""
        from pagoda.layers.cpu_linear import pack_model_linears

        logger.debug("transformers fallback: %d RMSNorms fused", fuse_rms_norms(self.hf, triton=False))
        self._probe()  # before the LM head is replaced: the probe compares it with the HF forward
        return pack_model_linears(self.hf, batch_hint)


def _decoder_stack(hf: nn.Module, arch: str) -> nn.Module:
    """The decoder stack of the HF CausalLM ``hf`` (its hidden states feed the LM head): ``base_model``, or its
    ``model`` attribute where ``base_model_prefix`` names no attribute (Llama 4's text model: ``base_model`` is then
    the CausalLM itself)."""
    base = hf.base_model
    if isinstance(base, nn.Module) and base is not hf:
        return base
    inner = getattr(hf, "model", None)
    if isinstance(inner, nn.Module):
        return inner
    raise ValueError(f"{arch}: the transformers fallback cannot find the decoder stack under the LM head "
                     f"(base_model_prefix {getattr(hf, 'base_model_prefix', '')!r} names no attribute and there is no "
                     f"'model' attribute).")


def _persistent_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    """Buffers that ``state_dict`` (so a checkpoint) holds, by their full names."""
    out: dict[str, torch.Tensor] = {}
    for prefix, m in module.named_modules():
        for name, buf in m._buffers.items():
            if buf is not None and name not in m._non_persistent_buffers_set:
                out[f"{prefix}.{name}" if prefix else name] = buf
    return out
