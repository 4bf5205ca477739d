"""The start-up precompiler's host side (pagoda/worker/jit_precompile.py): recording on the dry-pass thread only,
Triton's previous hook kept for other threads, the manifest and its key, finding kernels by name. Compiling and
preloading need a GPU: tests/gpu/test_gpu_jit_precompile.py."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from pagoda.worker import jit_precompile as jp


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PAGODA_CACHE", str(tmp_path))
    return tmp_path


def _fake_hook_kwargs(kernel, spec: str) -> dict:
    """What Triton's ``_call_hook`` hands a ``jit_cache_hook`` (the fields the recorder reads)."""
    info = type("JitFunctionInfo", (), {"module": kernel.fn.__module__, "name": kernel.fn.__qualname__,
                                        "jit_function": kernel})()
    return {"key": "k", "repr": "r", "fn": info, "compile": {"specialization_data": spec},
            "is_manual_warmup": False, "already_compiled": False}


def test_dry_pass_records_on_its_thread_and_chains_the_previous_hook_elsewhere(cache):
    from triton import knobs

    from pagoda.layers.fused_kernels import _rms_kernel

    seen: list[str] = []

    def prev(**kw):
        seen.append(kw["compile"]["specialization_data"])
        return False

    rt = knobs.runtime
    saved = rt.jit_cache_hook
    rt.jit_cache_hook = prev
    try:
        pc = jp.JitPrecompiler("k" * 32, 0, 2)
        with pc.dry_pass():
            assert rt.jit_cache_hook(**_fake_hook_kwargs(_rms_kernel, '{"a": 1}')) is True  # skipped
            answers = []
            t = threading.Thread(target=lambda: answers.append(rt.jit_cache_hook(
                **_fake_hook_kwargs(_rms_kernel, '{"b": 2}'))))
            t.start()
            t.join()
            assert answers == [False]  # another thread (a preload) is not skipped
        assert rt.jit_cache_hook is prev  # restored
        assert seen == ['{"b": 2}']
        assert list(pc.recorded) == ['{"a": 1}']
        variant, kernel = pc.recorded['{"a": 1}']
        assert kernel is _rms_kernel
        assert (variant.module, variant.qualname) == ("pagoda.layers.fused_kernels", "_rms_kernel")
    finally:
        rt.jit_cache_hook = saved


def test_dry_pass_restores_the_hook_after_an_error(cache):
    from triton import knobs

    saved = knobs.runtime.jit_cache_hook
    pc = jp.JitPrecompiler("e" * 32, 0, 1)
    with pytest.raises(RuntimeError), pc.dry_pass():
        raise RuntimeError("boom")
    assert knobs.runtime.jit_cache_hook is saved


def test_manifest_round_trip_and_save_only_adds_new_variants(cache):
    key = "m" * 32
    pc = jp.JitPrecompiler(key, 0, 1)
    assert pc.needs_dry_pass and pc.manifest == []
    from pagoda.layers.fused_kernels import _rms_kernel

    pc._record(_fake_hook_kwargs(_rms_kernel, "spec-1"))
    pc._record(_fake_hook_kwargs(_rms_kernel, "spec-1"))  # the same variant twice: one entry
    pc.save_manifest()
    again = jp.JitPrecompiler(key, 0, 1)
    assert not again.needs_dry_pass
    assert again.manifest == [jp.Variant("pagoda.layers.fused_kernels", "_rms_kernel", "spec-1")]
    again._record(_fake_hook_kwargs(_rms_kernel, "spec-1"))
    again._record(_fake_hook_kwargs(_rms_kernel, "spec-2"))
    again.save_manifest()
    variants, peak = jp.read_manifest(jp.manifest_path(key))
    assert [v.spec for v in variants] == ["spec-1", "spec-2"] and peak is None
    third = jp.JitPrecompiler(key, 0, 1)
    assert third.activation_peak is None
    third.activation_peak = 123 * 2**20
    third.save_manifest()  # no new variant, but a measured peak: written
    assert jp.read_manifest(jp.manifest_path(key)) == (variants, 123 * 2**20)
    assert jp.JitPrecompiler(key, 0, 1).activation_peak == 123 * 2**20


def test_unreadable_manifest_is_empty(cache):
    path = jp.manifest_path("u" * 32)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert jp.read_manifest(path) == ([], None)
    path.write_text('{"variants": [["only-two", "fields"]]}')
    assert jp.read_manifest(path) == ([], None)
    path.write_text('[1, 2]')
    assert jp.read_manifest(path) == ([], None)
    path.write_text('{"variants": [], "activation_peak": -5}')
    assert jp.read_manifest(path) == ([], None)


class _FakeKernel:
    def preload(self, spec):
        return None


class _Wrapper:  # like @triton.heuristics: the module attribute wraps the JITFunction as .fn
    def __init__(self, fn):
        self.fn = fn


