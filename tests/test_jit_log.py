"""PAGODA_LOG_JIT_COMPILES: the Triton compile hooks log one line per compile, chain any hooks already set,
and never skip a compile."""

from __future__ import annotations

import logging
import types

import pytest

knobs = pytest.importorskip("triton").knobs


@pytest.fixture
def fresh_hooks(monkeypatch):
    from pagoda.engine import jit_log

    monkeypatch.setattr(knobs.runtime, "jit_cache_hook", None)
    monkeypatch.setattr(knobs.runtime, "jit_post_compile_hook", None)
    monkeypatch.setattr(jit_log, "_state", {"installed": False, "count": 0, "seconds": 0.0})
    return jit_log


def test_compile_hooks_log_and_chain(fresh_hooks, caplog):
    jit_log = fresh_hooks
    seen = []
    knobs.runtime.jit_post_compile_hook = lambda **kw: seen.append(kw["key"])
    assert jit_log.install() and jit_log.install()  # idempotent: hooks chained once

    # Triton's hook arguments: fn is a JitFunctionInfo (module, name, jit_function), compile a dict
    kw = {"key": "k1", "repr": "_my_kernel[num_warps=4](x: *bf16, BLOCK_N: constexpr=64)",
          "fn": types.SimpleNamespace(name="_my_kernel"), "is_manual_warmup": False,
          "already_compiled": False,
          "compile": {"signature": {"x": "*bf16", "n": "i32", "m": "i32", "BLOCK_N": "constexpr", "y": "*fp32"},
                      "constants": {(3,): 64, (2,): 1}, "configs": [{(0,): [["tt.divisibility", 16]],
                                                                     (1,): [["tt.divisibility", 16]]}],
                      "num_warps": 4, "num_stages": 3}}
    with caplog.at_level(logging.INFO, logger="pagoda"):
        assert knobs.runtime.jit_cache_hook(**kw) is False  # never skips the compile
        assert knobs.runtime.jit_post_compile_hook(**kw) is False
    assert seen == ["k1"]
    assert jit_log.compiles_so_far()[0] == 1
    line = caplog.records[-1].getMessage()
    assert "_my_kernel" in line and "#1" in line
    assert "BLOCK_N=64" in line and "m=1" in line and "ints %16: n;" in line and "num_warps=4" in line
    assert "pointers not 16-byte aligned: y;" in line


def test_env_switch(monkeypatch):
    from pagoda import envs

    monkeypatch.setenv("PAGODA_LOG_JIT_COMPILES", "1")
    assert envs.log_jit_compiles()
    monkeypatch.setenv("PAGODA_LOG_JIT_COMPILES", "0")
    assert not envs.log_jit_compiles()
