"""An ``LLM`` gives everything back when it is dropped or shut down (issue 11: making, using and
deleting ``LLM(...)`` several times in one process must work).

* Created, used and deleted three times in a loop: after ``del`` + ``gc.collect()`` its engine,
  model runner and model are garbage (weak references to them are dead).
* ``shutdown()`` frees the model and caches at once, is idempotent, works as a context manager,
  and a shut-down LLM refuses to generate with a clear error.
"""

from __future__ import annotations

import gc
import weakref

import pytest

from pagoda import LLM, SamplingParams

PARAMS = SamplingParams(temperature=0.7, seed=1, n=2, max_tokens=6, logprobs=2, prompt_logprobs=1)


def _use(llm: LLM) -> None:
    outs = llm.generate(["Hello world", "a b c d"], PARAMS, use_tqdm=True)
    assert all(len(c.token_ids) == 6 for o in outs for c in o.outputs)


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_deleted_llm_is_garbage_collected(tiny, async_scheduling):
    for _ in range(3):
        llm = LLM(str(tiny.path("llama")), dtype="float32", async_scheduling=async_scheduling)
        _use(llm)
        core = llm.llm_engine.core
        refs = [weakref.ref(x) for x in (llm.llm_engine, core, core.runner, core.runner.model, core.scheduler)]
        del llm, core
        gc.collect()
        assert [r() is None for r in refs] == [True] * len(refs)


def test_shutdown_frees_the_model_and_is_idempotent(tiny):
    llm = LLM(str(tiny.path("llama")), dtype="float32")
    _use(llm)
    runner = llm.llm_engine.core.runner
    model_ref = weakref.ref(runner.model)
    kv_ref = weakref.ref(runner.kv_caches[0][0])
    llm.shutdown()
    gc.collect()
    assert model_ref() is None and kv_ref() is None and runner.kv_caches == [] and runner.graphs is None
    llm.shutdown()  # a second call does nothing
    with pytest.raises(RuntimeError, match="shut down"):
        llm.generate(["Hello"], PARAMS, use_tqdm=False)
    del llm
    gc.collect()


def test_context_manager_shuts_down_and_a_new_llm_works(tiny):
    with LLM(str(tiny.path("llama")), dtype="float32") as llm:
        _use(llm)
        runner = llm.llm_engine.core.runner
    assert runner.model is None and runner.kv_caches == []
    with LLM(str(tiny.path("llama")), dtype="float32") as again:
        _use(again)