FAKE_KERNEL = _FakeKernel()
WRAPPED_KERNEL = _Wrapper(_Wrapper(FAKE_KERNEL))


def test_find_kernel_by_name():
    assert jp.find_kernel(__name__, "FAKE_KERNEL") is FAKE_KERNEL
    assert jp.find_kernel(__name__, "WRAPPED_KERNEL") is FAKE_KERNEL
    assert jp.find_kernel(__name__, "no_such_kernel") is None
    assert jp.find_kernel("pagoda.no_such_module", "k") is None
    assert jp.find_kernel("pagoda.envs", "cache_root") is None  # not a Triton kernel


def test_a_variant_that_cannot_be_found_or_preloaded_is_a_failure_not_an_error():
    assert jp.JitPrecompiler._load(jp.Variant("pagoda.no_such_module", "k", "{}"), None) is False

    class Refuses:
        def preload(self, spec):
            raise RuntimeError("bad spec")

    assert jp.JitPrecompiler._load(jp.Variant("m", "q", "{}"), Refuses()) is False


def test_config_key_follows_the_config(tiny):
    from pagoda.config import EngineArgs

    cfg = EngineArgs(model=str(tiny.path("llama")), device="cpu").create_config()
    k1 = jp.config_key(cfg, "NVIDIA H200")
    assert k1 == jp.config_key(cfg, "NVIDIA H200")
    assert k1 != jp.config_key(cfg, "NVIDIA H100 80GB HBM3")
    assert k1 != jp.config_key(dataclasses.replace(cfg, max_num_seqs=cfg.max_num_seqs + 1), "NVIDIA H200")
    assert k1 != jp.config_key(dataclasses.replace(cfg, gpu_memory_utilization=0.5), "NVIDIA H200")


@pytest.mark.parametrize("env", ["PAGODA_PDL", "PAGODA_MIXED_GRAPHS", "PAGODA_CHUNK_GRAPHS"])
def test_config_key_follows_the_launch_and_capture_switches(tiny, monkeypatch, env):
    """PDL is a compile option of every decode kernel, the graph switches change what is captured: a start with
    another setting must not preload (or skip the profile run by) the other setting's manifest."""
    from pagoda.config import EngineArgs

    cfg = EngineArgs(model=str(tiny.path("llama")), device="cpu").create_config()
    k1 = jp.config_key(cfg, "NVIDIA H200")
    monkeypatch.setenv(env, "0")
    assert jp.config_key(cfg, "NVIDIA H200") != k1


def test_module_switches_get_their_own_manifest(tiny, monkeypatch):
    """benchmarks/gpu/with_module_values.py's switches join the key: an A/B run neither preloads nor overwrites the
    other side's manifest (session 33: a switched run compiled its own attention variants inside the timed run)."""
    import sys
    from pathlib import Path

    from pagoda.config import EngineArgs

    cfg = EngineArgs(model=str(tiny.path("llama")), device="cpu").create_config()
    k1 = jp.config_key(cfg, "NVIDIA H200")
    monkeypatch.setattr(jp, "KEY_EXTRAS", [])
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"))
    import with_module_values

    monkeypatch.setattr(sys, "argv", ["x"])  # restored after the test; the script sets it for --script runs
    with_module_values.main(["pagoda.worker.jit_precompile.MANIFEST_DIR=" + repr(jp.MANIFEST_DIR), "--", "--script",
                             str(Path(__file__).resolve().parent / "graph_steps.py")])
    assert jp.KEY_EXTRAS and jp.config_key(cfg, "NVIDIA H200") != k1


def test_source_fingerprint_follows_pagoda_files(tmp_path, monkeypatch):
    import pagoda

    fake = tmp_path / "pagoda"
    (fake / "sub").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "sub" / "m.py").write_text("x = 1\n")
    monkeypatch.setattr(pagoda, "__file__", str(fake / "__init__.py"))
    a = jp.source_fingerprint()
    assert a == jp.source_fingerprint()
    (fake / "sub" / "m.py").write_text("x = 22\n")
    assert jp.source_fingerprint() != a


def test_switched_off_or_interpreted_or_on_cpu(monkeypatch, tiny):
    import torch

    from pagoda.config import EngineArgs

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("PAGODA_JIT_PRECOMPILE", "0")
    assert not jp.supported()
    monkeypatch.setenv("PAGODA_JIT_PRECOMPILE", "1")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not jp.supported()
    cfg = EngineArgs(model=str(tiny.path("llama")), device="cpu").create_config()
    assert jp.JitPrecompiler.for_engine(cfg, torch.device("cpu")) is None


class _FakeJit:
    """The parts of a JITFunction the dry pass touches: its function and its per-device caches."""

    def __init__(self):
        def fake_kernel():
            pass

        self.fn = fake_kernel
        self.device_caches = {0: ({}, {}, None, None, None)}
        self.preloaded = []

    def preload(self, spec):
        self.preloaded.append(spec)
        return None  # refused


