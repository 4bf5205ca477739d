"""Multi-LoRA adversarial review: every engine feature with adapters, the slot / host-cache machinery, the PEFT
configs people ship, and the scheduler's ``max_loras`` invariant, against PEFT (``PeftModel`` in fp32, greedy).

Adapters are made by test_lora's helpers (``get_peft_model(init_lora_weights=False)`` then ``save_pretrained``).
"""

from __future__ import annotations

import os
import random
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

from test_lora import LONG, PROMPTS, _make_adapter, _no_gptqmodel, _peft_greedy  # noqa: E402

NEW = 12
GREEDY = SamplingParams(max_tokens=NEW, temperature=0.0, ignore_eos=True)
LONG2 = [1] + [(5 * i + 3) % 300 + 4 for i in range(50)]  # 51 tokens, no block in common with LONG


@pytest.fixture(scope="module")
def rv(tiny, tmp_path_factory):
    """The tiny Llama, three adapters (plain r=8, r=4, rsLoRA r=8) and their cached PEFT greedy references."""
    root = tmp_path_factory.mktemp("lora_review")
    base = tiny.path("llama")
    paths = {"a": _make_adapter(base, root / "a", 1, r=8, lora_alpha=16),
             "b": _make_adapter(base, root / "b", 2, r=4, lora_alpha=8),
             "c": _make_adapter(base, root / "c", 3, r=8, lora_alpha=8, use_rslora=True)}
    reqs = {n: LoRARequest(n, i + 1, str(p)) for i, (n, p) in enumerate(paths.items())}
    refs: dict[tuple[str, tuple[int, ...]], list[int]] = {}

    def ref(which: str, prompt: list[int], folder: Path | None = None) -> list[int]:
        key = (str(folder) if folder is not None else which, tuple(prompt))
        if key not in refs:
            refs[key] = _peft_greedy(base, folder if folder is not None else paths.get(which), prompt, NEW)
        return refs[key]

    return {"base": base, "root": root, "paths": paths, "req": reqs, "ref": ref}


# ------------------------------------------------------------------ engine features
MIX_PROMPTS = [PROMPTS[0], LONG, PROMPTS[1], LONG2, PROMPTS[2], LONG, LONG2, PROMPTS[0]]
MIX_PLAN = ["a", "b", "base", "c", "a", "c", "b", "base"]


@pytest.mark.parametrize("kwargs", [
    {"max_loras": 1, "max_num_batched_tokens": 16},  # 3 adapters through one slot and one host copy, chunked
    {"max_loras": 2, "max_num_seqs": 2, "max_num_batched_tokens": 16, "long_prefill_token_threshold": 8},
    {"max_loras": 2, "num_gpu_blocks_override": 10},  # preemption and recompute under KV pressure
    {"max_loras": 2, "async_scheduling": True, "max_num_batched_tokens": 16},
    {"max_loras": 1, "scheduling_policy": "priority"},
    {"max_loras": 3, "num_gpu_blocks_override": 10, "kv_offloading_size": 0.01},  # the host KV tier
    {"max_loras": 3, "enable_prefix_caching": False, "max_num_batched_tokens": 16},
], ids=["ml1-chunked", "seqs2-threshold", "preempt", "async", "priority", "offload", "no-prefix-cache"])
def test_mixed_batch_matches_peft_under_engine_features(rv, kwargs):
    """Three adapters and the base model in one generate call, under each scheduling feature: every prompt's
    greedy tokens equal PEFT's with its adapter; the running requests never held more than max_loras adapters."""
    ref, req = rv["ref"], rv["req"]
    with LLM(str(rv["base"]), dtype="float32", enable_lora=True, **kwargs) as llm:
        outs = llm.generate([{"prompt_token_ids": p} for p in MIX_PROMPTS], GREEDY, use_tqdm=False,
                            lora_request=[None if w == "base" else req[w] for w in MIX_PLAN])
        lora = llm.llm_engine.core.runner.lora
        assert lora is not None and len(lora.loaded_ids()) <= max(kwargs["max_loras"], 1)
        if "num_gpu_blocks_override" in kwargs:
            assert llm.llm_engine.core.scheduler.num_preemptions_total > 0, "no preemption: the case is not tested"
    for i, (w, p, o) in enumerate(zip(MIX_PLAN, MIX_PROMPTS, outs, strict=True)):
        assert o.outputs[0].token_ids == ref(w, p), (i, w)


