"""Session 51: K-loop instructions per nibble and registers of the one-row 4-bit GEMV with and without the decoder
layer's RMSNorm applied to its x (``w4_norm_in_gemv.diff``, not on main: apply it first). sm_90 SASS compiled on the
CPU by benchmarks/gpu/w4_sass_count.py's helpers; output in ``sass_norm.txt``.

    git apply benchmarks/results/cpu-2026-12-07-session51/w4_norm_in_gemv.diff
    PYTHONPATH=. python benchmarks/results/cpu-2026-12-07-session51/sass_norm.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "gpu"))

import w4_sass_count as w  # noqa: E402

from pagoda.quantization.kernels.triton_w4_gemv import _w4_gemv_kernel  # noqa: E402

# (block N, warps, lift decode, column blocks, tiles in flight): gate_up's one-row rule, then the small class's
for bn, nw, lift, halves, pf in [(128, 4, False, 2, 1), (64, 2, True, 1, 2)]:
    words = 16 * bn // (32 * nw)
    for norm, gated in ((False, False), (True, False), (True, halves == 2)):
        c = dict(GROUP=128, PACK_K=128, BLOCK_M=1, BLOCK_N=bn, SPLIT=True, HAS_BIAS=False, EVEN_N=True, EVEN_M=True,
                 SYM=True, PREFETCH=pf, USE_PDL=True, LIFT_X=lift, HALVES=halves, NORM=norm, HAS_RES=norm,
                 GATED=gated)
        body, usage = w.k_loop(w.compile_sm90(_w4_gemv_kernel, c, nw))
        print(bn, nw, "lift" if lift else "plain", halves, pf, "norm" if norm else "", "gated" if gated else "",
              len(body), f"{len(body) / (8 * words):.2f}/nibble", usage, w.histogram(body, 14))
