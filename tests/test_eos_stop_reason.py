"""generation_config's extra EOS ids end a request with themselves as ``stop_reason``, as vLLM reports them (it
files every EOS id but the tokenizer's own under stop_token_ids); the tokenizer's EOS reports none."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_models import build_tiny_model  # noqa: E402

EXTRA_EOS = 100  # an ordinary token that generation_config.json lists as an EOS


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    from pagoda import LLM

    folder = build_tiny_model(tmp_path_factory.mktemp("eos") / "llama", "llama")
    eos = json.loads((folder / "config.json").read_text()).get("eos_token_id")
    gen = {"eos_token_id": [t for t in (eos if isinstance(eos, list) else [eos]) if t is not None] + [EXTRA_EOS]}
    (folder / "generation_config.json").write_text(json.dumps(gen))
    engine = LLM(str(folder), dtype="float32", max_model_len=128, num_gpu_blocks_override=32)
    yield engine
    engine.shutdown()


def test_extra_eos_reports_its_id_and_the_tokenizers_eos_none(llm):
    from pagoda import SamplingParams

    eos = llm.get_tokenizer().eos_token_id
    assert eos is not None and eos != EXTRA_EOS
    for forced, reason in ((EXTRA_EOS, EXTRA_EOS), (eos, None)):
        out = llm.generate("The quick brown", SamplingParams(temperature=0, logit_bias={forced: 100.0}, max_tokens=8),
                           use_tqdm=False)[0].outputs[0]
        assert out.token_ids == [forced] and out.finish_reason == "stop" and out.stop_reason == reason, forced
    # ignore_eos turns both off.
    out = llm.generate("The quick brown", SamplingParams(temperature=0, logit_bias={EXTRA_EOS: 100.0}, max_tokens=3,
                                                        ignore_eos=True), use_tqdm=False)[0].outputs[0]
    assert out.token_ids == [EXTRA_EOS] * 3 and out.finish_reason == "length" and out.stop_reason is None
