"""The PDL protocol of every kernel that launches with programmatic dependent launch (pagoda/layers/pdl.py), checked
in the code Triton generates for an sm_90 GPU (compiled on the CPU, no GPU needed): each has one
``griddepcontrol.wait``, signals ``griddepcontrol.launch_dependents`` before it, and neither stores nor runs an
atomic before the wait; the only loads before the wait are a GEMV's weights (``PRE_WAIT_LOADS``).

A GPU run can miss a read-before-wait race (it depends on timing); the generated code cannot hide it. The
compiles run in a child process: the other kernel tests of a CPU-only run put Triton in interpreter mode.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

INT_POINTERS = {"pos_ptr", "slot_ptr", "query_start_loc_ptr", "seq_lens_ptr", "block_tables_ptr", "idx_ptr",
                "nan_ptr", "lock_ptr", "cnt_ptr"}
FLOAT_POINTERS = {"ws_ptr", "val_ptr", "s_ptr"}
FLOATS = {"eps", "q_eps", "k_eps", "k_scale", "v_scale", "scale_log2"}


def _kernels():
    from pagoda.attention import triton_kernels as tk
    from pagoda.layers import argmax_triton, dense_gemv, fused_kernels
    from pagoda.quantization.kernels import triton_fp8_gemv, triton_w4_gemv

    bd = {"BLOCK_D": 128}
    fp8 = {"FP8_MAX": 448.0, "MIN_SCALE": 1e-12}
    return {
        "rms_norm": (fused_kernels._rms_kernel, {"HAS_RES": True, "FP8": False, **fp8, "BLOCK": 4096}, {}, False),
        "rms_norm_fp8": (fused_kernels._rms_kernel, {"HAS_RES": True, "FP8": True, **fp8, "BLOCK": 4096},
                         {"out_ptr": "*fp8e4nv"}, False),
        "silu_mul": (fused_kernels._silu_mul_kernel, {"BLOCK": 1024}, {}, False),
        "silu_mul_fp8": (fused_kernels._silu_mul_fp8_kernel, {**fp8, "BLOCK": 16384}, {"q_ptr": "*fp8e4nv"}, False),
        "rope_kv_write": (fused_kernels._rope_kernel, {"HQ": 32, "HK": 8, "HALF": 64, "BLOCK_SIZE": 16, "BH": 32,
                                                       "BD": 64, "WRITE_KV": True, "FP8": 0, "QK_NORM": True}, {},
                          False),
        "rope_cos_sin": (fused_kernels._rope_cos_sin_kernel, {"HQ": 32, "HK": 8, "HALF": 64, "BH": 32, "BD": 64}, {},
                         False),
        "split_kv_decode": (tk._split_kv_decode_kernel, {"G": 4, "BLOCK_M": 16, "BLOCK_N": 32, "TAIL_N": 32, **bd,
                                                         "BLOCK_SIZE": 16,
                                                         "DOT_DTYPE": triton.language.bfloat16,
                                                         "DOT_PRECISION": "tf32", "SOFTCAP": 0.0, "Q_SCALED": False,
                                                         "FUSED": True, "BLOCK_S": 8},
                            {}, False),
        "split_kv_reduce": (tk._split_kv_reduce_kernel, {"BLOCK_S": 32, **bd, "PER_TOKEN": False}, {}, False),
        "dense_gemv": (dense_gemv._dense_gemv_kernel, {"HAS_BIAS": False, "EVEN_K": True, "BLOCK_M": 1,
                                                       "BLOCK_N": 2, "BLOCK_K": 1024}, {}, True),
        "dense_gemv_rows": (dense_gemv._dense_gemv_rows_kernel, {"HAS_BIAS": False, "EVEN_K": True, "ROWS": 5,
                                                                 "BLOCK_N": 8, "BLOCK_K": 512, "VEC": 8}, {}, True),
        "argmax_partial": (argmax_triton._argmax_partial_kernel, {"BLOCK": 4096}, {}, False),
        "argmax_final": (argmax_triton._argmax_final_kernel, {"BLOCK_P": 32}, {}, False),
        "fp8_gemv": (triton_fp8_gemv._fp8_gemv_kernel, {"SCALE_MODE": 1, "SCALE_BN": 1, "SCALE_BK": 1,
                                                        "HAS_BIAS": False, "BITS": False, "EVEN_K": True,
                                                        "USE_DOT": False, "DOT_F32": False, "PREFETCH": True,
                                                        "BLOCK_M": 1, "BLOCK_N": 16, "BLOCK_K": 256, "SPLIT": True},
                     {"w_ptr": "*fp8e4nv"}, True),
        "fp8_gemv_nopf": (triton_fp8_gemv._fp8_gemv_kernel, {"SCALE_MODE": 1, "SCALE_BN": 1, "SCALE_BK": 1,
                                                             "HAS_BIAS": False, "BITS": False, "EVEN_K": True,
                                                             "USE_DOT": False, "DOT_F32": False, "PREFETCH": False,
                                                             "BLOCK_M": 1, "BLOCK_N": 4, "BLOCK_K": 2048,
                                                             "SPLIT": False},
                          {"w_ptr": "*fp8e4nv"}, True),
        "w4_gemv": (triton_w4_gemv._w4_gemv_kernel, {"GROUP": 128, "PACK_K": 128, "BLOCK_M": 1, "BLOCK_N": 32,
                                                     "SPLIT": True, "HAS_BIAS": False, "EVEN_N": True,
                                                     "EVEN_M": True, "SYM": True, "PREFETCH": 1, "LIFT_X": False,
                                                     "HALVES": 1},
                    {"qw_ptr": "*i32", "magic": "i32"}, True),
        "w4_gemv_lift_halves": (triton_w4_gemv._w4_gemv_kernel, {"GROUP": 128, "PACK_K": 128, "BLOCK_M": 1,
                                                                 "BLOCK_N": 64, "SPLIT": True, "HAS_BIAS": False,
                                                                 "EVEN_N": True, "EVEN_M": True, "SYM": True,
                                                                 "PREFETCH": 2, "LIFT_X": True, "HALVES": 2},
                                {"qw_ptr": "*i32", "magic": "i32"}, True),
    }


def _signature(fn, constexprs: dict, overrides: dict) -> dict[str, str]:
    sig = {}
    for p in fn.params:
        name = p.name
        if p.is_constexpr:
            sig[name] = "constexpr"
        elif name in overrides:
            sig[name] = overrides[name]
        elif name.endswith("_ptr"):
            sig[name] = "*i32" if name in INT_POINTERS else "*fp32" if name in FLOAT_POINTERS else "*bf16"
        else:
            sig[name] = "fp32" if name in FLOATS else "i32"
    return sig


def _ptx(fn, constexprs: dict, overrides: dict) -> list[str]:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    defaults = {p.name: p.default for p in fn.params if p.is_constexpr and p.has_default}  # as a launch binds them
    consts = {**defaults, **constexprs, "USE_PDL": True}
    src = ASTSource(fn=fn, signature=_signature(fn, consts, overrides), constexprs=consts)
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "launch_pdl": True})
    return kernel.asm["ptx"].splitlines()


NAMES = ["rms_norm", "rms_norm_fp8", "silu_mul", "silu_mul_fp8", "rope_kv_write", "rope_cos_sin", "split_kv_decode",
         "split_kv_reduce", "dense_gemv", "dense_gemv_rows", "argmax_partial", "argmax_final", "fp8_gemv",
         "fp8_gemv_nopf", "w4_gemv", "w4_gemv_lift_halves"]


@pytest.fixture(scope="module")
def ptx(tmp_path_factory) -> dict[str, list[str]]:
    out = tmp_path_factory.mktemp("pdl_ptx") / "ptx.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
    subprocess.run([sys.executable, __file__, str(out)], env=env, check=True, timeout=600)
    return json.loads(out.read_text())


def test_every_pdl_kernel_is_checked():
    """Every Triton kernel of pagoda that takes ``USE_PDL`` (so may launch with PDL) is one of the checked ones."""
    import importlib
    import inspect
    import pkgutil

    import pagoda

    checked = {fn.__name__ if not hasattr(fn, "fn") else fn.fn.__name__ for fn, *_ in _kernels().values()}
    found = set()
    for mod in pkgutil.walk_packages(pagoda.__path__, "pagoda."):
        kernel_module = "triton" in mod.name or "kernel" in mod.name or mod.name.endswith("dense_gemv")
        if not kernel_module or mod.name == "pagoda.layers.pdl":
            continue
        for obj in vars(importlib.import_module(mod.name)).values():
            py = getattr(obj, "fn", None)
            if callable(py) and "USE_PDL" in inspect.signature(py).parameters and not py.__name__.startswith("pdl_"):
                found.add(py.__name__)
    assert list(_kernels()) == NAMES
    assert found == checked, f"PDL kernels not checked here: {sorted(found - checked)}"


@pytest.mark.parametrize("name", NAMES)
def test_no_dependent_access_before_the_wait(ptx, name):
    pre_wait_loads = _kernels()[name][3]
    lines = ptx[name]
    waits = [i for i, line in enumerate(lines) if "griddepcontrol.wait" in line]
    signals = [i for i, line in enumerate(lines) if "griddepcontrol.launch_dependents" in line]
    assert len(waits) == 1, f"{name}: {len(waits)} griddepcontrol.wait"
    assert signals and signals[0] < waits[0], f"{name}: no launch_dependents before the wait"
    before = lines[: waits[0]]
    assert not [line for line in before if re.search(r"\b(st|red|atom)\.global", line)], f"{name}: store before wait"
    loads = [line for line in before if re.search(r"\b(ld\.global|cp\.async)", line)]
    if pre_wait_loads:
        assert loads, f"{name}: its first weight tile is no longer loaded ahead of the wait"
    else:
        assert not loads, f"{name}: a load before the wait: {loads[0].strip()}"


if __name__ == "__main__":  # the child process: every kernel's PTX, as JSON, into argv[1]
    Path(sys.argv[1]).write_text(json.dumps({n: _ptx(fn, c, o) for n, (fn, c, o, _) in _kernels().items()}))