def _peft_logprobs(rv, which: str, ids: list[int]) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _no_gptqmodel()
    model = AutoModelForCausalLM.from_pretrained(rv["base"], dtype=torch.float32).eval()
    if which != "base":
        model = PeftModel.from_pretrained(model, rv["paths"][which]).eval()
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)


@pytest.fixture(scope="module")
def llm_chunked(rv):
    """max_loras=2, a 16-token budget: LONG's prompt spans three steps."""
    llm = LLM(str(rv["base"]), dtype="float32", enable_lora=True, max_loras=2, max_num_batched_tokens=16)
    yield llm
    llm.shutdown()


def test_prompt_and_sample_logprobs_are_the_adapters(rv, llm_chunked):
    """prompt_logprobs over a chunked prompt and the sampled tokens' logprobs equal PEFT's log-softmax with the
    request's adapter (and the base model's without one)."""
    sp = SamplingParams(max_tokens=4, temperature=0.0, prompt_logprobs=0, logprobs=0, ignore_eos=True)
    for which in ("a", "base"):
        (o,) = llm_chunked.generate({"prompt_token_ids": LONG}, sp, use_tqdm=False,
                                    lora_request=None if which == "base" else rv["req"][which])
        seq = LONG + list(o.outputs[0].token_ids)
        lp = _peft_logprobs(rv, which, seq)
        ours = [d[t].logprob for d, t in zip(o.prompt_logprobs[1:], LONG[1:], strict=True)]
        ours += [d[t].logprob for d, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids, strict=True)]
        theirs = [lp[i, seq[i + 1]].item() for i in range(len(seq) - 1)]
        assert ours == pytest.approx(theirs, abs=1e-4), which


def test_forked_samples_keep_the_adapter(rv, llm_chunked):
    """n > 1: every child runs with the parent's adapter (greedy children equal PEFT's); seeded children are the
    same alone and in a batch with other adapters, and differ from the base model's."""
    (o,) = llm_chunked.generate({"prompt_token_ids": PROMPTS[1]}, SamplingParams(n=3, **_greedy_kw()),
                                use_tqdm=False, lora_request=rv["req"]["a"])
    assert [c.token_ids for c in o.outputs] == [rv["ref"]("a", PROMPTS[1])] * 3
    sp = SamplingParams(n=2, max_tokens=NEW, temperature=1.0, seed=7, ignore_eos=True)
    (alone,) = llm_chunked.generate({"prompt_token_ids": PROMPTS[1]}, sp, use_tqdm=False, lora_request=rv["req"]["a"])
    mixed = llm_chunked.generate([{"prompt_token_ids": p} for p in (PROMPTS[0], PROMPTS[1], LONG)], sp,
                                 use_tqdm=False, lora_request=[rv["req"]["b"], rv["req"]["a"], None])
    (base,) = llm_chunked.generate({"prompt_token_ids": PROMPTS[1]}, sp, use_tqdm=False)
    toks = [[c.token_ids for c in r.outputs] for r in (alone, mixed[1], base)]
    assert toks[0] == toks[1] != toks[2]


def _greedy_kw() -> dict:
    return {"max_tokens": NEW, "temperature": 0.0, "ignore_eos": True}


def test_abort_mid_run_leaves_the_others_right(rv, llm_chunked):
    """An adapter request aborted mid-prefill: the other adapter's request still equals PEFT; nothing stays."""
    eng = llm_chunked.llm_engine
    eng.add_request("x1", {"prompt_token_ids": LONG}, SamplingParams(max_tokens=50, ignore_eos=True),
                    lora_request=rv["req"]["a"])
    eng.add_request("x2", {"prompt_token_ids": PROMPTS[0]}, SamplingParams(**_greedy_kw()),
                    lora_request=rv["req"]["c"])
    eng.step()
    eng.abort_request(["x1"])
    done = {}
    while eng.has_unfinished_requests():
        done.update({r.request_id: r for r in eng.step() if r.finished})
    assert done["x2"].outputs[0].token_ids == rv["ref"]("c", PROMPTS[0])


def test_structured_output_with_an_adapter(rv, llm_chunked):
    sp = SamplingParams(max_tokens=20, temperature=0.0, structured_outputs={"choice": ["yes", "no", "maybe"]})
    outs = llm_chunked.generate(["hello there"] * 2, sp, use_tqdm=False, lora_request=[rv["req"]["a"], None])
    assert all(o.outputs[0].text in ("yes", "no", "maybe") for o in outs)


