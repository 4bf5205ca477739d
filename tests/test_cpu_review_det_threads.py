"""``--deterministic`` on a CPU with many threads: a step's thread count must not depend on its rows.

Under the passive wait policy (pagoda's default) a CPU step of at most ``SMALL_STEP_MAX_ROWS`` rows used to run on one
thread and larger steps on all of them. The mode's dense GEMMs (oneDNN bf16 copies of the default model's 4-bit
weights, in 32-row tiles) split some sums by thread count at 16 threads, so on a 16-thread machine a request's tokens
and logprobs alone (one thread) differed from the same request in a batch of 16 (all threads). The engine case runs in
a fresh interpreter: the OpenMP runtime reads its wait policy when torch loads, and pagoda must come first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pagoda.worker import cpu_threads

REPO = Path(__file__).resolve().parents[1]


def test_small_steps_keep_all_threads_under_deterministic(monkeypatch):
    monkeypatch.setattr(cpu_threads, "passive_wait", lambda: True)
    assert cpu_threads.small_steps_one_thread("cpu", deterministic=False)
    assert not cpu_threads.small_steps_one_thread("cpu", deterministic=True)
    assert not cpu_threads.small_steps_one_thread("cuda", deterministic=False)
    monkeypatch.setattr(cpu_threads, "passive_wait", lambda: False)
    assert not cpu_threads.small_steps_one_thread("cpu", deterministic=False)


SCRIPT = """
import json, logging
import pagoda  # first: the passive wait policy, as in every pagoda command
import torch
torch.set_num_threads(16)  # a 16-thread machine's count (OMP_NUM_THREADS is the user's: kept)
logging.getLogger("pagoda").setLevel(logging.WARNING)
from pagoda import LLM, SamplingParams
prompts = ["You are a helpful assistant. What is 17 times 3?", "Paris is the capital of", "def fibonacci(n):"]
others = [f"Story number {i}: once upon a time " + "there was a cat. " * (i % 9) for i in range(13)]
sp = SamplingParams(temperature=0.0, max_tokens=8, logprobs=2, ignore_eos=True)
def key(outs):
    return [[list(o.outputs[0].token_ids),
             [sorted([t, lp.logprob] for t, lp in d.items()) for d in o.outputs[0].logprobs]] for o in outs]
llm = LLM(deterministic=True, max_model_len=512)
alone = [key(llm.generate([p], sp, use_tqdm=False))[0] for p in prompts]
batch = key(llm.generate(others + prompts, sp, use_tqdm=False))[len(others):]
print(json.dumps({"threads": torch.get_num_threads(), "alone": alone, "batch": batch}))
"""


@pytest.mark.default_model
def test_default_model_batch_invariant_at_16_threads():
    """Each prompt alone (1-row decode steps) and among 13 others (16-row steps), 16 threads: bitwise equal."""
    env = {k: v for k, v in os.environ.items() if k not in (*cpu_threads.WAIT_KNOBS, cpu_threads.THREADS_KNOB)}
    env.update(OMP_NUM_THREADS="16", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, cwd=REPO,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["threads"] == 16
    for i, (a, b) in enumerate(zip(res["alone"], res["batch"], strict=True)):
        assert a[0] == b[0], f"prompt {i}: tokens alone vs in a batch of 16"
        assert a[1] == b[1], f"prompt {i}: logprobs alone vs in a batch of 16"
