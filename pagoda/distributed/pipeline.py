"""Pipeline parallelism: which decoder layers a stage holds, and the hidden states sent stage to stage.

Layout (vLLM's): ``rank = stage * tp_size + tp_rank``; tensor-parallel rank ``t`` of stage ``s`` receives
from rank ``t`` of stage ``s - 1`` and sends to rank ``t`` of stage ``s + 1`` (every tensor-parallel rank holds
the whole hidden state after its row-parallel all-reduce). The first stage holds the embedding, the last the
final norm and the LM head (and the embedding too when the head is tied to it). The engine core is tensor rank 0
of the *last* stage, so the sampler sees the logits without another transfer.

Between stages travels the residual stream: unfused, the float32 ``h``; fused (CUDA), ``(h, residual)`` in the
model dtype. Both sides know the shapes from the step's token count, so nothing but the tensors is sent. Sends
are asynchronous (``isend``): a stage starts its next step while its last output is still on the wire, and each
send is waited for before the next one (steps stay in order on each link).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from pagoda import envs
from pagoda.distributed.parallel_state import CommStats

FLAG = "--pipeline-parallel-size"


def layer_partition(num_layers: int, pp_size: int) -> list[int]:
    """Decoder layers per stage. ``VLLM_PP_LAYER_PARTITION`` (e.g. ``"5,3"``) when set; otherwise an even
    split whose remainder goes to the stages before the last, latest first (the last stage also runs the LM
    head), as vLLM's ``get_pp_indices`` does."""
    raw = envs.pp_layer_partition()
    if raw is not None:
        try:
            parts = [int(x) for x in raw.split(",")]
        except ValueError:
            raise ValueError(f"VLLM_PP_LAYER_PARTITION={raw!r} is not a comma-separated list of integers.") from None
        if len(parts) != pp_size or sum(parts) != num_layers or min(parts) < 1:
            raise ValueError(f"VLLM_PP_LAYER_PARTITION={raw!r} must give {pp_size} stages ({FLAG}) at least one "
                             f"layer each, {num_layers} layers in all.")
        return parts
    if pp_size > num_layers:
        raise ValueError(f"{FLAG} {pp_size}: the model has only {num_layers} decoder layers (one stage needs one).")
    parts = [num_layers // pp_size] * pp_size
    for i in range(num_layers % pp_size):
        parts[pp_size - 2 - i] += 1
    return parts


def get_pp_indices(num_layers: int, pp_rank: int, pp_size: int) -> tuple[int, int]:
    """``[start, end)``: the decoder layers of stage ``pp_rank``."""
    parts = layer_partition(num_layers, pp_size)
    start = sum(parts[:pp_rank])
    return start, start + parts[pp_rank]


class PPMissing(nn.Module):
    """Stands where a module of another stage would be (keeps layer indices and weight names in place)."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("this module lives on another pipeline stage")


@dataclass
class PPStage:
    """This rank's stage: its layers ``[start, end)`` and its neighbours' global ranks."""

    rank: int  # the stage
    size: int  # stages
    start: int
    end: int
    tp_size: int = 1
    tp_rank: int = 0
    stats: CommStats = field(default_factory=CommStats)
    _pending: list[Any] = field(default_factory=list, repr=False)

    @classmethod
    def for_rank(cls, global_rank: int, tp_size: int, parts: list[int]) -> PPStage:
        """``parts``: layers per stage, resolved once by the engine core (``EngineConfig.pp_layer_partition``)."""
        stage = global_rank // tp_size
        start = sum(parts[:stage])
        return cls(stage, len(parts), start, start + parts[stage], tp_size, global_rank % tp_size)

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    @property
    def is_last(self) -> bool:
        return self.rank == self.size - 1

    def has_layer(self, i: int) -> bool:
        return self.start <= i < self.end

    def owns_weight(self, name: str, tied: bool) -> bool:
        """Whether the checkpoint tensor ``name`` (HF spelling) is loaded on this stage."""
        if name.startswith("model.layers."):
            return self.has_layer(int(name.split(".")[2]))
        if name.startswith("model.embed_tokens."):
            return self.is_first or (tied and self.is_last)
        return self.is_last  # model.norm, lm_head

    def prune(self, model: nn.Module, tied: bool) -> None:
        """Replace the modules other stages hold by :class:`PPMissing`."""
        if not (self.is_first or (tied and self.is_last)):
            model.embed_tokens = PPMissing()
        if not self.is_last:
            model.norm = PPMissing()
            if hasattr(model, "lm_head"):
                model.lm_head = PPMissing()

    # ------------------------------------------------------------ transfer
    def _peer(self, stage: int) -> int:
        return stage * self.tp_size + self.tp_rank

    def send(self, tensors: list[torch.Tensor]) -> None:
        """Hand ``tensors`` to the next stage (waits for this link's previous send first)."""
        t0 = time.perf_counter()
        self.flush()
        dst = self._peer(self.rank + 1)
        for t in tensors:
            t = t.contiguous()
            self._pending.append((dist.isend(t, dst), t))
            self.stats.bytes += t.numel() * t.element_size()
        self.stats.calls += 1
        self.stats.seconds += time.perf_counter() - t0

    def flush(self) -> None:
        """Wait until every send of this stage has left."""
        for work, _ in self._pending:
            work.wait()
        self._pending.clear()

    def recv(self, specs: list[tuple[tuple[int, ...], torch.dtype]], device: torch.device) -> list[torch.Tensor]:
        """The previous stage's tensors, of the shapes and dtypes both sides know."""
        t0 = time.perf_counter()
        src = self._peer(self.rank - 1)
        out = []
        for shape, dtype in specs:
            t = torch.empty(shape, dtype=dtype, device=device)
            dist.recv(t, src)
            out.append(t)
        self.stats.calls += 1
        self.stats.seconds += time.perf_counter() - t0
        return out

    # ------------------------------------------------------------- forward
    def forward(self, model: Any, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[Any],
                meta: Any, backend: Any, local_only: bool = False) -> torch.Tensor:
        """This stage's part of ``model.forward``: the embedding or the previous stage's hidden state, this
        stage's layers, then the final norm (last stage; its result is returned) or a send to the next stage
        (the hidden state is returned, for nobody). ``local_only``: no transfer, zeros in (memory profiling)."""
        n, hidden = input_ids.shape[0], model.shape.hidden_size
        fused = bool(model.fused)
        # Fused: the model dtype (a norm weight's: a layer's first parameter may be a float32 KV-cache scale).
        dtype: torch.dtype = model.layers[self.start].input_layernorm.weight.dtype if fused else torch.float32
        specs: list[tuple[tuple[int, ...], torch.dtype]] = [((n, hidden), dtype)] * (2 if fused else 1)
        if self.is_first:
            h, residual = model.embed(input_ids), None
        elif local_only:
            h, residual = torch.zeros(specs[0][0], dtype=dtype, device=input_ids.device), None
        else:
            got = self.recv(specs, input_ids.device)
            h, residual = got[0], (got[1] if fused else None)
        h, residual = model.run_layers(h, residual, positions, kv_caches, meta, backend)
        if self.is_last:
            return model.final_norm(h, residual)
        if not local_only:
            self.send([h, residual] if fused else [h])
        return h