def test_host_tier_restores_an_adapters_blocks_only_to_it(rv, tiny):
    """An adapter request's blocks pushed out to the host KV tier come back for the same adapter (cached tokens,
    PEFT's tokens), never for another adapter or the base model."""
    from test_host_tier import bytes_per_block

    probe = tiny.llm("llama", num_gpu_blocks_override=8)
    size = 64 * bytes_per_block(probe) / 2**30
    ref, a, b = rv["ref"], rv["req"]["a"], rv["req"]["b"]
    with LLM(str(rv["base"]), dtype="float32", enable_lora=True, num_gpu_blocks_override=8,
             kv_offloading_size=size) as llm:
        core = llm.llm_engine.core
        first = llm.generate({"prompt_token_ids": LONG}, GREEDY, use_tqdm=False, lora_request=a)[0]
        for p in [PROMPTS[i] * 5 for i in range(3)] + [LONG2]:  # push a's blocks out of the device pool
            llm.generate({"prompt_token_ids": p}, GREEDY, use_tqdm=False)
        loaded = core.kv.host.num_loaded
        other = llm.generate({"prompt_token_ids": LONG}, GREEDY, use_tqdm=False, lora_request=b)[0]
        base = llm.generate({"prompt_token_ids": LONG}, GREEDY, use_tqdm=False)[0]
        assert core.kv.host.num_loaded == loaded and other.num_cached_tokens == base.num_cached_tokens == 0
        for p in [PROMPTS[i] * 5 for i in range(3)]:
            llm.generate({"prompt_token_ids": p}, GREEDY, use_tqdm=False)
        again = llm.generate({"prompt_token_ids": LONG}, GREEDY, use_tqdm=False, lora_request=a)[0]
        assert core.kv.host.num_loaded > loaded and again.num_cached_tokens == 32
    assert first.outputs[0].token_ids == again.outputs[0].token_ids == ref("a", LONG)
    assert other.outputs[0].token_ids == ref("b", LONG) and base.outputs[0].token_ids == ref("base", LONG)


# ------------------------------------------------------------------ slots and the host cache
def test_folder_changed_on_disk_is_refused_not_served_stale(rv):
    """An id's folder rewritten with other weights after loading: a new request under the id is a ValidationError
    naming the change (not the stale cached weights, nor the new weights over the old weights' KV blocks); a
    request admitted before the change runs to the end with the weights its id was loaded with (the host cache keeps
    a live request's adapter past max_cpu_loras, so it is never read again mid-run); a touched but identical folder
    serves on."""
    folder = rv["root"] / "changing"
    shutil.copytree(rv["paths"]["a"], folder)
    x = LoRARequest("x", 9, str(folder))
    with LLM(str(rv["base"]), dtype="float32", enable_lora=True, max_loras=1, max_cpu_loras=1) as llm:
        (o,) = llm.generate({"prompt_token_ids": LONG}, GREEDY, use_tqdm=False, lora_request=x)
        assert o.outputs[0].token_ids == rv["ref"]("a", LONG)
        st = folder / "adapter_model.safetensors"
        os.utime(st, ns=(st.stat().st_atime_ns, st.stat().st_mtime_ns + 10**9))  # touched, same bytes
        (o,) = llm.generate({"prompt_token_ids": LONG}, GREEDY, use_tqdm=False, lora_request=x)
        assert o.outputs[0].token_ids == rv["ref"]("a", LONG) and o.num_cached_tokens == 32
        # c takes the one slot; requests of x then c are added (one host copy allowed, but x's request is live, so
        # x's copy is kept), then x's folder changes: x's request still runs with the weights it was admitted with
        llm.generate({"prompt_token_ids": PROMPTS[2]}, GREEDY, use_tqdm=False, lora_request=rv["req"]["c"])
        eng = llm.llm_engine
        eng.add_request("x", {"prompt_token_ids": PROMPTS[0]}, SamplingParams(**_greedy_kw()), lora_request=x)
        eng.add_request("c", {"prompt_token_ids": PROMPTS[1]}, SamplingParams(**_greedy_kw()),
                        lora_request=rv["req"]["c"])
        shutil.rmtree(folder)
        shutil.copytree(rv["paths"]["b"], folder)
        done = {}
        while eng.has_unfinished_requests():
            done.update({r.request_id: r for r in eng.step() if r.finished})
        assert done["x"].outputs[0].token_ids == rv["ref"]("a", PROMPTS[0])
        assert done["c"].outputs[0].token_ids == rv["ref"]("c", PROMPTS[1])
        assert llm.llm_engine.core.runner.lora.loaded_ids() == [rv["req"]["c"].lora_int_id]  # trimmed once idle
        with pytest.raises(ValidationError, match="files changed on disk since lora_int_id 9 was loaded") as exc:
            llm.generate({"prompt_token_ids": PROMPTS[0]}, GREEDY, use_tqdm=False, lora_request=x)
        assert "give the new weights a new lora_int_id" in str(exc.value)
        # the new weights under a new id: served as they are now (b's)
        (o,) = llm.generate({"prompt_token_ids": LONG}, GREEDY, use_tqdm=False,
                            lora_request=LoRARequest("x2", 10, str(folder)))
        assert o.outputs[0].token_ids == rv["ref"]("b", LONG) and o.num_cached_tokens == 0


