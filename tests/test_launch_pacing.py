"""The launch pacer's predictions (engine/launch_pacing.py) on a made-up clock, and the server loop's hold."""

from __future__ import annotations

import time

import msgspec
import pytest

from pagoda.engine import launch_pacing as lp
from pagoda.engine.launch_pacing import LaunchPacer, step_kind


def _steady(p: LaunchPacer, n: int, dur: float = 0.006, host: float = 0.0005, t: float = 100.0,
            tokens: int = 64) -> float:
    """``n`` decode steps of ``dur`` device time, each launched ``host`` after step() is entered while the one
    before runs (async scheduling: step N+1 launched, then step N's result). Returns the time the last result
    arrived; one step stays in flight."""
    p.hold_ended(t)
    p.launched("decode_graph", tokens, t + host)
    end = t + host + dur
    for _ in range(n):
        p.hold_ended(end - dur + 0.0001)  # the loop calls step() right after the previous result
        p.launched("decode_graph", tokens, end - dur + 0.0001 + host)
        p.completed(end)
        end += dur
    return end - dur


def test_step_kind_buckets_tokens_by_power_of_two():
    assert step_kind("decode_graph", 64) == step_kind("decode_graph", 33)
    assert step_kind("decode_graph", 64) != step_kind("decode_graph", 65)
    assert step_kind(None, 1) == ("none", 1)


def test_no_hold_without_history():
    p = LaunchPacer()
    assert p.hold_until(0.0) is None
    last = _steady(p, lp.MIN_SAMPLES - 1)
    assert p.hold_until(last) is None  # too few durations of this kind


def test_hold_ends_before_the_predicted_end_by_the_host_time_and_margin():
    p = LaunchPacer()
    last = _steady(p, 6, dur=0.006, host=0.0005)
    # The step in flight started when the last result arrived (its launch was earlier): it ends 6 ms later.
    until = p.hold_until(last)
    assert until == pytest.approx(last + 0.006 - 0.0005 - lp.MARGIN_S)
    assert p.holds == 1


def test_prediction_takes_the_shortest_recent_duration():
    p = LaunchPacer()
    p.hold_ended(0.0)
    p.launched("decode_graph", 8, 0.0005)
    end = 0.0005
    for d in (0.008, 0.005, 0.009, 0.007):
        p.hold_ended(end)
        p.launched("decode_graph", 8, end + 0.0002)
        end += d
        p.completed(end)
    assert p.hold_until(end) == pytest.approx(end + 0.005 - 0.0005 - lp.MARGIN_S)


def test_no_hold_when_little_is_left_or_two_steps_are_in_flight():
    p = LaunchPacer()
    last = _steady(p, 6, dur=0.0015, host=0.0005)
    assert p.hold_until(last) is None  # 1.5 - 0.5 - 0.4 ms < MIN_HOLD_S
    p2 = LaunchPacer()
    last = _steady(p2, 6)
    p2.launched("decode_graph", 64, last + 0.001)  # a second step in flight
    assert p2.hold_until(last + 0.001) is None


def test_a_late_launch_starts_its_step_at_the_launch():
    p = LaunchPacer()
    last = _steady(p, 4, dur=0.006)
    p.completed(last + 0.006)  # the step in flight completes; nothing was launched meanwhile
    p.hold_ended(last + 0.010)
    p.launched("decode_graph", 64, last + 0.0105)  # launched 4.5 ms after the device went idle
    p.completed(last + 0.0165)  # so its duration is 6 ms, not 10.5
    assert min(p._durations[step_kind("decode_graph", 64)]) == pytest.approx(0.006)


def test_forget_drops_steps_in_flight():
    p = LaunchPacer()
    last = _steady(p, 6)
    p.forget()
    assert p.hold_until(last) is None
    p.completed(last + 1.0)  # nothing in flight: ignored


