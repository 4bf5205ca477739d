"""``speculative_config`` as vLLM users write it (a review's findings, CPU, tiny models).

* An EAGLE head given without ``method`` is detected from its name as vLLM does (``eagle-`` in it: ``eagle``;
  ``eagle3``: ``eagle3``), the form vLLM's own EAGLE examples use ({"model": "yuhuili/EAGLE-LLaMA3-Instruct-8B",
  "num_speculative_tokens": 2}). Before, pagoda took such a head for a whole draft model and failed to load it
  with a checkpoint error that named neither the key nor the method to give.
* A draft model that fails to load names ``speculative_config.model`` (a missing folder was "model path does not
  exist: ...", as if the target's path were wrong; a bad checkpoint named only the tensor), and one that is an
  EAGLE head says which method to give.
"""

from __future__ import annotations

import shutil

import pytest
from engine_checks import assert_engine_clean
from test_spec_eagle import TARGET, _write_head

from pagoda.sampling_params import SamplingParams
from pagoda.spec_decode.config import SpeculativeConfig


@pytest.mark.parametrize("model, method", [
    ("yuhuili/EAGLE-LLaMA3-Instruct-8B", "eagle"),
    ("yuhuili/EAGLE3-LLaMA3.1-Instruct-8B", "eagle3"),
    ("AngelSlim/Qwen3-8B_eagle3", "eagle3"),
    ("/models/my-eagle-head", "eagle"),
    ("/models/Llama-3.2-1B", "draft_model"),
    ("[ngram]", "ngram"),
])
def test_method_left_out_is_detected_from_the_model_name_as_vllm(model, method):
    assert SpeculativeConfig.from_dict({"model": model, "num_speculative_tokens": 2}).method == method


def test_an_explicit_method_is_kept():
    c = SpeculativeConfig.from_dict({"method": "draft_model", "model": "/m/EAGLE-x", "num_speculative_tokens": 2})
    assert c.method == "draft_model"


def test_eagle3_head_without_method_runs_and_changes_no_greedy_token(tiny):
    """vLLM's example form: the head's folder name picks the method; greedy tokens as without speculation."""
    from pagoda import LLM

    head = tiny.root / "EAGLE3-tiny-head"
    if not head.exists():
        shutil.copytree(_write_head(tiny, "head-eagle3", "eagle3"), head)
    prompt = "one two three four five one two three four five one two"
    p = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    want = tiny.llm(TARGET).generate([prompt], p, use_tqdm=False)[0].outputs[0].token_ids
    llm = LLM(str(tiny.path(TARGET)), dtype="float32",
              speculative_config={"model": str(head), "num_speculative_tokens": 2})
    assert llm.llm_engine.core.spec.cfg.method == "eagle3"
    assert llm.generate([prompt], p, use_tqdm=False)[0].outputs[0].token_ids == want
    assert llm.llm_engine.core.scheduler.spec_stats.num_drafts > 0
    assert_engine_clean(llm)
    llm.shutdown()


def test_missing_draft_folder_names_the_key(tiny, tmp_path):
    from pagoda import LLM

    with pytest.raises(FileNotFoundError, match=r"^speculative_config\.model: .*does not exist"):
        LLM(str(tiny.path("llama")), dtype="float32",
            speculative_config={"model": str(tmp_path / "no-such-draft"), "num_speculative_tokens": 2})


@pytest.mark.parametrize("method", ["eagle", "eagle3"])
def test_eagle_head_given_as_a_draft_model_names_the_key_and_the_method(tiny, method):
    """An explicit ``draft_model`` (vLLM would switch by the name; pagoda keeps what was asked) over a head: the
    load error names the key and says to give the head's method."""
    from pagoda import LLM

    head = _write_head(tiny, f"head-{method}", method)
    with pytest.raises(ValueError, match=r"^speculative_config\.model: .*looks like an EAGLE head: give method"):
        LLM(str(tiny.path(TARGET)), dtype="float32",
            speculative_config={"method": "draft_model", "model": head, "num_speculative_tokens": 2})
