"""Structured outputs on the GPU (skipped without CUDA): a constrained batch under async scheduling (its steps
split into forward and sampling, the bitmask filled while the forward runs, CUDA graphs on) gives exactly the
synchronous engine's tokens, and every finished output is valid."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_models import build_tiny_model  # noqa: E402

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"enum": ["x", "yy"]}},
          "required": ["a", "b"], "additionalProperties": False}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("gpu_so") / "llama", "llama")


def test_async_constrained_batch_equals_sync_on_gpu(folder):
    from pagoda import LLM, SamplingParams
    from pagoda.structured_output import StructuredOutputsParams

    so = StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True)
    ps = [SamplingParams(temperature=0, max_tokens=32, structured_outputs=so),
          SamplingParams(temperature=1.0, seed=5, n=3, max_tokens=32, structured_outputs=so),
          SamplingParams(temperature=0.7, seed=2, max_tokens=10,
                         structured_outputs=StructuredOutputsParams(regex=r"[a-c]{2,6}x")),
          SamplingParams(temperature=0, max_tokens=16)]
    prompts = [{"prompt_token_ids": [2 + i, 9, 4, 11, 3]} for i in range(len(ps))]
    results = {}
    for flag in (False, True):
        llm = LLM(str(folder), dtype="float32", device="cuda", async_scheduling=flag, kv_cache_memory_bytes=2**26)
        outs = llm.generate(prompts, ps, use_tqdm=False)
        results[flag] = [[c.token_ids for c in o.outputs] for o in outs]
        core = llm.llm_engine.core
        assert (core.num_steps_ahead > 0) is flag
        for c in outs[0].outputs + outs[1].outputs:
            if c.finish_reason == "stop":
                assert set(json.loads(c.text)) == {"a", "b"}
        assert all(re.fullmatch(r"[a-c]{2,6}x", c.text) or c.finish_reason == "length" for c in outs[2].outputs)
        del llm
    assert results[True] == results[False]


def test_constrained_sampling_launch_never_synchronises(tmp_path_factory):
    """A split constrained step's sampling (bitmask fill, its copy to the device, masking, argmax) is queued
    without waiting for the device: the bitmask rows are pinned and copied asynchronously (a copy from pageable
    memory would wait for the forward in flight), no call synchronises, and the logits are wider than the
    tokenizer (the columns past it masked on the device). Tokens equal the synchronous engine's."""
    from pagoda import LLM, SamplingParams
    from pagoda.structured_output import StructuredOutputsParams

    folder = build_tiny_model(tmp_path_factory.mktemp("gpu_so_pad") / "llama", "llama", extra_vocab=77)
    so = StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True)
    regex = StructuredOutputsParams(regex=r"[a-c]{2,9}x")
    ps = [SamplingParams(temperature=0, max_tokens=24, structured_outputs=so),
          SamplingParams(temperature=0, max_tokens=24, structured_outputs=regex),
          SamplingParams(temperature=0, max_tokens=16)]
    prompts = [{"prompt_token_ids": [2 + i, 9, 4, 11, 3]} for i in range(len(ps))]
    results = {}
    for flag in (False, True):
        llm = LLM(str(folder), dtype="float32", device="cuda", async_scheduling=flag, kv_cache_memory_bytes=2**26)
        core = llm.llm_engine.core
        errors: list[BaseException] = []
        calls: list[int] = []
        queue = core._queue_sampling

        def queue_sampling(launched, queue=queue, errors=errors, calls=calls):
            torch.cuda.set_sync_debug_mode("error")
            try:
                return queue(launched)
            except Exception as e:
                errors.append(e)
                raise
            finally:
                torch.cuda.set_sync_debug_mode("default")
                calls.append(1)

        core._queue_sampling = queue_sampling
        outs = llm.generate(prompts, ps, use_tqdm=False)
        results[flag] = [[c.token_ids for c in o.outputs] for o in outs]
        assert not errors, errors
        assert calls
        buf = core.structured._bitmasks
        assert buf is not None and buf.vocab_size < core.vocab_size
        assert all(s is None or s.is_pinned() for s in buf._slots) and any(s is not None for s in buf._slots)
        for c in outs[0].outputs:
            assert max(c.token_ids) < buf.vocab_size
            if c.finish_reason == "stop":
                assert set(json.loads(c.text)) == {"a", "b"}
        assert all(re.fullmatch(r"[a-c]{2,9}x", c.text) or c.finish_reason == "length" for c in outs[1].outputs)
        llm.shutdown()
    assert results[True] == results[False]
