"""Quantized experts: every expert's projections read in the checkpoint's format, held in one of two stacked forms.

Loading reuses the dense layers' code: each (expert, projection) of the checkpoint is read into a *staging*
:class:`~pagoda.layers.linear.Linear` built with the quantization config's own linear method, so every format's
tensor names, packing, zero-point conventions and validation are exactly the dense layers'. Once all of a staging
layer's tensors are in, the method's ``process_weights_after_loading`` runs, the result is copied into the stacked
form at that expert's place and the staging layer is dropped (memory: the stacked form plus the few staging layers
still being filled; :meth:`QuantizedExperts.finish_loading` finishes the rest).

Stacked forms, one :class:`StackedWeight` per projection (``w13``: gate rows then up rows ``[E, 2I, H]``; ``w2``:
down ``[E, H, I]``):

* ``fp8``: codes float8_e4m3fn ``[E, N, K]``, float32 scales ``[E, ceil(N / sn), ceil(K / sk)]``: per output row
  (``sn = 1, sk = K``; a per-tensor scale repeated over its projection's rows) or per ``[bn, bk]`` block
  (``sn = bn, sk = bk``). From :class:`~pagoda.quantization.fp8.Fp8LinearMethod` (checkpoints and online
  ``--quantization fp8``) and :class:`~pagoda.quantization.fp8.Fp8BlockLinearMethod`.
* ``int``: the canonical integer weight of :mod:`pagoda.quantization.int_weight`, ``W = code * scale + offset`` per
  group of ``sk`` inputs (``sn = 1``): codes uint8, two per byte (even input in the low nibble) for at most 4 bits
  (``[E, N, K / 2]``), one per byte above (``[E, N, K]``); scales and offsets ``[E, N, K / sk]`` in the model
  dtype. From every method that builds an :class:`~pagoda.quantization.int_weight.IntWeight` (GPTQ, AWQ,
  compressed-tensors pack-quantized); act-order (a column permutation) is refused.

On the CPU (no tensor-parallel cut) integer experts are not stacked: each (expert, projection) keeps the
:class:`~pagoda.quantization.int_weight.IntWeight` its staging layer built, in the CPU kernels' layout, and the
grouped path multiplies by it (:class:`PerExpertWeight`: int4pack / int8 GEMMs instead of dequantizing the
selected experts on every call).

Experts are weight-only whatever the dense layers do: activations stay in the model dtype (a W8A8 FP8
checkpoint's experts compute W8A16, more exact; a static ``input_scale`` is not used, as in the FP8 GEMV). A
method that produces anything else is refused at start-up naming the format.

Tensor parallelism: each rank keeps rows ``[rank * I/n, (rank + 1) * I/n)`` of gate and up and the same input
columns of down (:class:`~pagoda.layers.fused_moe.layer.FusedMoE`); a cut must fall on a scale block or group.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pagoda.layers.linear import Linear
from pagoda.quantization.int_weight import IntWeight

if TYPE_CHECKING:
    from pagoda.quantization.base import QuantizationConfig

PROJECTIONS = ("gate", "up", "down")
"""A staging layer per (expert, projection); gate and up fill halves of ``w13``, down fills ``w2``."""

MODE_PLAIN, MODE_FP8, MODE_INT4, MODE_INT8 = 0, 1, 2, 3
"""The kernels' weight modes: unquantized, FP8 codes times scales, 4-bit codes two per byte, up to 8-bit codes
one per byte (the last two with offsets)."""


@dataclass
class StackedWeight:
    """One projection of every expert in a stacked form (module docstring): ``n`` outputs by ``k`` inputs each.

    ``q`` float8 or uint8 codes; ``scale`` ``[E, ceil(n / sn), ceil(k / sk)]``; ``offset`` like ``scale`` (int)
    or None (fp8). ``expert(e, dtype)`` dequantizes one expert to a dense ``[n, k]`` weight."""

    mode: int
    q: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor | None
    n: int
    k: int
    sn: int
    sk: int
    dtype: torch.dtype
    derived: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """What a path derives from these tensors once (the Triton kernels' launch arguments)."""

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.q.shape[0], self.n, self.k)

    def codes(self, e: int) -> torch.Tensor:
        """Expert ``e``'s codes ``[n, k]`` (uint8 unpacked, or float8)."""
        q = self.q[e]
        if self.mode != MODE_INT4:
            return q
        return torch.stack([q & 15, q >> 4], dim=-1).view(self.n, self.k)

    def expert(self, e: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dense ``[n, k]`` weight of expert ``e``, computed in float32 and rounded once to ``dtype``."""
        s = self.scale[e].float().repeat_interleave(self.sn, 0)[: self.n].repeat_interleave(self.sk, 1)[:, : self.k]
        w = self.codes(e).float() * s
        if self.offset is not None:
            o = self.offset[e].float().repeat_interleave(self.sk, 1)[:, : self.k]
            w = w + o
        return w.to(dtype or self.dtype)

    def __getitem__(self, e: int) -> torch.Tensor:  # the grouped path reads ``w[e]``
        return self.expert(e)


@dataclass
class PerExpertWeight:
    """One projection of every expert as per-expert :class:`IntWeight` lists (the CPU form, module docstring):
    ``parts[e]`` is ``[gate, up]`` (``w13``) or ``[down]`` (``w2``); ``linear(e, x)`` runs their kernels."""

    parts: list[list[IntWeight]]
    n: int
    k: int
    dtype: torch.dtype

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.parts), self.n, self.k)

    def linear(self, e: int, x: torch.Tensor) -> torch.Tensor:
        from pagoda.quantization.int_weight import int_weight_linear

        outs = [int_weight_linear(x, w) for w in self.parts[e]]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)

    def expert(self, e: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.cat([w.dequantize(dtype or self.dtype) for w in self.parts[e]])

    def __getitem__(self, e: int) -> torch.Tensor:
        return self.expert(e)


@dataclass
class _Canonical:
    """One staging layer's weight, ``[n, k]``: the fields of :class:`StackedWeight` for one expert."""

    mode: int
    q: torch.Tensor  # [n, k] float8 or uint8 codes (unpacked)
    scale: torch.Tensor  # [ceil(n / sn), ceil(k / sk)]
    offset: torch.Tensor | None
    sn: int
    sk: int

    def form(self) -> tuple[int, int, int | None]:
        return self.mode, self.sn, None if self.sk == self.q.shape[1] else self.sk


def canonical_of(lin: Linear, what: str, describe: str) -> _Canonical:
    """Read a processed staging layer's weight; raise naming the format when experts cannot take it."""
    n, k = lin.out_features, lin.in_features
    iw = getattr(lin, "int_weight", None)
    if isinstance(iw, IntWeight):
        if iw.perm is not None:
            raise ValueError(f"{what}: act-order (desc_act / actorder) expert weights are not supported "
                             f"({describe}); use a checkpoint quantized without act-order.")
        scales, offsets = iw.group_params()
        mode = MODE_INT4 if iw.bits <= 4 else MODE_INT8
        return _Canonical(mode, iw.plain_codes(), scales, offsets, 1, iw.group_size)
    from pagoda.quantization.w8a8 import FP8_DTYPE

    weight = getattr(lin, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dtype == FP8_DTYPE:
        block = getattr(lin.linear_method, "block", None)
        scale_inv = getattr(lin, "weight_scale_inv", None)
        if block is not None and isinstance(scale_inv, torch.Tensor):
            return _Canonical(MODE_FP8, weight, scale_inv.float(), None, int(block[0]), int(block[1]))
        scale = getattr(lin, "weight_scale", None)
        if isinstance(scale, torch.Tensor) and scale.numel() in (1, n):
            return _Canonical(MODE_FP8, weight, scale.float().reshape(-1, 1).expand(n, 1).contiguous(), None, 1, k)
    raise ValueError(f"{what}: experts quantized as {describe} ({type(lin.linear_method).__name__}) are not "
                     f"supported; pagoda runs FP8 (per tensor, channel or block) and GPTQ / AWQ / compressed-tensors "
                     f"integer-weight experts.")


def _form_text(form: tuple[int, int, int | None]) -> str:
    """A stacked form in words, for errors: ``4-bit codes, groups of 32``."""
    mode, sn, sk = form
    if mode == MODE_FP8:
        return f"fp8, blocks of {sn}x{sk}" if sk else "fp8 per output row"
    return f"{'4-bit' if mode == MODE_INT4 else '5-8-bit'} codes, {f'groups of {sk}' if sk else 'one group per row'}"


def _cut(c: _Canonical, dim: int, start: int, size: int, what: str) -> _Canonical:
    """This rank's rows (``dim`` 0) or input columns (``dim`` 1) of ``c``; the cut must fall on scale blocks."""
    full = c.q.shape[dim]
    if size == full:
        return c
    unit = c.sn if dim == 0 else c.sk
    if unit >= full:  # one scale over the whole dim: it stays, and covers this rank's part
        scale, offset = c.scale, c.offset
        sn, sk = (size, c.sk) if dim == 0 else (c.sn, size)
    else:
        if start % unit or size % unit:
            raise ValueError(f"{what}: a tensor-parallel rank's share ({size} of {full}) cuts a quantization "
                             f"{'block' if c.mode == MODE_FP8 else 'group'} of {unit}; use a smaller "
                             f"--tensor-parallel-size.")
        scale = c.scale.narrow(dim, start // unit, size // unit)
        offset = None if c.offset is None else c.offset.narrow(dim, start // unit, size // unit)
        sn, sk = c.sn, c.sk
    return _Canonical(c.mode, c.q.narrow(dim, start, size), scale, offset, sn, sk)


class QuantizedExperts(nn.Module):
    """The quantized weights of one MoE layer's experts (module docstring). ``inter``: this rank's intermediate
    size, starting at ``inter_start`` of the checkpoint's ``full_inter``."""

    cpu_per_expert = True
    """Integer experts on the CPU keep their own IntWeights (module docstring); False stacks them as on CUDA (the
    tests' way to check the stacked forms on the CPU)."""

    def __init__(self, quant_config: QuantizationConfig, prefix: str, num_experts: int, hidden: int, inter: int,
                 full_inter: int, inter_start: int, proj_names: tuple[str, str, str] = ("gate_proj", "up_proj",
                                                                                          "down_proj")) -> None:
        """``prefix``: the checkpoint's ``model.layers.N.mlp.experts``; ``proj_names``: the checkpoint's names of
        gate, up and down (Mixtral: ``w1, w3, w2``), which the quantization config's ignore lists see."""
        super().__init__()
        self.qc = quant_config
        self.prefix = prefix
        self.proj_names = dict(zip(PROJECTIONS, proj_names, strict=True))
        self.num_experts, self.hidden = num_experts, hidden
        self.inter, self.full_inter, self.inter_start = inter, full_inter, inter_start
        self.dtype = torch.get_default_dtype()
        self.device = torch.empty(0).device  # the model's (built under its default device)
        self._staging: dict[tuple[int, str], tuple[Linear, set[str]]] = {}
        self._forms: dict[str, tuple[int, int, int | None]] = {}
        self._weights: dict[str, StackedWeight | PerExpertWeight] = {}
        # The CPU form (module docstring): decided by the first converted staging layer; IntWeights by "<e>_<proj>".
        self._per_expert: bool | None = None
        self.cpu_experts = nn.ModuleDict()
        for name in ("w13", "w2"):
            for part in ("q", "scale", "offset"):
                self.register_buffer(f"{name}_{part}", None)

    # ----------------------------------------------------------- staging
    def method_for(self, expert: int, proj: str) -> Any:
        return self.qc.get_linear_method(self.name(expert, proj))

    def name(self, expert: int, proj: str) -> str:
        return f"{self.prefix}.{expert}.{self.proj_names[proj]}"

    def _stage(self, expert: int, proj: str) -> tuple[Linear, set[str]]:
        key = (expert, proj)
        if key not in self._staging:
            n, k = (self.full_inter, self.hidden) if proj != "down" else (self.hidden, self.full_inter)
            method = self.method_for(expert, proj)
            if method is None:
                raise ValueError(f"{self.name(expert, proj)}: the quantization config ({self.qc.describe()}) "
                                 f"leaves this expert unquantized while others are quantized; pagoda needs every "
                                 f"expert of a layer in one format.")
            prev = torch.get_default_dtype()
            torch.set_default_dtype(self.dtype)
            try:
                with torch.device(self.device):
                    lin = Linear(k, n, bias=False, linear_method=method)
            finally:
                torch.set_default_dtype(prev)
            self._staging[key] = (lin, set())
        return self._staging[key]

    def load(self, expert: int, proj: str, param_name: str, tensor: torch.Tensor) -> list[str]:
        """Copy checkpoint ``tensor`` (``experts.<expert>.<proj>_proj.<param_name>``) into its staging layer; returns
        the loaded keys (``w13_weight#<e>.<0|1>`` / ``w2_weight#<e>``) once that layer is complete and converted."""
        lin, seen = self._stage(expert, proj)
        if not isinstance(getattr(lin, param_name, None), torch.Tensor):
            raise ValueError(f"{param_name!r} is not a tensor of {self.qc.describe()} experts "
                             f"(expected {sorted(self._needed(lin))})")
        lin.load_shard(param_name, tensor, None)
        seen.add(param_name)
        return self._finish(expert, proj) if seen >= self._needed(lin) else []

    @staticmethod
    def _needed(lin: Linear) -> set[str]:
        return {n for n, p in lin.named_parameters(recurse=False) if getattr(p, "required", True)}

    def finish_loading(self) -> list[str]:
        """Convert every staging layer whose required tensors are all in (the rest stay missing); returns keys."""
        keys: list[str] = []
        for expert, proj in list(self._staging):
            lin, seen = self._staging[(expert, proj)]
            if seen >= self._needed(lin):
                keys += self._finish(expert, proj)
        return keys

    def _finish(self, expert: int, proj: str) -> list[str]:
        lin, _ = self._staging.pop((expert, proj))
        lin.linear_method.process_weights_after_loading(lin)
        what = self.name(expert, proj)
        iw = getattr(lin, "int_weight", None)
        if self._per_expert is None:
            self._per_expert = (self.cpu_per_expert and self.device.type == "cpu" and self.inter == self.full_inter
                                and isinstance(iw, IntWeight))
        if self._per_expert:
            if not isinstance(iw, IntWeight):
                canonical_of(lin, what, self.qc.describe())  # raises naming the format if experts cannot take it
                raise ValueError(f"{what}: quantized as {self.qc.describe()} while other experts of this layer "
                                 f"hold integer codes; pagoda needs one format per layer's experts.")
            if iw.perm is not None:
                canonical_of(lin, what, self.qc.describe())  # the act-order refusal
            self.cpu_experts[f"{expert}_{proj}"] = iw
            return [f"w2_weight#{expert}"] if proj == "down" else [f"w13_weight#{expert}.{PROJECTIONS.index(proj)}"]
        c = canonical_of(lin, what, self.qc.describe())
        if proj == "down":
            c = _cut(c, 1, self.inter_start, self.inter, what)
        else:
            c = _cut(c, 0, self.inter_start, self.inter, what)
        self._place(expert, proj, c, what)
        return [f"w2_weight#{expert}"] if proj == "down" else [f"w13_weight#{expert}.{PROJECTIONS.index(proj)}"]

    # ----------------------------------------------------------- stacked storage
    def _place(self, expert: int, proj: str, c: _Canonical, what: str) -> None:
        name = "w2" if proj == "down" else "w13"
        form = c.form()
        if name not in self._forms:
            self._allocate(name, c, what)
            self._forms[name] = form
        elif self._forms[name] != form:
            have = self._forms[name]
            if {have[0], form[0]} == {MODE_INT4, MODE_INT8} and have[1:] == form[1:]:  # 4-bit and 5-8-bit codes
                if have[0] == MODE_INT4:
                    self._widen(name)
            else:
                raise ValueError(f"{what}: quantized as {_form_text(form)}, other experts of this layer (or its "
                                 f"{'up' if proj == 'gate' else 'gate'} projection) as {_form_text(have)}; pagoda "
                                 f"needs one scale layout per layer's experts.")
        q, scale, offset = (getattr(self, f"{name}_{p}") for p in ("q", "scale", "offset"))
        mode = self._forms[name][0]  # the stored form's (a 4-bit part of a widened stack is stored one per byte)
        codes = c.q
        if mode == MODE_INT4:
            codes = (codes[:, 0::2] | (codes[:, 1::2] << 4)).to(torch.uint8)
        elif mode == MODE_INT8:
            codes = codes.to(torch.uint8)
        rows = slice(None)
        srows = slice(None)
        if proj == "up":
            rows, srows = slice(self.inter, None), slice(scale.shape[1] // 2, None)
        elif proj == "gate":
            rows, srows = slice(0, self.inter), slice(0, scale.shape[1] // 2)
        with torch.no_grad():
            q[expert, rows].copy_(codes)
            scale[expert, srows].copy_(c.scale)
            if offset is not None and c.offset is not None:
                offset[expert, srows].copy_(c.offset)

    def _allocate(self, name: str, c: _Canonical, what: str) -> None:
        n, k = c.q.shape
        if name == "w13":
            if c.sn > 1 and n % c.sn:
                raise ValueError(f"{what}: block-quantized gate/up rows ({n}) are not a multiple of the block "
                                 f"({c.sn}); pagoda cannot stack them.")
            n *= 2
        if c.mode == MODE_INT4 and k % 2:
            raise ValueError(f"{what}: 4-bit experts need an even input size, got {k}")
        E = self.num_experts
        qshape = (E, n, k // 2) if c.mode == MODE_INT4 else (E, n, k)
        qdtype = c.q.dtype if c.mode == MODE_FP8 else torch.uint8
        srows = c.scale.shape[0] * (2 if name == "w13" else 1)
        sshape = (E, srows, c.scale.shape[1])
        dev = self.device
        self.register_buffer(f"{name}_q", torch.zeros(qshape, dtype=qdtype, device=dev))
        self.register_buffer(f"{name}_scale", torch.zeros(sshape, dtype=c.scale.dtype, device=dev))
        if c.offset is not None:
            self.register_buffer(f"{name}_offset", torch.zeros(sshape, dtype=c.offset.dtype, device=dev))
        setattr(self, f"_{name}_geom", (n, k, c.sn, c.sk, c.mode))

    def _widen(self, name: str) -> None:
        """Store ``name``'s 4-bit codes one per byte (a layer whose gate and up, or whose experts, mix 4-bit and
        5-8-bit codes of one group size: a GGUF file with Q4_0 gate and Q8_0 up, say). Values are unchanged."""
        q = getattr(self, f"{name}_q")
        n, k, sn, sk, _ = getattr(self, f"_{name}_geom")
        self.register_buffer(f"{name}_q", torch.stack([q & 15, q >> 4], dim=-1).view(q.shape[0], n, k))
        setattr(self, f"_{name}_geom", (n, k, sn, sk, MODE_INT8))
        _, sn_form, sk_form = self._forms[name]
        self._forms[name] = (MODE_INT8, sn_form, sk_form)

    def weight(self, name: str) -> Any:
        """The stacked ``w13`` or ``w2`` (after loading); built once and kept while its buffers stay the same tensors
        (a device move replaces them), so a forward reuses it and its kernels' launch arguments. The CPU form: a
        :class:`PerExpertWeight`."""
        if self._per_expert:  # built once: the IntWeights stay the same modules (a device move is in place)
            if not isinstance(self._weights.get(name), PerExpertWeight):
                projs = ("down",) if name == "w2" else ("gate", "up")
                parts = [[self.cpu_experts[f"{e}_{p}"] for p in projs] for e in range(self.num_experts)]
                n, k = (self.hidden, self.inter) if name == "w2" else (2 * self.inter, self.hidden)
                self._weights[name] = PerExpertWeight(parts, n, k, self.dtype)  # type: ignore[arg-type]
            return self._weights[name]
        q, scale, offset = (getattr(self, f"{name}_{p}") for p in ("q", "scale", "offset"))
        held = self._weights.get(name)
        same = isinstance(held, StackedWeight) and held.q is q and held.scale is scale and held.offset is offset
        if not same:
            n, k, sn, sk, mode = getattr(self, f"_{name}_geom")
            held = self._weights[name] = StackedWeight(mode, q, scale, offset, n, k, sn, sk, self.dtype)
        return held

    def pending(self) -> list[str]:
        """Staging layers still waiting for tensors, with the tensors they lack (for the missing-weights error)."""
        return [f"{self.name(e, p)}.{sorted(self._needed(lin) - seen)}"
                for (e, p), (lin, seen) in self._staging.items()]

    # ----------------------------------------------------------- dummy weights
    def init_dummy(self, generator: torch.Generator) -> list[str]:
        """``--load-format dummy``: one staging layer per projection kind goes through the method (its dummy
        values, processing and checks), then every expert gets random codes of that form: uniform codes,
        scales of about ``0.02 / half the code range``, symmetric offsets. Returns every key."""
        keys: list[str] = []
        for proj in PROJECTIONS:
            lin, _ = self._stage(0, proj)
            with torch.no_grad():
                lin.linear_method.init_dummy(lin, generator)
            self._staging[(0, proj)] = (lin, self._needed(lin))
            keys += self._finish(0, proj)
        if self._per_expert:  # the CPU form: every expert through the method (CPU dummy models are small)
            for e in range(1, self.num_experts):
                for proj in PROJECTIONS:
                    lin, _ = self._stage(e, proj)
                    with torch.no_grad():
                        lin.linear_method.init_dummy(lin, generator)
                    self._staging[(e, proj)] = (lin, self._needed(lin))
                    keys += self._finish(e, proj)
            return keys
        for name in ("w13", "w2"):
            w = self.weight(name)
            with torch.no_grad():
                if w.mode == MODE_FP8:
                    from pagoda.quantization.w8a8 import FP8_MAX

                    codes = torch.empty(w.q.shape, device=w.q.device).uniform_(-FP8_MAX, FP8_MAX, generator=generator)
                    w.q.copy_(codes.to(w.q.dtype))
                    w.scale.fill_(0.02 / FP8_MAX)
                else:
                    w.q.copy_(torch.randint(0, 256, w.q.shape, generator=generator, device=w.q.device))
                    half = 8 if w.mode == MODE_INT4 else 128  # (a byte holds two 4-bit codes or one 8-bit)
                    w.scale.uniform_(0.5, 1.5, generator=generator).mul_(0.02 / half)
                    assert w.offset is not None
                    w.offset.copy_(w.scale * -half)
        for e in range(1, self.num_experts):
            keys += [f"w13_weight#{e}.0", f"w13_weight#{e}.1", f"w2_weight#{e}"]
        return keys

    def extra_repr(self) -> str:
        form = "per-expert CPU int weights" if self._per_expert else f"forms {self._forms}"
        return f"{self.qc.describe()}, {form}"