def test_same_folder_two_ids_and_many_adapters_over_time(rv):
    """One folder under two ids: both equal PEFT, their KV blocks are kept apart. Twelve ids over time through
    max_cpu_loras=2: the host cache never holds more than two, the slots stay max_loras."""
    a = str(rv["paths"]["a"])
    with LLM(str(rv["base"]), dtype="float32", enable_lora=True, max_loras=2, max_cpu_loras=2) as llm:
        runs = [llm.generate({"prompt_token_ids": LONG}, GREEDY, use_tqdm=False, lora_request=lr)[0]
                for lr in (LoRARequest("a1", 1, a), LoRARequest("a2", 2, a), LoRARequest("a1", 1, a))]
        assert [r.num_cached_tokens for r in runs] == [0, 0, 32]
        assert all(r.outputs[0].token_ids == rv["ref"]("a", LONG) for r in runs)
        lora = llm.llm_engine.core.runner.lora
        assert lora is not None
        names = ["a", "b", "c"] * 4
        outs = llm.generate([{"prompt_token_ids": PROMPTS[i % 3]} for i in range(12)], GREEDY, use_tqdm=False,
                            lora_request=[LoRARequest(f"n{i}", 100 + i, str(rv["paths"][n]))
                                          for i, n in enumerate(names)])
        assert len(lora.loaded_ids()) <= 2 and len(lora._slot_ids) == 2
    for i, (n, o) in enumerate(zip(names, outs, strict=True)):
        assert o.outputs[0].token_ids == rv["ref"](n, PROMPTS[i % 3]), i


# ------------------------------------------------------------------ PEFT configs
CONFIGS = {
    "regex-targets": {"r": 4, "lora_alpha": 8, "target_modules": r".*\.(q_proj|v_proj|down_proj)"},
    "all-linear": {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"},
    "layers-to-transform": {"r": 4, "lora_alpha": 8, "layers_to_transform": [1], "layers_pattern": "layers"},
    "fan-in-fan-out-dropout": {"r": 4, "lora_alpha": 8, "fan_in_fan_out": True, "lora_dropout": 0.3},
    "regex-patterns-rslora": {"r": 4, "lora_alpha": 8, "use_rslora": True,
                              "rank_pattern": {"model.layers.0.self_attn.q_proj": 2, "^model.layers.1.mlp.*": 6},
                              "alpha_pattern": {"layers.1.self_attn.v_proj": 40, "up_proj": 1}},
    "exclude-modules": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"],
                        "exclude_modules": ["model.layers.0.self_attn.q_proj"]},
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_shipped_peft_configs_match_peft(rv, name):
    folder = rv["root"] / f"cfg_{name}"
    if not folder.exists():
        _make_adapter(rv["base"], folder, 11, **CONFIGS[name])
    with LLM(str(rv["base"]), dtype="float32", enable_lora=True, max_lora_rank=8) as llm:
        (o,) = llm.generate({"prompt_token_ids": PROMPTS[0]}, GREEDY, use_tqdm=False,
                            lora_request=LoRARequest(name, 1, str(folder)))
    assert o.outputs[0].token_ids == rv["ref"](name, PROMPTS[0], folder)


def test_adapter_file_variants(rv):
    """fp16 / bf16 adapter tensors on an fp32 model (the weights as saved: PEFT's tokens), keys without the
    ``base_model.model.`` prefix (read as vLLM reads them: the same adapter; PEFT itself skips such keys), and an
    adapter saved with ``save_embedding_layers`` (a ValueError naming the weight)."""
    from safetensors.torch import load_file, save_file

    variants = {"fp16": lambda k, v: (k, v.half()), "bf16": lambda k, v: (k, v.bfloat16()),
                "noprefix": lambda k, v: (k.removeprefix("base_model.model."), v)}
    folders = {}
    for name, fn in variants.items():
        folder = folders[name] = rv["root"] / f"var_{name}"
        shutil.copytree(rv["paths"]["a"], folder, dirs_exist_ok=True)
        sd = load_file(str(folder / "adapter_model.safetensors"))
        save_file(dict(fn(k, v) for k, v in sd.items()), str(folder / "adapter_model.safetensors"))
    assert _peft_greedy(rv["base"], folders["fp16"], PROMPTS[0], NEW) == rv["ref"]("a", PROMPTS[0])
    with LLM(str(rv["base"]), dtype="float32", enable_lora=True, max_loras=3) as llm:
        outs = llm.generate([{"prompt_token_ids": PROMPTS[0]}] * 3, GREEDY, use_tqdm=False,
                            lora_request=[LoRARequest(n, i + 1, str(f)) for i, (n, f) in enumerate(folders.items())])
        assert all(o.outputs[0].token_ids == rv["ref"]("a", PROMPTS[0]) for o in outs)
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        _no_gptqmodel()
        model = AutoModelForCausalLM.from_pretrained(rv["base"], dtype=torch.float32)
        emb = rv["root"] / "emb"
        get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False)).save_pretrained(
            emb, save_embedding_layers=True)
        with pytest.raises(ValidationError, match="is not a LoRA weight of a supported module"):
            llm.generate("hi", GREEDY, use_tqdm=False, lora_request=LoRARequest("emb", 9, str(emb)))


