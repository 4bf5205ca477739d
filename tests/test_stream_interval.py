"""--stream-interval (vLLM's flag): a streamed request's outputs at its first token, every N tokens, and its end."""

from __future__ import annotations

import pytest

from pagoda import SamplingParams
from pagoda.config import EngineArgs
from pagoda.engine.messages import EngineCoreOutput
from pagoda.engine.output_processor import OutputProcessor


def _emitted(op: OutputProcessor, steps: list[list[EngineCoreOutput]]) -> list[list[int]]:
    """For each step, the token counts (per choice) of the output it emitted ([] when none)."""
    seen = []
    for outs in steps:
        results, _ = op.process(outs)
        seen.append([len(c.token_ids) for c in results[0].outputs] if results else [])
    return seen


def test_interval_3_emits_first_every_third_and_last():
    op = OutputProcessor(tokenizer=None, stream_interval=3)
    op.add_request("r", None, [1, 2], SamplingParams(max_tokens=8, detokenize=False))
    steps = [[EngineCoreOutput("r", [10 + i], finish_reason="length" if i == 7 else None)] for i in range(8)]
    assert _emitted(op, steps) == [[1], [], [], [4], [], [], [7], [8]]
    assert "r" not in op.parents  # the final output was emitted and the request dropped


def test_interval_1_emits_every_step_and_multi_token_steps_count():
    op = OutputProcessor(tokenizer=None)
    op.add_request("a", None, [1], SamplingParams(max_tokens=4, detokenize=False))
    assert _emitted(op, [[EngineCoreOutput("a", [5])], [EngineCoreOutput("a", [6])]]) == [[1], [2]]
    op = OutputProcessor(tokenizer=None, stream_interval=2)
    op.add_request("b", None, [1], SamplingParams(max_tokens=9, detokenize=False))
    # a speculative step brings 3 tokens at once: due at once
    assert _emitted(op, [[EngineCoreOutput("b", [5])], [EngineCoreOutput("b", [6, 7, 8])],
                         [EngineCoreOutput("b", [9])]]) == [[1], [4], []]


def test_interval_with_two_choices_emits_each_first_token_and_finish():
    op = OutputProcessor(tokenizer=None, stream_interval=4)
    op.add_request("p", None, [1], SamplingParams(n=2, max_tokens=8, detokenize=False))
    c0, c1 = "0_p", "1_p"
    steps = [
        [EngineCoreOutput(c0, [5])],  # choice 0's first token
        [EngineCoreOutput(c0, [6]), EngineCoreOutput(c1, [7])],  # choice 1's first token
        [EngineCoreOutput(c0, [8], finish_reason="stop", stop_reason=8)],  # choice 0 finishes (parent does not)
        [EngineCoreOutput(c1, [9])],
        [EngineCoreOutput(c1, [9], finish_reason="length")],
    ]
    assert _emitted(op, steps) == [[1, 0], [2, 1], [3, 1], [], [3, 3]]


def test_stream_interval_below_1_is_refused_naming_it():
    with pytest.raises(ValueError, match="stream_interval"):
        EngineArgs(stream_interval=0).validate()
