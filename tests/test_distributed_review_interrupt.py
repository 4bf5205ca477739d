"""A step the engine core leaves half-way (Ctrl-C in a notebook: ``KeyboardInterrupt`` inside ``LLM.generate``)
while its workers are inside the same step's collectives or stage transfers.

The interrupt reaches the caller. The next step must not run: its tensors would pair with the abandoned step's
(wrong numbers, a wait until ``PAGODA_DIST_TIMEOUT_S``, or gloo aborting the whole interpreter under pipeline
parallelism). It raises ``WorkerDied`` naming the cause at once, and the engine still shuts down cleanly.
Each case runs in its own interpreter: without the guard, the pipeline case aborts its process.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = """
import sys
from pagoda import LLM, SamplingParams
from pagoda.distributed import parallel_state, pipeline
from pagoda.distributed.executor import WorkerDied

tp, pp, where = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
llm = LLM(sys.argv[1], dtype="float32", device="cpu", tensor_parallel_size=tp, pipeline_parallel_size=pp)
sp = SamplingParams(temperature=0, max_tokens=6)
prompts = ["hello there", "Paris is the capital of"]
llm.generate(prompts, sp, use_tqdm=False)
cls = parallel_state.TPGroup if where == "all_reduce" else pipeline.PPStage
real, calls = getattr(cls, where), []

def interrupted(self, *a, **k):  # Ctrl-C on the engine core's rank, its workers inside the same step
    calls.append(1)
    if len(calls) == 3:
        raise KeyboardInterrupt
    return real(self, *a, **k)

setattr(cls, where, interrupted)
try:
    llm.generate(prompts, sp, use_tqdm=False)
except KeyboardInterrupt:
    print("interrupted")
setattr(cls, where, real)
try:
    llm.generate(prompts, sp, use_tqdm=False)
except WorkerDied as e:
    print("next:", e)
llm.llm_engine.shutdown()
print("shut down")
"""


@pytest.mark.parametrize("tp,pp,where", [(2, 1, "all_reduce"), (1, 2, "recv")])
def test_interrupted_step_fails_the_next_step_naming_it(tiny, tp, pp, where):
    env = {**os.environ, "PAGODA_DIST_TIMEOUT_S": "60"}  # a step that waited for the abandoned one fails, not hangs
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny.path("llama")), str(tp), str(pp), where],
                         capture_output=True, text=True, env=env, timeout=500)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0] == "interrupted"
    assert lines[1].startswith("next: the ranks are out of step: a step was interrupted (KeyboardInterrupt)"), lines
    assert lines[2] == "shut down"
