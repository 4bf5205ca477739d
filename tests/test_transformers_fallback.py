"""The transformers fallback against HF ``generate`` on the same weights (fp32, greedy, top-5 rule).

Architectures without a native implementation run through it automatically; Llama is forced through it
with ``model_impl="transformers"``. Each run is one batch of prompts of different lengths with a small
token budget per step, so prompts are prefilled in chunks alongside other requests' decodes (the paged
path); one test repeats a prompt for a prefix-cache hit.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from engine_checks import PROMPTS, assert_engine_clean, compare_top5, greedy, our_top, top_ids

FALLBACK_ARCHS = ["gpt_neox", "olmo2", "granite", "stablelm", "phi", "gpt2", "cohere"]
# Short, multi-byte and long prompts (the long one is prefilled in several chunks of the step budget).
BATCH = [PROMPTS[1], PROMPTS[2], PROMPTS[5], PROMPTS[8]]
NEW = 16
STEP_TOKENS = 32  # max_num_batched_tokens: forces chunked prefill next to decodes
NEAR_TIE = 1e-3


def _fallback_llm(tiny, arch: str, **kw):
    return tiny.llm(arch, max_num_batched_tokens=STEP_TOKENS, max_num_seqs=4, kv_cache_memory_bytes=8 * 2**20, **kw)


def _assert_matches_hf(tiny, ref_arch: str, outs) -> None:
    full = 0
    for out in outs:
        comp = out.outputs[0]
        assert len(comp.token_ids) == NEW
        ref = tiny.hf_ref(ref_arch, out.prompt_token_ids)
        n = compare_top5(comp.token_ids, ref.tokens[:NEW], [our_top(d) for d in comp.logprobs],
                         [top_ids(r) for r in ref.step_logprobs[:NEW]], ref.step_logprobs, NEAR_TIE,
                         what=f"{ref_arch} {out.prompt[:20]!r}")
        full += n == NEW
    assert full >= len(outs) - 1, f"only {full}/{len(outs)} sequences equal HF's"


@pytest.mark.parametrize("arch", FALLBACK_ARCHS)
def test_fallback_matches_hf(tiny, arch):
    llm = _fallback_llm(tiny, arch)
    cfg = llm.llm_engine.cfg
    assert cfg.model_impl == "transformers"  # chosen automatically: no native implementation
    outs = llm.generate(BATCH, greedy(NEW, logprobs=5), use_tqdm=False)
    _assert_matches_hf(tiny, arch, outs)
    assert max(len(o.prompt_token_ids) for o in outs) > 2 * STEP_TOKENS  # the long prompt took several chunks
    assert_engine_clean(llm)


def test_llama_forced_through_fallback_with_prefix_hit(tiny):
    llm = _fallback_llm(tiny, "llama", model_impl="transformers")
    assert llm.llm_engine.cfg.model_impl == "transformers"
    outs = llm.generate(BATCH, greedy(NEW, logprobs=5), use_tqdm=False)
    _assert_matches_hf(tiny, "llama", outs)
    again = llm.generate([BATCH[-1]], greedy(NEW, logprobs=5), use_tqdm=False)
    assert again[0].num_cached_tokens >= 16  # whole blocks of the repeated prompt came from the prefix cache
    _assert_matches_hf(tiny, "llama", again)
    assert again[0].outputs[0].token_ids == outs[-1].outputs[0].token_ids
    assert_engine_clean(llm)


def test_native_flag_and_vllm_alias(tiny):
    from pagoda.config import EngineArgs

    args = EngineArgs(model=str(tiny.path("llama")), model_impl="vllm")
    assert args.create_config().model_impl == "pagoda"
    with pytest.raises(ValueError, match=r"GPTNeoXForCausalLM.*no native pagoda implementation.*--model-impl"):
        EngineArgs(model=str(tiny.path("gpt_neox")), model_impl="pagoda").create_config()


def _variant(tiny, tmp_path, base: str, **changes) -> str:
    """A copy of tiny model ``base`` with config.json fields changed."""
    folder = tmp_path / f"{base}-variant"
    shutil.copytree(tiny.path(base), folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))
    return str(folder)


def test_refuses_what_it_cannot_run(tiny, tmp_path):
    from pagoda import LLM
    from pagoda.config import EngineArgs

    # Falcon (ALiBi) is refused by name: before transformers 5.25 because its attention bypassed AttentionInterface,
    # from 5.25 (which routes it through the interface) because pagoda's backends have no ALiBi
    with pytest.raises(ValueError, match=r"FalconForCausalLM('s attention does not go through.*AttentionInterface"
                                         r"| uses ALiBi position biases \(config alibi=true\))"):
        LLM(str(tiny.path("falcon")), dtype="float32")
    unknown = _variant(tiny, tmp_path, "llama", architectures=["FooBarForCausalLM"], model_type="foobar")
    with pytest.raises(ValueError, match=r"FooBarForCausalLM.*--model-impl transformers.*plugin"):
        EngineArgs(model=unknown).create_config()
    window = _variant(tiny, tmp_path, "mistral", sliding_window=64)
    with pytest.raises(ValueError, match=r"sliding-window attention \(config sliding_window=64"):
        LLM(window, dtype="float32", model_impl="transformers")
    # A window as long as max_position_embeddings but shorter than the context YaRN extends it to (it used to pass
    # the check, and the window was then not applied)
    max_pos = json.loads((tiny.path("mistral") / "config.json").read_text())["max_position_embeddings"]
    yarn = {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": max_pos, "rope_theta": 10000.0}
    shutil.rmtree(window)
    window = _variant(tiny, tmp_path, "mistral", sliding_window=max_pos, rope_scaling=yarn, rope_parameters=yarn)
    with pytest.raises(ValueError, match=rf"sliding_window={max_pos}, narrower than the model's longest context, "
                                         rf"{2 * max_pos} positions"):
        LLM(window, dtype="float32", model_impl="transformers")


REMOTE_CODE = '''
from transformers import LlamaConfig, LlamaForCausalLM


class ToyRemoteConfig(LlamaConfig):
    model_type = "toy_remote"


class ToyRemoteForCausalLM(LlamaForCausalLM):
    config_class = ToyRemoteConfig
'''


def test_remote_code_needs_the_flag(tiny, tmp_path):
    from pagoda import LLM
    from pagoda.config import EngineArgs

    folder = _variant(tiny, tmp_path, "llama", architectures=["ToyRemoteForCausalLM"], model_type="toy_remote",
                      auto_map={"AutoConfig": "modeling_toy.ToyRemoteConfig",
                                "AutoModelForCausalLM": "modeling_toy.ToyRemoteForCausalLM"})
    (tmp_path / "llama-variant" / "modeling_toy.py").write_text(REMOTE_CODE)
    with pytest.raises(ValueError, match=r"ToyRemoteForCausalLM.*remote code.*--trust-remote-code"):
        EngineArgs(model=folder).create_config()
    llm = LLM(folder, dtype="float32", trust_remote_code=True, max_num_batched_tokens=STEP_TOKENS)
    model = llm.llm_engine.core.runner.model
    assert type(model.hf).__name__ == "ToyRemoteForCausalLM"
    outs = llm.generate(BATCH[:2], greedy(NEW, logprobs=5), use_tqdm=False)
    _assert_matches_hf(tiny, "llama", outs)  # the remote class is Llama: HF Llama on the same weights
    llm.shutdown()


def test_fallback_features():
    from pagoda.models.registry import model_supports
    from pagoda.models.transformers_backend import TransformersForCausalLM

    assert model_supports(TransformersForCausalLM, "cuda_graphs")  # when its start-up check passes
    assert not model_supports(TransformersForCausalLM, "quantization")
    assert model_supports(TransformersForCausalLM, "prefix_caching")


def test_attention_function_output_layout():
    """The registered function returns [1, T, H, D] like transformers' own, from pagoda's backend."""
    from pagoda.attention.backend import get_backend
    from pagoda.attention.metadata import AttentionMetadata
    from pagoda.models.transformers_attention import STEP_ATTR, StepContext, pagoda_attention

    torch.manual_seed(0)
    T, H, Hkv, D, bs = 5, 4, 2, 8, 4
    backend = get_backend("torch")
    caches = [(torch.zeros(4, Hkv, bs, D), torch.zeros(4, Hkv, bs, D))]
    meta = AttentionMetadata(
        query_start_loc=torch.tensor([0, T], dtype=torch.int32), seq_lens=torch.tensor([T], dtype=torch.int32),
        block_tables=torch.tensor([[1, 2]], dtype=torch.int32), slot_mapping=torch.arange(T) + bs,
        max_query_len=T, max_seq_len=T, query_lens_cpu=[T], seq_lens_cpu=[T],
    )
    module = torch.nn.Module()
    module.layer_idx = 0
    module.__dict__[STEP_ATTR] = StepContext(caches, meta, backend)
    q, k, v = torch.randn(1, H, T, D), torch.randn(1, Hkv, T, D), torch.randn(1, Hkv, T, D)
    out, _ = pagoda_attention(module, q, k, v, None, scaling=0.3)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3, enable_gqa=True)
    torch.testing.assert_close(out, ref.transpose(1, 2))
    with pytest.raises(RuntimeError, match="softcap"):
        pagoda_attention(module, q, k, v, None, softcap=30.0)


def test_docs_table_matches_registry():
    from pathlib import Path

    from pagoda.models.support_table import models_table

    text = (Path(__file__).parent.parent / "docs" / "models.md").read_text()
    start, end = "<!-- models-table:start -->\n", "\n<!-- models-table:end -->"
    embedded = text[text.index(start) + len(start): text.index(end)]
    assert embedded.strip() == models_table().strip(), "docs/models.md is stale: paste `pagoda models` output"


def test_tested_list_is_what_this_file_tests():
    from tiny_models import ARCH_CONFIGS

    from pagoda.models.transformers_support import TESTED_FALLBACK_ARCHS

    assert set(TESTED_FALLBACK_ARCHS) == {ARCH_CONFIGS[a][1] for a in [*FALLBACK_ARCHS, "llama"]}


def test_models_command_prints_the_table(capsys):
    from pagoda.entrypoints.cli import main
    from pagoda.models.support_table import models_table

    main(["models"])
    out = capsys.readouterr().out
    assert out == models_table()
    assert "| `LlamaForCausalLM` | pagoda" in out and "| transformers fallback | yes | yes | yes | no |" in out
    assert "| `XLMRobertaForSequenceClassification` | pagoda `bert.BertForSequenceClassification` | classify |" in out