def test_the_server_loop_admits_requests_during_a_hold():
    zmq = pytest.importorskip("zmq")
    from pagoda.engine.core_proc import _CoreLoop
    from pagoda.engine.messages import AbortRequests, encoder

    class FakeCore:
        def __init__(self) -> None:
            self.aborted: list[str] = []
            self.until: float | None = None

        def launch_hold_until(self, now: float) -> float | None:
            return self.until

        def abort_requests(self, ids: list[str]) -> None:
            self.aborted += ids

    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    pull.bind("inproc://pacing-test")
    push.connect("inproc://pacing-test")
    out = ctx.socket(zmq.PUSH)
    try:
        core = FakeCore()
        loop = _CoreLoop(core, pull, [out], msgspec.msgpack.Encoder(), parent_pid=0)
        core.until = None
        loop._hold()  # no hold: returns at once
        push.send(encoder().encode(AbortRequests(["r1"])))
        t0 = time.perf_counter()
        core.until = t0 + 0.03
        loop._hold()
        assert time.perf_counter() >= core.until  # held until the pacer's time ...
        assert core.aborted == ["r1"]  # ... handling what arrived meanwhile
    finally:
        for s in (pull, push, out):
            s.close(linger=0)
        ctx.term()


def test_engine_reports_each_launch_and_result_to_its_pacer(tiny):
    """On the CPU (where no pacer is made) with one attached by hand: after every step() the pacer holds exactly the
    core's step in flight, every completed step left a duration, and the outputs are the synchronous run's."""
    from pagoda import LLM, SamplingParams

    prompts = ["Hello world", "The capital of France is", "Once upon a time", "1 2 3 4 5"]
    params = [SamplingParams(temperature=0, max_tokens=12),
              SamplingParams(temperature=0, max_tokens=10, repetition_penalty=1.3),  # completes its step first
              SamplingParams(temperature=0.8, seed=3, max_tokens=8),
              SamplingParams(temperature=0, max_tokens=14)]
    ref = LLM(str(tiny.path("llama")), dtype="float32", async_scheduling=False).generate(prompts, params,
                                                                                           use_tqdm=False)
    llm = LLM(str(tiny.path("llama")), dtype="float32", async_scheduling=True)
    core = llm.llm_engine.core
    assert core.pacer is None  # CPU: none by default
    core.pacer = pacer = LaunchPacer()
    step = core.step
    checked = 0

    def checked_step():
        nonlocal checked
        out = step()
        assert len(pacer._inflight) == (core._inflight is not None)
        checked += 1
        return out

    core.step = checked_step
    outs = llm.generate(prompts, params, use_tqdm=False)
    assert [[c.token_ids for c in o.outputs] for o in outs] == [[c.token_ids for c in o.outputs] for o in ref]
    assert checked > 10 and sum(len(d) for d in pacer._durations.values()) >= checked - 2
    assert not pacer._inflight and core.launch_hold_until(0.0) is None


def test_core_holds_while_a_new_request_could_still_join(tiny):
    """The engine core asks its pacer for a hold with requests already waiting (they lose nothing: their step starts
    when the one in flight ends), and not once the waiting prompts or the running requests fill the next step."""
    from pagoda import LLM, SamplingParams
    from pagoda.core.request import Request

    llm = LLM(str(tiny.path("llama")), dtype="float32", async_scheduling=True, max_num_seqs=4,
              max_num_batched_tokens=64)
    core = llm.llm_engine.core
    sched = core.scheduler

    class Pacer:
        def hold_until(self, now: float) -> float:
            return now + 1.0

    core.pacer = Pacer()  # type: ignore[assignment]
    assert core.launch_hold_until(5.0) is None  # nothing in flight
    core._inflight = object()  # type: ignore[assignment]  # a step in flight, as far as the hold rule looks
    try:
        assert core.launch_hold_until(5.0) == 6.0
        params = SamplingParams(max_tokens=4)
        sched.add_request(Request("w1", list(range(5, 45)), params, {0}, 4))  # 40 of 64 tokens: room left
        assert sched.num_waiting == 1 and core.launch_hold_until(5.0) == 6.0
        sched.add_request(Request("w2", list(range(5, 29)), params, {0}, 4))  # 64 of 64: a new one could not join
        assert core.launch_hold_until(5.0) is None
        sched.abort_requests(["w2"])
        assert core.launch_hold_until(5.0) == 6.0
        for i in range(3):  # 4 of 4 seats
            sched.add_request(Request(f"s{i}", [5, 6], params, {0}, 4))
        assert core.launch_hold_until(5.0) is None
    finally:
        core._inflight = None
