"""Input preparation (``pagoda.worker.input_batch``) with no model: one step holding a prompt
chunk of a prompt-logprobs request, a plain prefill chunk that samples, decodes, and a decode
whose input token is still in flight gives the expected flattened rows; the scheduler, not the
runner, decides which prompt logprobs a step reports (a recomputed chunk does not report them
again). Also the multi-token step interface: several sampled rows per request, several tokens
appended per update, tokens after a stop dropped.
"""

from __future__ import annotations

import pytest
from test_scheduler import EOS, new_sched

from pagoda.core.request import Request
from pagoda.core.scheduler import ScheduledRequest, SchedulerOutput
from pagoda.sampling_params import SamplingParams
from pagoda.worker.input_batch import prepare_inputs

BS = 4


def req(rid: str, prompt: list[int], outputs: list[int] = (), **sp) -> Request:
    r = Request(rid, prompt, SamplingParams(max_tokens=8, temperature=0.0, **sp), {EOS}, 8)
    for t in outputs:
        r.append_output_token(t)
    return r


def test_a_mixed_step_flattens_as_expected():
    plp = req("plp", [11, 12, 13, 14, 15, 16, 17], prompt_logprobs=2)  # chunk 0..4 of a 7-token prompt
    pre = req("pre", [21, 22, 23])  # whole prompt: samples
    dec = req("dec", [31, 32, 33, 34, 35], outputs=[36])  # decode of its 6th token
    ahead = req("ahead", [41, 42], outputs=[43])  # decode whose input (position 3) is in flight
    sched = SchedulerOutput(scheduled=[
        ScheduledRequest(plp, 5, 0, False, prompt_logprobs=(0, 5)),
        ScheduledRequest(pre, 3, 0, True),
        ScheduledRequest(dec, 1, 5, True),
        ScheduledRequest(ahead, 1, 3, True),
    ])
    blocks = {"plp": [7, 3], "pre": [5], "dec": [9, 2], "ahead": [6]}
    b = prepare_inputs(sched, blocks, BS, prev_rows={"ahead": 2})
    assert b.input_ids == [11, 12, 13, 14, 15, 21, 22, 23, 36, 0]
    assert b.positions == [0, 1, 2, 3, 4, 0, 1, 2, 5, 3]
    # slot = block * 4 + offset: plp 7*4+0..3, then block 3 offset 0; pre block 5; dec position 5 -> block 2
    assert b.slots == [28, 29, 30, 31, 12, 20, 21, 22, 9, 27]
    assert b.query_start_loc == [0, 5, 8, 9, 10]
    assert b.query_lens == [5, 3, 1, 1] and b.seq_lens == [5, 3, 6, 4]
    assert b.block_tables == [[7, 3], [5], [9, 2], [6]] and b.max_num_blocks(BS) == 2
    assert b.req_ids == ["plp", "pre", "dec", "ahead"] and b.adapter_ids == [None] * 4
    assert b.logits_rows == [7, 8, 9]  # the last row of each sampling request
    assert [r.request_id for r in b.sample_reqs] == ["pre", "dec", "ahead"] and b.num_sample_rows == [1, 1, 1]
    [job] = b.prompt_logprob_jobs
    assert (job.request, job.row, job.first_pos, job.count) == (plp, 0, 0, 5)
    assert b.fills == [(9, 2)]  # row 9 takes the previous step's token at row 2
    assert not b.is_decode_only and b.num_reqs == 4


def test_an_unknown_token_without_a_step_in_flight_is_an_error():
    ahead = req("ahead", [41, 42], outputs=[43])
    sched = SchedulerOutput(scheduled=[ScheduledRequest(ahead, 1, 3, True)])
    with pytest.raises(RuntimeError, match="unknown input tokens"):
        prepare_inputs(sched, {"ahead": [6]}, BS, prev_rows={})


def test_several_sample_rows_per_request():
    r = req("spec", [1, 2, 3], outputs=[4, 5, 6])  # e.g. a verified step of 3 proposed tokens
    sched = SchedulerOutput(scheduled=[ScheduledRequest(r, 3, 3, True, num_sample_rows=3)])
    b = prepare_inputs(sched, {"spec": [1, 2]}, BS, prev_rows={})
    assert b.logits_rows == [0, 1, 2] and b.num_sample_rows == [3] and not b.samples_one_row_each
    bad = SchedulerOutput(scheduled=[ScheduledRequest(r, 2, 4, True, num_sample_rows=3)])
    with pytest.raises(ValueError, match="3 sample rows in a chunk of 2"):
        prepare_inputs(bad, {"spec": [1, 2]}, BS, prev_rows={})


def test_the_scheduler_decides_prompt_logprobs_once():
    s = new_sched(budget=4, block_size=4)
    r = Request("p", list(range(10, 20)), SamplingParams(max_tokens=2, temperature=0.0, prompt_logprobs=1), {EOS}, 2)
    s.add_request(r)
    spans = []
    while True:
        out = s.schedule()
        spans += [x.prompt_logprobs for x in out.scheduled]
        if any(x.sample for x in out.scheduled):
            break
        s.update_from_output(out, {})
    # 10 prompt tokens, chunks of 4: positions 0..8 predict tokens 1..9, each reported once.
    assert spans == [(0, 4), (4, 4), (8, 1)]
    assert r.prompt_logprobs_next == 10


def test_several_tokens_per_update_and_tokens_after_a_stop_are_dropped():
    s = new_sched()
    a = Request("a", [10, 11, 12], SamplingParams(max_tokens=8, temperature=0.0), {EOS}, 8)
    s.add_request(a)
    out = s.schedule()
    sampled = {"a": [20, 21, EOS, 22, 23]}
    finished = s.update_from_output(out, sampled)
    assert finished == [a] and a.output_token_ids == [20, 21, EOS]
    assert sampled == {"a": [20, 21, EOS]}  # what the engine reports
    assert a.status.finish_reason == "stop"
