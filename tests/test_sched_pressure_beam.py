"""Beam search (``LLM.beam_search``) under KV-cache pressure, and its ``concurrency_limit`` argument.

Each beam-search step runs one engine request per live beam, which finds the prompt and the beam's earlier
tokens in the prefix cache; with a KV cache smaller than the beams need together, those blocks are evicted,
stored in the host KV tier and loaded back (or recomputed), and the beams must not change.
``concurrency_limit`` is an integer of at least 1 or None (vLLM's ``range(0, n, limit)`` refuses 0 too): any
other value is a ValueError naming it, never a silent "no limit".
"""

from __future__ import annotations

import pytest
from engine_checks import PROMPTS, assert_engine_clean
from test_host_tier import bytes_per_block

from pagoda import BeamSearchParams

BEAM_PROMPTS = [PROMPTS[6], PROMPTS[7], PROMPTS[2]]


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2"])
def test_beam_search_concurrency_limit_must_be_a_positive_integer(tiny, bad):
    llm = tiny.llm("llama")
    for use_tqdm in (False, True):  # the progress bar's step count read it before it was checked
        with pytest.raises(ValueError, match="concurrency_limit") as e:
            llm.beam_search(BEAM_PROMPTS, BeamSearchParams(beam_width=2, max_tokens=3), concurrency_limit=bad,
                            use_tqdm=use_tqdm)
        assert e.value.parameter == "concurrency_limit"
    assert_engine_clean(llm)  # refused before any step ran


def test_beam_search_under_kv_pressure_matches_the_unpressured_search(tiny):
    params = BeamSearchParams(beam_width=4, max_tokens=10)
    ref = tiny.llm("llama").beam_search(BEAM_PROMPTS, params)
    probe = tiny.llm("llama", num_gpu_blocks_override=8)
    size_gib = 16 * bytes_per_block(probe) / 2**30
    # 9 usable blocks of 16 tokens: the 12 beams of 3 prompts (up to 66 tokens) do not stay cached together.
    llm = tiny.llm("llama", num_gpu_blocks_override=10, kv_offloading_size=size_gib)
    core = llm.llm_engine.core
    evicted, loaded = core.kv.pool.num_evictions, core.kv.host.num_loaded
    got = llm.beam_search(BEAM_PROMPTS, params)
    assert core.kv.pool.num_evictions > evicted and core.kv.host.num_loaded > loaded, "the test wants memory pressure"
    assert [[s.tokens for s in o.sequences] for o in got] == [[s.tokens for s in o.sequences] for o in ref]
    for o, r in zip(got, ref, strict=True):
        assert [s.score for s in o.sequences] == pytest.approx([s.score for s in r.sequences], abs=1e-4)
    assert_engine_clean(llm)
