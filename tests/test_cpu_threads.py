"""The CPU thread policy: applied when the user set nothing, never over a user's own choice.

Each case runs in a fresh interpreter with a clean environment, because the OpenMP runtime
reads its variables once, when torch is imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pagoda.worker.cpu_threads import THREADS_KNOB, WAIT_KNOBS, WAIT_POLICY, policy_env

REPO = Path(__file__).resolve().parents[1]
KNOBS = (*WAIT_KNOBS, THREADS_KNOB)

REPORT = """
import json, os, sys
{before}
import pagoda
import torch
{after}
print(json.dumps({{"env": {{k: os.environ.get(k) for k in {knobs!r}}}, "threads": torch.get_num_threads()}}))
"""


def _run(env: dict[str, str] | None = None, before: str = "", after: str = "", one_cpu: bool = False) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in KNOBS}
    clean.update(env or {}, PYTHONPATH=str(REPO))
    code = REPORT.format(before=before, after=after, knobs=KNOBS)
    cpu = min(os.sched_getaffinity(0))
    preexec = (lambda: os.sched_setaffinity(0, {cpu})) if one_cpu else None
    proc = subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True, text=True, cwd=REPO,
                          preexec_fn=preexec, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["stderr"] = proc.stderr
    return out


def test_policy_is_applied_when_unset():
    res = _run()
    assert res["env"]["OMP_WAIT_POLICY"] == WAIT_POLICY["OMP_WAIT_POLICY"]
    if len(os.sched_getaffinity(0)) == (os.cpu_count() or 0):
        assert res["env"][THREADS_KNOB] is None  # all CPUs usable: torch's own count stands


@pytest.mark.parametrize("knob,value", [("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "5"), ("KMP_BLOCKTIME", "0")])
def test_a_users_wait_policy_is_respected(knob, value):
    res = _run({knob: value})
    assert res["env"][knob] == value
    assert all(res["env"][k] is None for k in WAIT_KNOBS if k != knob)


HINT_CHECK = ("import logging; logging.basicConfig(level=logging.INFO)\n"
              "from pagoda.worker.cpu_threads import apply_runtime_policy\n"
              "apply_runtime_policy(); apply_runtime_policy()")
needs_two_cpus = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to restrict to 1")


@needs_two_cpus
def test_threads_follow_the_affinity_mask():
    res = _run(one_cpu=True, after=HINT_CHECK)
    assert res["env"][THREADS_KNOB] == "1" and res["threads"] == 1
    assert "torch was imported before pagoda" not in res["stderr"]  # pagoda came first: nothing to hint


@needs_two_cpus
def test_a_users_thread_count_is_respected():
    res = _run({THREADS_KNOB: "2"}, one_cpu=True)
    assert res["env"][THREADS_KNOB] == "2" and res["threads"] == 2


@needs_two_cpus
def test_torch_imported_first_gets_the_thread_count_and_a_hint():
    """torch loaded before pagoda: the thread count can still be fixed, the wait policy only hinted at."""
    res = _run(before="import torch", after=HINT_CHECK, one_cpu=True)
    assert res["threads"] == 1
    assert res["stderr"].count("torch was imported before pagoda") == 1


@needs_two_cpus
def test_a_torch_set_num_threads_made_by_the_user_is_kept():
    after = "from pagoda.worker.cpu_threads import apply_runtime_policy; apply_runtime_policy()"
    res = _run(before="import torch; torch.set_num_threads(1)", after=after)
    assert res["threads"] == 1


def test_policy_env_never_overrides():
    env = {"OMP_WAIT_POLICY": "ACTIVE", THREADS_KNOB: "7"}
    assert policy_env(env) == {}
    assert policy_env({}).get("OMP_WAIT_POLICY") == "PASSIVE"


PASSIVE_REPORT = "{before}\nimport pagoda\nfrom pagoda.worker.cpu_threads import passive_wait\nprint(passive_wait())"


@pytest.mark.parametrize("env,before,expected", [
    ({}, "", True),  # pagoda's policy, applied before torch loaded
    ({}, "import torch", False),  # applied too late: the runtime kept its spinning default
    ({"OMP_WAIT_POLICY": "ACTIVE"}, "", False),  # the user's choice
    ({"OMP_WAIT_POLICY": "passive"}, "import torch", True),  # the user's, read when torch loaded
])
def test_passive_wait_says_what_the_runtime_read(env, before, expected):
    clean = {k: v for k, v in os.environ.items() if k not in KNOBS}
    clean.update(env, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", PASSIVE_REPORT.format(before=before)], env=clean,
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(expected)


def test_one_thread_restores_the_count():
    import torch

    from pagoda.worker.cpu_threads import one_thread

    n = torch.get_num_threads()
    with one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == n


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: every step runs on one thread anyway")
def test_small_steps_run_their_forward_on_one_thread(tiny):
    """With the switch on (the passive policy), a decode step's forward runs on one thread, a prefill of more than
    SMALL_STEP_MAX_ROWS rows on all of them, and the LM head on all of them; the tokens are the same either way."""
    import torch
    from engine_checks import greedy

    from pagoda import LLM
    from pagoda.worker.cpu_threads import SMALL_STEP_MAX_ROWS

    llm = LLM(str(tiny.path("llama")), dtype="bfloat16", device="cpu", enable_prefix_caching=False)
    runner = llm.llm_engine.core.runner
    model = runner.model
    seen: list[tuple[str, int, int]] = []
    forward, logits = model.forward, model.compute_logits

    def spy_forward(ids, *a, **kw):
        seen.append(("forward", ids.shape[0], torch.get_num_threads()))
        return forward(ids, *a, **kw)

    def spy_logits(h):
        seen.append(("logits", h.shape[0], torch.get_num_threads()))
        return logits(h)

    model.forward, model.compute_logits = spy_forward, spy_logits
    n = torch.get_num_threads()
    prompt = " ".join(["word"] * (2 * SMALL_STEP_MAX_ROWS))
    outs = {}
    for on in (True, False):
        runner.small_steps_one_thread = on
        seen.clear()
        outs[on] = llm.generate([prompt], greedy(max_tokens=4), use_tqdm=False)[0].outputs[0].token_ids
        forwards = [(rows, t) for kind, rows, t in seen if kind == "forward"]
        assert forwards[0][0] > SMALL_STEP_MAX_ROWS and forwards[0][1] == n  # the prefill
        assert all(t == (1 if on else n) for rows, t in forwards[1:])  # the 1-row decode steps
        assert all(t == n for kind, _, t in seen if kind == "logits")
    assert outs[True] == outs[False]
