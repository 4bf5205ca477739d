"""Multi-LoRA adapters (``enable_lora``), offline: PEFT adapters on the tiny Llama and Qwen2.

The reference is PEFT itself: ``PeftModel`` on the same fp32 weights, greedy. Adapters are made by
``get_peft_model(init_lora_weights=False)`` (random, nonzero lora_B) on q/k/v/o/gate/up/down and saved with
``save_pretrained``; bad adapters are copies with one thing changed. Covered: token-for-token greedy equality, per
prompt adapters in one batch (two adapters and the base model), ``max_loras=1`` with two adapters, prefix caching
on/off and no block shared across adapters, each refusal's message with the engine serving on, the scheduler's
``max_loras`` rule and the block-hash key (no model).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch

from pagoda import LLM, SamplingParams
from pagoda.core.kv_cache_manager import KVCacheManager
from pagoda.core.request import Request
from pagoda.core.scheduler import Scheduler
from pagoda.errors import ValidationError
from pagoda.lora.request import LoRARequest

peft = pytest.importorskip("peft")

NEW = 12
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPTS = [[1, 5, 9, 33, 70, 12], [1, 40, 41, 42, 7, 300, 8, 90, 11], [1, 250, 3, 17]]
LONG = [1] + [(7 * i + 11) % 300 + 4 for i in range(40)]  # 41 tokens: two full blocks of 16
GREEDY = SamplingParams(max_tokens=NEW, temperature=0.0, ignore_eos=True)


def _no_gptqmodel() -> None:
    """peft probes gptqmodel (installed for the quantization tests) and wants optimum with it: say it is absent."""
    import peft.import_utils
    import peft.tuners.lora.awq
    import peft.tuners.lora.gptq

    for mod in (peft.import_utils, peft.tuners.lora.gptq, peft.tuners.lora.awq):
        mod.is_gptqmodel_available = lambda: False  # type: ignore[attr-defined]


def _make_adapter(base: Path, out: Path, seed: int, **cfg) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    _no_gptqmodel()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    pm = get_peft_model(model, LoraConfig(init_lora_weights=False, **{"target_modules": TARGETS, **cfg}))
    pm.save_pretrained(out)
    return out


def _peft_greedy(base: Path, adapter: Path | None, prompt: list[int], n: int = NEW) -> list[int]:
    from transformers import AutoModelForCausalLM, GenerationConfig

    _no_gptqmodel()
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None  # transformers 5 fills a None eos_token_id from it (ignore_eos)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).eval()
    gc = GenerationConfig(max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), generation_config=gc)
    tokens = out[0, len(prompt):].tolist()
    assert len(tokens) == n, "HF stopped early: EOS was not disabled"
    return tokens


@pytest.fixture(scope="module")
def setup(tiny, tmp_path_factory):
    """The tiny Llama, two adapters for it (plain; rsLoRA with a rank_pattern and fewer targets), and their PEFT
    references for every prompt (cached)."""
    root = tmp_path_factory.mktemp("lora")
    base = tiny.path("llama")
    a = _make_adapter(base, root / "a", 1, r=8, lora_alpha=16)
    b = _make_adapter(base, root / "b", 2, r=4, lora_alpha=8, use_rslora=True, rank_pattern={"down_proj": 6},
                      alpha_pattern={"o_proj": 3})
    refs: dict[tuple[str, tuple[int, ...]], list[int]] = {}

    def ref(which: str, prompt: list[int]) -> list[int]:
        key = (which, tuple(prompt))
        if key not in refs:
            refs[key] = _peft_greedy(base, {"a": a, "b": b, "base": None}[which], prompt)
        return refs[key]

    return {"base": base, "a": a, "b": b, "root": root, "ref": ref}


@pytest.fixture(scope="module")
def llm2(setup):
    """max_loras=2, prefix caching on (the default)."""
    llm = LLM(str(setup["base"]), dtype="float32", enable_lora=True, max_loras=2, max_lora_rank=16)
    yield llm
    llm.shutdown()


def _toks(outs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outs]


def test_greedy_matches_peft_per_prompt_adapters(setup, llm2):
    """Two adapters and the base model in one batch: each prompt's greedy tokens equal PEFT's with its adapter; the
    outputs carry their LoRARequest."""
    ref = setup["ref"]
    la, lb = LoRARequest("a", 1, str(setup["a"])), LoRARequest("b", 2, str(setup["b"]))
    plan = [("a", la), ("base", None), ("b", lb), ("a", la), ("b", lb), ("base", None)]
    prompts = [{"prompt_token_ids": PROMPTS[i % 3]} for i in range(len(plan))]
    outs = llm2.generate(prompts, GREEDY, use_tqdm=False, lora_request=[lr for _, lr in plan])
    for i, ((which, lr), out) in enumerate(zip(plan, outs, strict=True)):
        assert out.outputs[0].token_ids == ref(which, PROMPTS[i % 3]), (i, which)
        assert out.lora_request == lr
    assert ref("a", PROMPTS[0]) != ref("base", PROMPTS[0]) != ref("b", PROMPTS[0])  # the adapters matter
    # one adapter for every prompt
    outs = llm2.generate([{"prompt_token_ids": p} for p in PROMPTS], GREEDY, use_tqdm=False, lora_request=lb)
    assert _toks(outs) == [ref("b", p) for p in PROMPTS]


def test_qwen2_adapter_matches_peft(tiny, tmp_path):
    base = tiny.path("qwen2")
    ad = _make_adapter(base, tmp_path / "q", 3, r=8, lora_alpha=32)
    with LLM(str(base), dtype="float32", enable_lora=True, max_lora_rank=8) as llm:
        outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS[:2]], GREEDY, use_tqdm=False,
                            lora_request=LoRARequest("q", 7, str(ad)))
    assert _toks(outs) == [_peft_greedy(base, ad, p) for p in PROMPTS[:2]]


def test_max_loras_one_serves_two_adapters(setup):
    """One slot, two adapters (and the base model) in one batch: every request completes with its own tokens, and
    the host cache (max_cpu_loras default = max_loras) reloads the dropped adapter when its requests run."""
    ref = setup["ref"]
    la, lb = LoRARequest("a", 1, str(setup["a"])), LoRARequest("b", 2, str(setup["b"]))
    plan = [la, lb, None, la, lb, lb, None, la]
    with LLM(str(setup["base"]), dtype="float32", enable_lora=True, max_loras=1) as llm:
        outs = llm.generate([{"prompt_token_ids": PROMPTS[i % 3]} for i in range(len(plan))], GREEDY,
                            use_tqdm=False, lora_request=plan)
        runner = llm.llm_engine.core.runner
        assert runner.lora is not None and len(runner.lora.loaded_ids()) == 1
    for i, (lr, out) in enumerate(zip(plan, outs, strict=True)):
        which = "base" if lr is None else lr.lora_name
        assert out.outputs[0].token_ids == ref(which, PROMPTS[i % 3]), (i, which)


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_prefix_cache_never_shared_across_adapters(setup, prefix_caching):
    """The same long prompt under adapter a, then b, then a again, then the base model: tokens equal PEFT's each
    time; with prefix caching, b and the base model find no cached block, a's second run finds a's blocks."""
    ref = setup["ref"]
    la, lb = LoRARequest("a", 1, str(setup["a"])), LoRARequest("b", 2, str(setup["b"]))
    with LLM(str(setup["base"]), dtype="float32", enable_lora=True, max_loras=2,
             enable_prefix_caching=prefix_caching) as llm:
        runs = []
        for lr in (la, lb, la, None):
            (out,) = llm.generate({"prompt_token_ids": LONG}, GREEDY, use_tqdm=False, lora_request=lr)
            runs.append(out)
    assert [o.outputs[0].token_ids for o in runs] == [ref(w, LONG) for w in ("a", "b", "a", "base")]
    assert [o.num_cached_tokens for o in runs] == ([0, 0, 32, 0] if prefix_caching else [0, 0, 0, 0])


@pytest.mark.parametrize("kwargs", [{"quantization": "fp8"}, {"dtype": "bfloat16"}], ids=["fp8", "bf16"])
def test_quantized_and_bf16_bases_take_the_delta(setup, llm2, kwargs):
    """The delta adds to whatever computes the base output: online FP8 linears, the CPU's bf16 prepacked (oneDNN)
    linears. Against the fp32 engine with the same adapter (equal to PEFT above) by the top-5 rule; and the adapter
    changes the tokens."""
    from engine_checks import compare_top5, our_top

    la = LoRARequest("a", 1, str(setup["a"]))
    sp = SamplingParams(max_tokens=NEW, temperature=0.0, ignore_eos=True, logprobs=5)
    prompts = [{"prompt_token_ids": p} for p in PROMPTS[:2]]
    ref = llm2.generate(prompts, sp, use_tqdm=False, lora_request=la)
    with LLM(str(setup["base"]), **{"dtype": "float32", **kwargs}, enable_lora=True) as llm:
        ours = llm.generate(prompts, sp, use_tqdm=False, lora_request=la)
        base = llm.generate(prompts, sp, use_tqdm=False)
    for o, r, b in zip(ours, ref, base, strict=True):
        co, cr = o.outputs[0], r.outputs[0]
        compare_top5(co.token_ids, cr.token_ids, [our_top(d) for d in co.logprobs], [our_top(d) for d in cr.logprobs],
                     what=str(kwargs))
        assert co.token_ids != b.outputs[0].token_ids


def _variant(setup, name: str, config: dict | None = None, tensors=None) -> str:
    """A copy of adapter a with ``config`` merged into adapter_config.json and ``tensors(dict)`` applied."""
    from safetensors.torch import load_file, save_file

    out = setup["root"] / name
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(setup["a"], out)
    if config is not None:
        cfg = json.loads((out / "adapter_config.json").read_text())
        cfg.update(config)
        (out / "adapter_config.json").write_text(json.dumps(cfg))
    if tensors is not None:
        sd = load_file(str(out / "adapter_model.safetensors"))
        tensors(sd)
        save_file(sd, str(out / "adapter_model.safetensors"))
    return str(out)


def _first_key(sd: dict, part: str) -> str:
    return next(k for k in sorted(sd) if part in k)


BAD = [
    ("dora", {"use_dora": True}, None, "use_dora=True is not supported"),
    ("bias", {"bias": "all"}, None, "bias='all': adapter biases are not supported"),
    ("save", {"modules_to_save": ["lm_head"]}, None, "modules_to_save=['lm_head'] is not supported"),
    ("embed", {"target_modules": ["q_proj", "embed_tokens"]}, None, "target_modules ['embed_tokens'] not supported"),
    ("unknown", {"target_modules": ["q_proj", "fc1"]}, None, "target_modules ['fc1'] not supported"),
    ("rank", None, None, "has rank 16, over max_lora_rank 8; start the engine with --max-lora-rank 16"),
    ("shape", None, lambda sd: sd.update({(k := _first_key(sd, "q_proj.lora_B")): sd[k][:-1]}),
     "do not fit the model's module"),
    ("missing", None, lambda sd: sd.clear(), "holds no LoRA weights"),
    ("lmhead", None, lambda sd: sd.update({"base_model.model.lm_head.lora_A.weight": torch.zeros(8, 64)}),
     "(a LM head weight: not supported)"),
]


def test_bad_adapters_fail_only_their_request(setup):
    """Each bad adapter: a ValueError (ValidationError on lora_request) naming the adapter and the problem, raised
    when the request is added; the engine then serves the good adapter and the base model on."""
    ref = setup["ref"]
    good = LoRARequest("a", 1, str(setup["a"]))
    with LLM(str(setup["base"]), dtype="float32", enable_lora=True, max_loras=2, max_lora_rank=8) as llm:
        for i, (name, cfg, tensors, msg) in enumerate(BAD):
            if name == "rank":
                path = str(_make_adapter(setup["base"], setup["root"] / "r16", 4, r=16, lora_alpha=16))
            else:
                path = _variant(setup, name, cfg, tensors)
            with pytest.raises(ValidationError, match="lora_request|LoRA adapter") as exc:
                llm.generate({"prompt_token_ids": PROMPTS[0]}, GREEDY, use_tqdm=False,
                             lora_request=LoRARequest(name, 100 + i, path))
            assert msg in str(exc.value), (name, str(exc.value))
            assert f"LoRA adapter {name!r}" in str(exc.value)
            assert exc.value.parameter == "lora_request"
        missing = setup["root"] / "nowhere"
        with pytest.raises(ValueError, match="lora_path is not a folder"):
            llm.generate("hi", GREEDY, use_tqdm=False, lora_request=LoRARequest("gone", 50, str(missing)))
        nofile = Path(_variant(setup, "nofile"))
        (nofile / "adapter_model.safetensors").unlink()
        with pytest.raises(ValueError, match="no adapter_model.safetensors"):
            llm.generate("hi", GREEDY, use_tqdm=False, lora_request=LoRARequest("nofile", 51, str(nofile)))
        with pytest.raises(ValueError, match="load_inplace=True is not supported"):
            llm.generate("hi", GREEDY, use_tqdm=False,
                         lora_request=LoRARequest("x", 52, str(setup["a"]), load_inplace=True))
        with pytest.raises(ValueError, match="lora_request must be a pagoda.lora.request.LoRARequest"):
            llm.generate("hi", GREEDY, use_tqdm=False, lora_request="a")  # type: ignore[arg-type]
        # a batch with one bad adapter: nothing of it stays queued, the message names the prompt
        with pytest.raises(ValidationError, match="prompt 1: LoRA adapter 'dora'"):
            llm.generate([{"prompt_token_ids": p} for p in PROMPTS[:2]], GREEDY, use_tqdm=False,
                         lora_request=[good, LoRARequest("dora", 100, _variant(setup, "dora", {"use_dora": True}))])
        # the engine serves on: the good adapter and the base model
        outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS[:2]], GREEDY, use_tqdm=False,
                            lora_request=[good, None])
        assert _toks(outs) == [ref("a", PROMPTS[0]), ref("base", PROMPTS[1])]
        # one id names one folder for the engine's life
        with pytest.raises(ValidationError, match="lora_int_id 1 already names adapter 'a'"):
            llm.generate("hi", GREEDY, use_tqdm=False, lora_request=LoRARequest("other", 1, str(setup["b"])))
        assert not llm.llm_engine.has_unfinished_requests()


def test_engine_without_lora_and_beam_search_refuse_adapters(setup, llama_llm):
    lr = LoRARequest("a", 1, str(setup["a"]))
    with pytest.raises(ValidationError, match="started without LoRA; start it with enable_lora=True"):
        llama_llm.generate("hi", GREEDY, use_tqdm=False, lora_request=lr)
    from pagoda.sampling_params import BeamSearchParams

    with pytest.raises(ValidationError, match="beam search takes no LoRA adapter"):
        llama_llm.beam_search(["hi"], BeamSearchParams(beam_width=2, max_tokens=2), lora_request=lr)
    assert not llama_llm.llm_engine.has_unfinished_requests()


def test_lora_request_fields():
    with pytest.raises(ValueError, match="lora_int_id must be an integer >= 1"):
        LoRARequest("a", 0, "/x")
    with pytest.raises(ValueError, match="lora_path cannot be empty"):
        LoRARequest("a", 1, "")
    assert LoRARequest("a", 1, "/x") == LoRARequest("a", 2, "/y")  # vLLM: equal by lora_name
    assert len({LoRARequest("a", 1, "/x"), LoRARequest("b", 1, "/x")}) == 2


@pytest.mark.parametrize("kwargs, msg", [
    ({"model": "gemma2"}, "--enable-lora: adapters apply to pagoda's native"),
    ({"model": "qwen2moe"}, "--enable-lora: adapters apply to pagoda's native"),
    ({"speculative_config": {"method": "ngram", "num_speculative_tokens": 2}},
     "--enable-lora: speculative decoding"),
    ({"deterministic": True}, "--enable-lora: the adapters' per-request matmuls are not batch-invariant"),
    ({"max_loras": 2, "max_cpu_loras": 1}, "max_cpu_loras (--max-cpu-loras) 1 must be at least max_loras"),
    ({"enable_lora": False, "max_loras": 2}, "--max-loras configure LoRA adapters: add --enable-lora"),
    ({"lora_dtype": "int8"}, "lora_dtype (--lora-dtype) must be one of"),
])
def test_startup_refusals(tiny, kwargs, msg):
    from pagoda.config import EngineArgs

    kw = {"enable_lora": True, **kwargs}
    model = tiny.path(kw.pop("model", "llama"))
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        EngineArgs(model=str(model), dtype="float32", **kw).create_config()


# ----------------------------------------------------------------------- no model
def _req(rid: str, adapter: int | None) -> Request:
    r = Request(rid, [5, 6, 7, 8, 9], SamplingParams(max_tokens=4), {2}, 4, arrival_time=float(rid[1:]))
    r.adapter_id = adapter
    return r


def test_scheduler_max_loras_waits_in_order_and_base_passes():
    """max_loras=1: a request of another adapter waits (its place kept) while base-model requests behind it run;
    a later request of the running adapter does not pass the waiting one (no adapter waits forever)."""
    kv = KVCacheManager(64, 4)
    s = Scheduler(kv, max_num_seqs=8, max_num_batched_tokens=64, max_model_len=64, max_loras=1)
    for r in (_req("r0", 1), _req("r1", 2), _req("r2", None), _req("r3", 1), _req("r4", None)):
        s.add_request(r)
    out = s.schedule()
    assert [x.request.request_id for x in out.scheduled] == ["r0", "r2", "r4"]
    assert [r.request_id for r in s.waiting] == ["r1", "r3"]
    assert s.num_lora_deferred() == 2  # r1 waits for the slot, r3 behind it (first come, first served)
    s.abort_requests(["r0"])  # adapter 1 no longer runs: adapter 2 gets the slot, r3 (adapter 1) waits again
    out = s.schedule()
    assert "r1" in [x.request.request_id for x in out.scheduled]
    assert [r.request_id for r in s.waiting] == ["r3"]
    assert len({r.adapter_id for r in s.running if r.adapter_id is not None}) == 1
    assert s.num_lora_deferred() == 1
    s.add_request(_req("r5", 2))  # the running adapter's request, behind the held-back r3: held back too
    s.add_request(_req("r6", None))  # a base-model request is never deferred
    assert s.num_lora_deferred() == 2
    assert Scheduler(kv, max_num_seqs=8, max_num_batched_tokens=64, max_model_len=64).num_lora_deferred() == 0


def test_block_hash_keys_the_adapter():
    kv = KVCacheManager(16, 4, enable_prefix_caching=True)
    hashes = {}
    for name, adapter, salt in (("base", None, None), ("a1", 1, None), ("a2", 2, None), ("a1s", 1, "s"),
                                ("s", None, "s")):
        r = Request(name, list(range(10, 22)), SamplingParams(max_tokens=1), {2}, 1, cache_salt=salt)
        r.adapter_id = adapter
        hashes[name] = kv.block_hashes(r, 3)
    assert len({h[0] for h in hashes.values()}) == 5  # every key apart, from the first block on
    assert len({h[2] for h in hashes.values()}) == 5


def test_async_llm_generate_with_adapter(setup, llm2, monkeypatch):
    """AsyncLLM.generate(lora_request=...): the LoRARequest crosses to the engine-core process; tokens equal the
    offline engine's (PEFT's); a bad adapter ends that request with its error and the engine serves on."""
    import asyncio

    from pagoda import AsyncEngineArgs, AsyncLLM

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    la = LoRARequest("a", 1, str(setup["a"]))
    bad = LoRARequest("dora", 2, _variant(setup, "async_dora", {"use_dora": True}))
    prompt = {"prompt_token_ids": PROMPTS[0]}

    async def main():
        engine = AsyncLLM.from_engine_args(AsyncEngineArgs(model=str(setup["base"]), dtype="float32",
                                                           enable_lora=True, kv_cache_memory_bytes=32 * 2**20))
        try:
            outs = [o async for o in engine.generate(prompt, GREEDY, "a", lora_request=la)]
            with pytest.raises(ValueError, match="use_dora=True is not supported"):
                async for _ in engine.generate(prompt, GREEDY, "bad", lora_request=bad):
                    pass
            again = [o async for o in engine.generate(prompt, GREEDY, "a2", lora_request=la)]
            return outs[-1], again[-1]
        finally:
            await engine.shutdown()

    out, again = asyncio.run(main())
    assert out.outputs[0].token_ids == again.outputs[0].token_ids == setup["ref"]("a", PROMPTS[0])
    assert out.lora_request == la


def test_bench_throughput_lora_path(setup, capsys):
    """vLLM's ``bench throughput --lora-path``: every request runs with the adapter under an id drawn from
    1..--max-loras, the warm-up reads each id once, and the run reports as usual; without --enable-lora, or
    with the HF peer, it is refused by name."""
    from pagoda.benchmarks.throughput import lora_requests
    from pagoda.entrypoints.cli import main

    base = ["--log-level", "WARNING", "bench", "throughput", "--model", str(setup["base"]), "--dtype", "float32",
            "--input-len", "8", "--output-len", "4", "--num-prompts", "6", "--lora-path", str(setup["a"])]
    main([*base, "--enable-lora", "--max-loras", "2", "--max-lora-rank", "8"])
    assert "[pagoda] 6 requests in" in capsys.readouterr().out
    ids = [r.lora_int_id for r in lora_requests(argparse.Namespace(lora_path="x", max_loras=2, seed=0), 64)]
    assert set(ids) == {1, 2}
    for extra, msg in (([], "--lora-path needs --enable-lora"),
                       (["--enable-lora", "--backend", "hf"], "--lora-path runs on pagoda only")):
        with pytest.raises(SystemExit, match=msg):
            main([*base, *extra])