# ------------------------------------------------------------------ the scheduler, no model
@pytest.mark.parametrize("policy", ["fcfs", "priority"])
@pytest.mark.parametrize("max_loras", [1, 2])
def test_scheduler_never_exceeds_max_loras_and_every_request_finishes(policy, max_loras):
    """Random arrivals of four adapters and the base model, aborts, KV pressure (preemption): after every step the
    running requests use at most max_loras adapters, and every request finishes."""
    for seed in range(6):
        rng = random.Random(seed)
        kv = KVCacheManager(24, 4, enable_prefix_caching=True)
        s = Scheduler(kv, max_num_seqs=4, max_num_batched_tokens=16, max_model_len=64, max_loras=max_loras,
                      scheduling_policy=policy)
        reqs = []
        for step in range(5000):
            if len(reqs) < 60 and rng.random() < 0.5:
                prompt = [rng.randrange(3, 50) for _ in range(rng.randrange(1, 30))]
                r = Request(f"r{len(reqs)}", prompt, SamplingParams(max_tokens=8), {2}, rng.randrange(1, 10),
                            arrival_time=float(len(reqs)), priority=rng.randrange(3) if policy == "priority" else 0)
                r.adapter_id = rng.choice([None, 1, 2, 3, 4])
                reqs.append(r)
                s.add_request(r)
            if rng.random() < 0.03 and s.requests:
                s.abort_requests([rng.choice(sorted(s.requests))])
            out = s.schedule()
            assert len({r.adapter_id for r in s.running} - {None}) <= max_loras, (seed, step)
            s.update_from_output(out, {x.request.request_id: [rng.randrange(3, 50)] for x in out.scheduled
                                       if x.sample})
            if len(reqs) == 60 and not s.has_unfinished_requests():
                break
        assert all(r.status.finished for r in reqs), seed


def test_waiting_by_reason_splits_deferred_from_capacity():
    """vLLM's ``num_requests_waiting_by_reason``: requests held back for a LoRA slot or a grammar compile are
    "deferred", the rest "capacity"; the two add up to ``num_requests_waiting``."""
    from pagoda.engine.messages import SchedulerStats
    from pagoda.entrypoints.openai.metrics import PrometheusStatLogger

    prom = PrometheusStatLogger("m", prefix="vllm", max_loras=1)
    prom.on_step(SchedulerStats(num_waiting=5, num_waiting_deferred=2))
    text = prom.render()[0].decode()
    got = {reason: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
           if line.startswith("vllm:num_requests_waiting_by_reason{")
           for reason in ("capacity", "deferred") if f'reason="{reason}"' in line}
    assert got == {"capacity": 3.0, "deferred": 2.0}
