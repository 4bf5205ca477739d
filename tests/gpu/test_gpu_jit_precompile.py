"""Start-up Triton compiles side by side (pagoda/worker/jit_precompile.py), on a GPU (skipped without CUDA).

1. A kernel launched in a dry pass neither runs nor compiles; ``compile_all`` then puts it in the kernel's
   in-memory cache, so its real launch compiles nothing and computes the right answer.
2. An engine started in a fresh process with cold caches gives the same greedy tokens with the precompiler on
   (dry pass, then with its manifest) and off; every variant its start-up compiled came from the precompiler;
   the second start takes the activation peak the first measured and gets the same KV cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_models import build_tiny_model  # noqa: E402

if torch.cuda.is_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _twice(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = i < n
        tl.store(y_ptr + i, tl.load(x_ptr + i, mask=m) * 2, mask=m)


def test_dry_pass_then_compile_all_then_launch(tmp_path, monkeypatch):
    monkeypatch.setenv("PAGODA_CACHE", str(tmp_path / "pagoda"))
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    from triton import knobs

    from pagoda.worker import jit_precompile as jp

    x = torch.arange(1000, device="cuda", dtype=torch.float32)
    y = torch.zeros_like(x)
    pc = jp.JitPrecompiler("t" * 32, torch.cuda.current_device(), 4)
    with pc.dry_pass():
        _twice[(8,)](x, y, 1000, BLOCK=128)
    torch.cuda.synchronize()
    assert torch.count_nonzero(y) == 0  # skipped
    assert len(pc.recorded) == 1
    ok, failed, _ = pc.compile_all()
    pc.close()
    assert (ok, failed) == (1, 0)
    calls = []
    saved = knobs.runtime.jit_cache_hook
    knobs.runtime.jit_cache_hook = lambda **kw: calls.append(kw) or False
    try:
        _twice[(8,)](x, y, 1000, BLOCK=128)
    finally:
        knobs.runtime.jit_cache_hook = saved
    torch.cuda.synchronize()
    assert calls == []  # found in memory: nothing compiled at the launch
    torch.testing.assert_close(y, 2 * x)
    pc.save_manifest()
    assert len(jp.read_manifest(jp.manifest_path("t" * 32))[0]) == 1


_SCRIPT = textwrap.dedent("""
    import json, logging, sys
    from pagoda import LLM, SamplingParams
    from pagoda.engine import jit_log
    lines = []
    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())
    logging.getLogger("pagoda").addHandler(Keep())
    logging.getLogger("pagoda").setLevel(logging.INFO)
    jit_log.install()
    llm = LLM(sys.argv[1], dtype="bfloat16", device="cuda", gpu_memory_utilization=0.3, max_num_seqs=32,
              max_num_batched_tokens=512)
    at_ready = jit_log.compiles_so_far()[0]
    outs = llm.generate(["Hello world", "The capital of France is", "1 2 3"],
                        SamplingParams(temperature=0, max_tokens=12, ignore_eos=True), use_tqdm=False)
    pre = [m for m in lines if m.startswith("Compiled or loaded")]
    peak = [m for m in lines if m.startswith("Activation peak")]
    print(json.dumps({"tokens": [o.outputs[0].token_ids for o in outs], "at_ready": at_ready, "pre": pre,
                      "peak": peak, "blocks": llm.llm_engine.core.num_blocks}))
""")


def _run(folder: Path, pagoda_cache: Path, triton_cache: Path, on: bool) -> dict:
    env = dict(os.environ, PAGODA_CACHE=str(pagoda_cache), TRITON_CACHE_DIR=str(triton_cache),
               PAGODA_JIT_PRECOMPILE="1" if on else "0")
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run([sys.executable, "-c", _SCRIPT, str(folder)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_engine_same_tokens_with_and_without_precompile(tmp_path):
    folder = build_tiny_model(tmp_path / "llama", "llama")
    off = _run(folder, tmp_path / "p0", tmp_path / "t0", on=False)
    first = _run(folder, tmp_path / "p1", tmp_path / "t1", on=True)  # cold: dry pass, then compiles
    again = _run(folder, tmp_path / "p1", tmp_path / "t2", on=True)  # manifest, cold Triton cache: no dry pass
    assert first["tokens"] == off["tokens"] == again["tokens"]
    assert off["pre"] == []
    for run in (first, again):
        (line,) = run["pre"]
        n = int(line.split()[3])
        assert n > 0
        # Every compile of the start-up was one of the precompiler's: the captures compiled nothing themselves.
        assert run["at_ready"] == n, (run["at_ready"], line)
    assert "dry pass" in first["pre"][0] and "manifest" in again["pre"][0]
    # The second start took the activation peak the first measured: the same KV budget, up to what the profile
    # run itself left allocated (cuBLAS workspaces, loaded modules).
    assert first["peak"] == [] and len(again["peak"]) == 1
    assert abs(again["blocks"] - first["blocks"]) <= first["blocks"] // 100