def test_dry_pass_stand_ins_make_repeat_launches_cheap_and_are_taken_out(cache):
    from triton import knobs

    kernel = _FakeJit()
    cache_dict = kernel.device_caches[0][0]
    real = object()
    cache_dict["already-real"] = real
    pc = jp.JitPrecompiler("s" * 32, 0, 2)
    saved = knobs.runtime.jit_cache_hook
    with pc.dry_pass():
        kw = _fake_hook_kwargs(kernel, "spec-a")
        kw["key"], kw["compile"]["device"] = "key-a", 0
        assert knobs.runtime.jit_cache_hook(**kw) is True
        assert cache_dict["key-a"] is jp._SKIPPED  # the next launch of key-a finds the stand-in, a no-op
        jp._SKIPPED.run(1, 1, 1, None, None, None, None)
        assert jp._SKIPPED.launch_metadata((1,), None) is None
        kw2 = _fake_hook_kwargs(kernel, "spec-b")
        kw2["key"], kw2["compile"]["device"] = "already-real", 0
        knobs.runtime.jit_cache_hook(**kw2)
    assert knobs.runtime.jit_cache_hook is saved
    assert "key-a" not in cache_dict  # stand-ins never outlive the dry pass
    assert cache_dict["already-real"] is real  # a real kernel is never taken out
    assert set(pc.recorded) == {"spec-a", "spec-b"}
    ok, failed, _ = pc.compile_all()  # the fake cannot compile ahead nor preload: failures, not errors
    pc.close()
    assert (ok, failed) == (0, 2)
    assert sorted(kernel.preloaded) == ["spec-a", "spec-b"]


def test_a_capture_in_a_dry_pass_runs_its_body_once_and_makes_no_graph(cache):
    from pagoda.worker.graph_capture import capture_graph

    calls = []
    pc = jp.JitPrecompiler("g" * 32, 0, 1)
    assert not jp.in_dry_pass()
    with pc.dry_pass():
        assert jp.in_dry_pass()
        seen_elsewhere = []
        t = threading.Thread(target=lambda: seen_elsewhere.append(jp.in_dry_pass()))
        t.start()
        t.join()
        assert seen_elsewhere == [False]  # only the thread that runs the pass
        assert capture_graph(lambda: calls.append("body"), None) is None
    assert calls == ["body"]
    assert not jp.in_dry_pass()
    with pytest.raises(RuntimeError), pc.dry_pass():
        raise RuntimeError("boom")
    assert not jp.in_dry_pass()


def _kernel_body(x_ptr):
    pass


def test_variants_compiled_before_are_hidden_during_a_dry_pass(cache, monkeypatch):
    """A variant this process compiled earlier (an earlier engine, a kernel called directly) would be a cache hit in
    the dry pass and launch for real on the garbage of skipped kernels (seen on the H200: an earlier LLM's MoE
    kernels then faulted the context). The pass hides such variants and puts them back after."""
    import sys
    import types

    from triton.runtime.jit import JITFunction

    kernel = JITFunction(_kernel_body)  # a compiled kernel of a pagoda module (the suite may run interpreted)
    compiled = {"key-earlier": object()}
    kernel.device_caches = {0: (compiled, None, None, None, None)}
    module = types.ModuleType("pagoda._dry_pass_kernels")
    module.kernel = types.SimpleNamespace(fn=kernel)  # as an autotuner wraps it
    monkeypatch.setitem(sys.modules, module.__name__, module)
    earlier = compiled["key-earlier"]
    pc = jp.JitPrecompiler("h" * 32, 0, 1)
    preloaded = object()
    with pc.dry_pass():
        assert compiled == {}  # every launch of this kernel now misses: the hook skips it
        compiled["key-new"] = preloaded  # e.g. a preload finished meanwhile
    assert compiled == {"key-earlier": earlier, "key-new": preloaded}  # put back, and what came meanwhile kept
    with pytest.raises(RuntimeError), pc.dry_pass():
        raise RuntimeError("boom")
    assert compiled["key-earlier"] is earlier  # put back after an error too


def test_an_object_whose_attribute_lookup_raises_is_skipped(cache, monkeypatch):
    """Finding the kernels walks every attribute of pagoda's modules; one whose lookup raises is no kernel."""
    import sys
    import types

    class Odd:
        def __getattr__(self, name):
            raise RuntimeError(f"no {name} here")

    module = types.ModuleType("pagoda._odd_attributes")
    module.odd = Odd()
    monkeypatch.setitem(sys.modules, module.__name__, module)
    assert isinstance(jp._kernel_caches(), list)
    with jp.JitPrecompiler("o" * 32, 0, 1).dry_pass():
        pass
