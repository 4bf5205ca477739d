"""Programmatic dependent launch (:mod:`pagoda.layers.pdl`) on a GPU that has it (compute capability ≥ 9.0;
skipped elsewhere): a decode chain launched with PDL gives bitwise the tokens and logprobs of plain launches,
under CUDA graphs and eagerly, at one request (the GEMV path) and at several.

PDL changes when a kernel starts, never its arithmetic, so any difference is a kernel that read its
predecessor's output (or wrote a buffer still being read) before its ``griddepcontrol.wait``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
                                reason="needs a CUDA GPU of compute capability 9.0 or later")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@pytest.mark.parametrize("eager", [False, True])
def test_pdl_matches_plain_launches(tmp_path, monkeypatch, eager):
    from engine_checks import PROMPTS, greedy
    from tiny_models import build_tiny_model

    from pagoda import LLM
    from pagoda.layers import dense_gemv, pdl

    folder = build_tiny_model(tmp_path / "m", "smollm_shape")
    gemv_calls = {"n": 0}
    orig = dense_gemv.dense_gemv

    def counting(*args, **kwargs):
        gemv_calls["n"] += 1
        return orig(*args, **kwargs)

    monkeypatch.setattr(dense_gemv, "dense_gemv", counting)
    runs = {}
    for on in (True, False):
        monkeypatch.setattr(pdl, "ENABLED", on)
        assert pdl.use_pdl(torch.device("cuda")) is on
        llm = LLM(str(folder), dtype="bfloat16", device="cuda", enforce_eager=eager, kv_cache_memory_bytes=2**26)
        one = llm.generate(PROMPTS[6:7], greedy(48, logprobs=3), use_tqdm=False)
        many = llm.generate(PROMPTS, greedy(logprobs=3), use_tqdm=False)
        llm.shutdown()
        runs[on] = [(o.outputs[0].token_ids, [sorted(d.items()) for d in o.outputs[0].logprobs]) for o in one + many]
    assert gemv_calls["n"] > 0, "no one-row linear took the GEMV: the test model's shapes left GEMV_TABLE"
    for (tok_on, lp_on), (tok_off, lp_off) in zip(runs[True], runs[False], strict=True):
        assert tok_on == tok_off
        assert [[(t, lp.logprob) for t, lp in d] for d in lp_on] == [[(t, lp.logprob) for t, lp in d] for d in lp_off]
