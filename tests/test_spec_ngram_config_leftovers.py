"""n-gram ``prompt_lookup_min`` / ``prompt_lookup_max`` resolution: vLLM's rule (SpeculativeConfig.__post_init__):
one given alone sets the other to it; both left out take pagoda's documented defaults (2, 5)."""

from __future__ import annotations

import pytest

from pagoda.spec_decode.config import DEFAULT_LOOKUP_MAX, DEFAULT_LOOKUP_MIN, SpeculativeConfig


@pytest.mark.parametrize("given, resolved", [
    ({"prompt_lookup_max": 4}, (4, 4)),  # only max: min = max (was (2, 4))
    ({"prompt_lookup_min": 3}, (3, 3)),  # only min: max = min (was (3, 5))
    ({"prompt_lookup_max": 1}, (1, 1)),
    ({"prompt_lookup_min": 7}, (7, 7)),  # was (7, 7) already; stays
    ({"prompt_lookup_min": 1, "prompt_lookup_max": 3}, (1, 3)),
    ({}, (DEFAULT_LOOKUP_MIN, DEFAULT_LOOKUP_MAX)),
])
def test_lookup_range_resolves_like_vllm(given, resolved):
    c = SpeculativeConfig.from_dict({"method": "ngram", "num_speculative_tokens": 3, **given})
    assert (c.prompt_lookup_min, c.prompt_lookup_max) == resolved


def test_lookup_min_above_max_names_both_keys():
    with pytest.raises(ValueError) as e:
        SpeculativeConfig.from_dict({"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 4,
                                     "prompt_lookup_max": 2})
    msg = str(e.value)
    assert "prompt_lookup_min (4)" in msg and "prompt_lookup_max (2)" in msg


@pytest.mark.parametrize("key", ["prompt_lookup_min", "prompt_lookup_max"])
@pytest.mark.parametrize("bad", [0, -1, True, 2.0, "3"])
def test_lookup_bad_value_names_the_key(key, bad):
    with pytest.raises(ValueError, match=f"speculative_config.{key} must be a positive integer"):
        SpeculativeConfig.from_dict({"method": "ngram", "num_speculative_tokens": 3, key: bad})


def test_only_max_drafts_from_that_ngram_only():
    """The resolved range reaches the proposer: with only max=3 a 2-gram match proposes nothing."""
    from pagoda.spec_decode.ngram import NgramProposer
    c = SpeculativeConfig.from_dict({"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 3})
    p = NgramProposer(c.prompt_lookup_min, c.prompt_lookup_max)
    tokens = [5, 6, 9, 1, 2, 5, 6]  # the last 2-gram (5, 6) recurs; the last 3-gram (2, 5, 6) does not
    assert p.propose_one(tokens, 2) == []
    assert NgramProposer(2, 3).propose_one(tokens, 2) == [9, 1]  # the pre-fix range (2, 3) drafted here
