"""GPU sweep: the unified attention kernel on decode rows over an FP8 KV cache against a bf16 one (issue 12).

Why: at 256 decode rows the kernel took 6.06 ms per step over an FP8 cache and 5.08 ms over a bf16 cache
(RESULTS.md, session 21): half the bytes, more time. Which part costs: the byte -> bf16 conversion before each
``tl.dot`` (``.to(DOT_DTYPE)``), the tile shape, or neither? Cases (cache dtype / query dtype / keys per tile):

* ``bf16/bf16/64``: the bf16 cache, as served (the time to beat);
* ``fp8/bf16/64``: the FP8 cache as served (since session 22: fp16 dots on the bf16 query times 2^-4, ``Q_SCALED``;
  before, e4m3 -> bf16 conversions and bf16 dots);
* ``fp8/bf16/32`` and ``fp8/bf16/128``: other tile widths;
* ``fp8/fp16/64``: the query in fp16, so the dots run in fp16 without the 2^-4 scaling (a probe: an fp16 query can
  overflow);
* ``fp16/fp16/64``: an fp16 cache, the reference for that probe.

``--probe`` (session 22) adds variants that change how the served kernel is built, by patching the launcher here:
``+bf16dot`` (the old e4m3 -> bf16 conversions and bf16 dots), ``+nonorm`` (fp16 dots, the bf16 query converted
without the constant 2^-4 scaling: overflows past 65,504, a probe only), ``+s3`` (3 pipeline stages instead of 2),
``+w2`` / ``+w8`` (2 / 8 warps instead of 4), ``+r96`` (at most 96 registers a thread).

Shapes: Llama-3-8B attention (32 query heads, 8 KV heads, head dim 128), block 16, 256 requests of one query row
each at 540 and 2,000 keys; 8 layers' caches (no L2 reuse between calls), one call per layer timed inside a CUDA graph
(``timing.graph_median_ms``), per call; each FP8 case checked against ``fp8/bf16/64`` (relative error, reported) and
the bytes floor printed (K and V bytes read once at the measured copy bandwidth, 4.26 TB/s by default).

Usage (GPU machine, repo root): ``python benchmarks/gpu/fp8_attention_sweep.py [--bandwidth-gbs 4260]
[--served-only | --probe | --layouts | --warps]`` (``--served-only``: the first two cases; ``--layouts``: the caches
stored head-major per block, ``@hm``, against the served layout (session 33's call 1 also ran a key-major V, since
removed: RESULTS.md); ``--warps``: programs of 1 and 2 warps against the served 4); ``--keys 512,540,...``: those
context lengths instead of 540 and 2,000; ``--decode-kernel``: each cache through the unified kernel and through
the decode kernel with one split (session 42's ``UNSPLIT_DECODE_KERNEL``);
``--smoke``: CPU, Triton interpreter, one tiny case (checks the script runs).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import torch  # noqa: E402

from pagoda.attention import triton_kernels as tk  # noqa: E402

DEV = torch.device("cpu" if SMOKE else "cuda")
SHAPE = (4, 2, 32) if SMOKE else (32, 8, 128)  # query heads, KV heads, head dim
CASES = [(2, 40)] if SMOKE else [(256, 540), (256, 2000)]  # (requests, keys)
if "--keys" in sys.argv and not SMOKE:  # other lengths, e.g. ``--keys 512,540``: whole last tiles against a partial
    CASES = [(256, int(k)) for k in sys.argv[sys.argv.index("--keys") + 1].split(",")]
LAYERS = 1 if SMOKE else 8
BLOCK = 16
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp8": torch.float8_e4m3fn}
VARIANTS = [("bf16", "bf16", 64), ("fp8", "bf16", 64), ("fp8", "bf16", 32), ("fp8", "bf16", 128),
            ("fp8", "fp16", 64), ("fp16", "fp16", 64)]
if "--served-only" in sys.argv:  # the two caches as served: the FP8 one's time against the bf16 one's
    VARIANTS = VARIANTS[:2]
if "--decode-kernel" in sys.argv:  # session 42: the unified kernel against the decode kernel with one split (a
    # negative tile width: ``split_kv_decode(num_splits=1)``, ``UNSPLIT_DECODE_KERNEL``), both caches
    VARIANTS = [("bf16", "bf16", 64), ("bf16", "bf16", -64), ("fp8", "bf16", 64), ("fp8", "bf16", -64)]
if "--probe" in sys.argv:
    VARIANTS = [*VARIANTS[:2], ("fp8", "bf16+bf16dot", 64), ("fp8", "bf16+nonorm", 64), ("fp8", "bf16", 128),
                ("fp8", "bf16+s3", 64), ("fp8", "bf16+w8", 64), ("fp8", "bf16+r96", 64), ("fp8", "bf16+r96", 128)]
if "--warps" in sys.argv:  # fewer warps a program (session 33): fewer cross-warp softmax reductions, more programs
    VARIANTS = [("bf16", "bf16", 64), ("bf16", "bf16+w2", 64), ("bf16", "bf16+w1", 64), ("fp8", "bf16", 64),
                ("fp8", "bf16+w2", 64), ("fp8", "bf16+w1", 64), ("fp8@hm", "bf16+w2", 64), ("fp8", "bf16+w2", 32),
                ("fp8", "bf16+w1", 32)]
if "--layouts" in sys.argv:  # the cache's memory layout (session 33): ``@hm`` head-major blocks
    VARIANTS = [("bf16", "bf16", 64), ("bf16@hm", "bf16", 64), ("fp8", "bf16", 64), ("fp8@hm", "bf16", 64),
                ("fp8@hm", "bf16", 32), ("fp8@hm", "bf16", 128)]
PROBING = any(f in sys.argv for f in ("--probe", "--layouts", "--warps")) and not SMOKE  # report compiles
if SMOKE:  # the interpreter runs bf16 queries in fp32 anyway; keep it to one conversion path and two tile widths
    VARIANTS = [("fp8", "bf16", 16), ("fp8", "bf16", 32), ("bf16", "bf16", 16), ("fp8@hm", "bf16", 16),
                ("bf16@hm", "bf16", 32), ("fp8", "bf16", -16)]


def make_layer(b: int, ctx: int, hq: int, hkv: int, d: int, gen: torch.Generator) -> dict:
    nb = -(-ctx // BLOCK)
    k = torch.randn(b * nb + 1, BLOCK, hkv, d, generator=gen).to(DEV)
    v = torch.randn(b * nb + 1, BLOCK, hkv, d, generator=gen).to(DEV)
    return {
        "k": k, "v": v, "q": torch.randn(b, hq, d, generator=gen).to(DEV),
        "bt": (torch.randperm(b * nb, generator=gen) + 1).view(b, nb).to(torch.int32).to(DEV),
        "qsl": torch.arange(b + 1, dtype=torch.int32, device=DEV),
        "lens": torch.full((b,), ctx, dtype=torch.int32, device=DEV),
    }


def laid_out(x: torch.Tensor, layout: str) -> torch.Tensor:
    """``x`` ([blocks, block, heads, dim]) stored as ``layout`` says, the same logical tensor: "" as is, "hm" each
    block head-major ([blocks, heads, block, dim] in memory: ``kv_cache``'s ``NHD_BY_HEAD``)."""
    if layout == "hm":
        return x.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    return x


def cast(layers: list[dict], cache: str, query: str) -> list[tuple]:
    qt = DTYPES[query.split("+")[0]]
    dtype, _, layout = cache.partition("@")
    ct = DTYPES[dtype]
    return [(lay["q"].to(qt), laid_out(lay["k"].to(ct), layout), laid_out(lay["v"].to(ct), layout),
             lay["qsl"], lay["lens"], lay["bt"]) for lay in layers]


class _Launch:
    """``kernel[grid](...)`` with some launch options replaced (a probe's ``+s3`` / ``+w2``)."""

    def __init__(self, kernel, **options) -> None:
        self.kernel, self.options = kernel, options

    def __getitem__(self, grid):
        launch = self.kernel[grid]
        return lambda *args, **kw: launch(*args, **{**kw, **self.options})


@contextlib.contextmanager
def probe(query: str, cache: str = "fp8") -> Iterator[None]:
    """The served kernel, changed as the query label's ``+…`` says (nothing for a plain label)."""
    import triton.language as tl

    saved = tk._dot_config, tk._unified_attention_kernel
    tag = query.partition("+")[2]
    if tag == "bf16dot":
        tk._dot_config = lambda *a: (tl.bfloat16, "tf32", False)
    elif tag == "nonorm":
        tk._dot_config = lambda *a: (tl.float16, "tf32", False)
    elif tag in ("s3", "w1", "w2", "w8", "r96", "r128"):
        option = {"s3": {"num_stages": 3}, "w1": {"num_warps": 1}, "w2": {"num_warps": 2}, "w8": {"num_warps": 8},
                  "r96": {"maxnreg": 96}, "r128": {"maxnreg": 128}}[tag]
        tk._unified_attention_kernel = _Launch(saved[1], **option)
        # the wrapper hides the JITFunction from interpreted(): the dot config of the served kernel, computed here
        dot = saved[0](DTYPES[query.split("+")[0]], DTYPES[cache.partition("@")[0]])
        tk._dot_config = lambda *a: dot
    try:
        yield
    finally:
        tk._dot_config, tk._unified_attention_kernel = saved


def run(layers: list[tuple], block_n: int) -> list[torch.Tensor]:
    """Each layer's attention: the unified kernel with ``block_n``-key tiles, or (``block_n`` < 0) the decode kernel
    with one split and ``-block_n``-key tiles."""
    if block_n < 0:
        return [tk.split_kv_decode(q, k, v, qsl, lens, bt, q.shape[-1] ** -0.5, 1, num_real_tokens=q.shape[0],
                                   block_n=-block_n) for q, k, v, qsl, lens, bt in layers]
    return [tk.unified_attention(q, k, v, qsl, lens, bt, 1, q.shape[-1] ** -0.5, num_real_tokens=q.shape[0],
                                 block_n=block_n) for q, k, v, qsl, lens, bt in layers]


def time_us(layers: list[tuple], block_n: int) -> float:
    if SMOKE:
        return 1.0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from timing import graph_median_ms  # benchmarks/gpu/timing.py, beside this script

    return graph_median_ms(lambda: run(layers, block_n)) * 1e3 / len(layers)


def compiled_kernels() -> set[str]:
    """Registers, spills and shared memory of each compile of the unified kernel so far (``--probe``)."""
    try:
        return {f"regs {k.n_regs}, spills {k.n_spills}, shared {k.metadata.shared} B"
                for cache in tk._unified_attention_kernel.device_caches.values() for k in cache[0].values()}
    except Exception as e:  # Triton's cache layout is not an API
        return {f"(not available: {e!r})"}


def main() -> None:
    bw = 4260.0
    if "--bandwidth-gbs" in sys.argv:
        bw = float(sys.argv[sys.argv.index("--bandwidth-gbs") + 1])
    hq, hkv, d = SHAPE
    gen = torch.Generator().manual_seed(0)
    for b, ctx in CASES:
        layers = [make_layer(b, ctx, hq, hkv, d, gen) for _ in range(LAYERS)]
        ref_case = cast(layers[:1], "fp8", "bf16")
        ref = run(ref_case, VARIANTS[0][2] if SMOKE else 64)[0].float()
        cells = []
        for cache, query, block_n in VARIANTS:
            case = cast(layers, cache, query)
            seen = compiled_kernels() if PROBING else set()
            with probe(query, cache):
                out = run(case[:1], block_n)[0].float()
                t = time_us(case, block_n)
            new = compiled_kernels() - seen if PROBING else set()
            err = ((out - ref).norm() / ref.norm()).item()
            nbytes = b * ctx * hkv * d * 2 * DTYPES[cache.partition("@")[0]].itemsize
            floor_us = nbytes / (bw * 1e3)
            kernel = f"decode1/{-block_n}" if block_n < 0 else str(block_n)
            cells.append(f"{cache}/{query}/{kernel}: {t:7.1f} us ({t / floor_us:4.2f}x floor {floor_us:.1f}; "
                         f"err vs fp8/bf16 {err:.1e})" + "".join(f"; new compile: {c}" for c in sorted(new)))
        print(f"batch {b}, {ctx} keys:\n  " + "\n  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
