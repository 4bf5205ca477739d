"""EAGLE / EAGLE-3 heads (spec_decode/eagle.py, eagle_head.py) on the tiny Llama, CPU, fp32.

* Tiny random heads written in the published layouts (EAGLE-1: ``fc`` with bias, ``layers.0.*`` without
  ``input_layernorm``, a copy of ``embed_tokens``; EAGLE-3: ``fc`` over three aux states, ``midlayer.*``
  with ``hidden_norm``, ``norm``, ``lm_head`` over a smaller draft vocabulary, ``d2t`` / ``t2d``).
* The proposer's drafts equal a plain-torch forward of the head (full causal attention, recomputed each
  draft step) on the target hidden states HF transformers gives, fed in two chunks.
* EAGLE-3 reads the aux layers vLLM picks (2, L // 2, L - 3) of an 8-layer tiny Llama.
* A head that copies the target's hidden state proposes what the synthetic proposer does: the same
  acceptance counters, some tokens accepted.
* Greedy outputs and logprobs identical with and without the head under chunked prefill, preemption,
  async scheduling and prefix-cache hits; n > 1 runs; the spec_decode counters move; entries freed.
* Bad checkpoints are start-up errors naming the field or tensor.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from engine_checks import PROMPTS, assert_engine_clean, greedy, token_ids

from pagoda.core.request import Request
from pagoda.sampling_params import SamplingParams
from pagoda.spec_decode.eagle import SpecHidden
from pagoda.spec_decode.eagle_head import eagle3_aux_layers

REPEAT = [" ".join(["one two three four five six seven"] * 5), *PROMPTS[1:4]]
TARGET = "llama8"  # the tiny Llama with 8 layers: EAGLE-3 reads vLLM's default aux layers (2, L//2, L-3)
AUX = [2, 4, 5]


def _target_cfg(tiny) -> dict:
    return json.loads((tiny.path(TARGET) / "config.json").read_text())


def _head_tensors(tiny, method: str, seed: int = 5) -> tuple[dict, dict[str, torch.Tensor]]:
    t = _target_cfg(tiny)
    h, inter, heads, kvh, vocab = (t["hidden_size"], t["intermediate_size"], t["num_attention_heads"],
                                   t["num_key_value_heads"], t["vocab_size"])
    d = h // heads
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.08):
        return torch.randn(*shape, generator=g) * scale

    cfg = {"hidden_size": h, "intermediate_size": inter, "num_attention_heads": heads, "num_key_value_heads": kvh,
           "num_hidden_layers": 1, "vocab_size": vocab, "rms_norm_eps": t["rms_norm_eps"],
           "rope_theta": t.get("rope_theta", 10000.0), "max_position_embeddings": 512, "hidden_act": "silu",
           "torch_dtype": "float32"}
    pre = "layers.0." if method == "eagle" else "midlayer."
    qkv_in = h if method == "eagle" else 2 * h
    w = {f"{pre}self_attn.q_proj.weight": rnd(heads * d, qkv_in), f"{pre}self_attn.k_proj.weight": rnd(kvh * d, qkv_in),
         f"{pre}self_attn.v_proj.weight": rnd(kvh * d, qkv_in), f"{pre}self_attn.o_proj.weight": rnd(h, heads * d),
         f"{pre}mlp.gate_proj.weight": rnd(inter, h), f"{pre}mlp.up_proj.weight": rnd(inter, h),
         f"{pre}mlp.down_proj.weight": rnd(h, inter), f"{pre}post_attention_layernorm.weight": 1 + rnd(h)}
    if method == "eagle":
        cfg["architectures"] = ["LlamaForCausalLM"]
        w.update({"fc.weight": rnd(h, 2 * h, scale=0.2), "fc.bias": rnd(h),
                  "embed_tokens.weight": rnd(vocab, h)})  # a copy the head does not use (the target's is shared)
    else:
        dv = vocab // 2
        ids = torch.randperm(vocab, generator=g)[:dv].sort().values
        t2d = torch.zeros(vocab, dtype=torch.bool)
        t2d[ids] = True
        cfg.update({"architectures": ["LlamaForCausalLMEagle3"], "draft_vocab_size": dv})
        w.update({"fc.weight": rnd(h, 3 * h, scale=0.2), f"{pre}input_layernorm.weight": 1 + rnd(h),
                  f"{pre}hidden_norm.weight": 1 + rnd(h), "norm.weight": 1 + rnd(h), "lm_head.weight": rnd(dv, h),
                  "d2t": ids - torch.arange(dv), "t2d": t2d})
    return cfg, w


def _write_head(tiny, name: str, method: str, edit=None) -> str:
    from safetensors.torch import save_file

    folder = tiny.root / name
    if not (folder / "config.json").exists():
        cfg, w = _head_tensors(tiny, method)
        if edit is not None:
            edit(cfg, w)
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(cfg))
        save_file(w, str(folder / "model.safetensors"))
    return str(folder)


def _spec(tiny, method: str, k: int = 3) -> dict:
    return {"method": method, "model": _write_head(tiny, f"head-{method}", method), "num_speculative_tokens": k}


# --------------------------------------------------------------- reference
def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rope(x, pos, theta):
    d = x.shape[-1]
    ang = pos[:, None].double() / theta ** (torch.arange(0, d, 2).double() / d)
    cos, sin = torch.cat([ang, ang], -1).cos()[:, None].float(), torch.cat([ang, ang], -1).sin()[:, None].float()
    return x * cos + torch.cat([-x[..., d // 2 :], x[..., : d // 2]], -1) * sin


def _ref_layer(w, pre, cfg, x, h, pos):
    """Attention over every row (causal) and the MLP; ``x`` the attention input, ``h`` the residual."""
    heads, kvh = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg["hidden_size"] // heads
    t = x.shape[0]
    q = _rope((x @ w[f"{pre}self_attn.q_proj.weight"].T).view(t, heads, d), pos, cfg["rope_theta"])
    k = _rope((x @ w[f"{pre}self_attn.k_proj.weight"].T).view(t, kvh, d), pos, cfg["rope_theta"])
    v = (x @ w[f"{pre}self_attn.v_proj.weight"].T).view(t, kvh, d)
    k, v = k.repeat_interleave(heads // kvh, 1), v.repeat_interleave(heads // kvh, 1)
    s = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(d)
    s = s.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    o = torch.einsum("hqk,khd->qhd", s.softmax(-1), v).reshape(t, heads * d)
    h = h + o @ w[f"{pre}self_attn.o_proj.weight"].T
    m = _rms(h, w[f"{pre}post_attention_layernorm.weight"], cfg["rms_norm_eps"])
    gate, up = m @ w[f"{pre}mlp.gate_proj.weight"].T, m @ w[f"{pre}mlp.up_proj.weight"].T
    return h + (torch.nn.functional.silu(gate) * up) @ w[f"{pre}mlp.down_proj.weight"].T


def _ref_drafts(method, cfg, w, hf, prompt: list[int], k: int) -> list[int]:
    """Entries (token p+1, target state p) for p < len - 1, then k greedy drafts, each step recomputing all."""
    with torch.no_grad():
        out = hf(torch.tensor([prompt]), output_hidden_states=True)
    hs = out.hidden_states  # [0] embeddings, [i] input of layer i, [-1] after the final norm
    emb_w, head_w = hf.model.embed_tokens.weight, hf.lm_head.weight
    n = len(prompt) - 1
    if method == "eagle":
        hid = hs[-1][0, :n]
    else:
        hid = torch.cat([hs[i][0, :n] for i in AUX], -1) @ w["fc.weight"].T
    toks, eps = list(prompt[1:]), cfg["rms_norm_eps"]
    drafts = []
    for _ in range(k):
        pos = torch.arange(len(toks))
        e = emb_w[torch.tensor(toks)]
        if method == "eagle":
            x = torch.cat([e, hid], -1) @ w["fc.weight"].T + w["fc.bias"]
            h = _ref_layer(w, "layers.0.", cfg, x, x, pos)
            nxt = int((h[-1] @ head_w.T).argmax())
        else:
            hn = _rms(hid, w["midlayer.hidden_norm.weight"], eps)
            x = torch.cat([_rms(e, w["midlayer.input_layernorm.weight"], eps), hn], -1)
            h = _ref_layer(w, "midlayer.", cfg, x, hid, pos)
            dd = int((_rms(h[-1], w["norm.weight"], eps) @ w["lm_head.weight"].T).argmax())
            nxt = dd + int(w["d2t"][dd])
        drafts.append(nxt)
        toks.append(nxt)
        hid = torch.cat([hid, h[-1:]])
    return drafts


@pytest.mark.parametrize("method", ["eagle", "eagle3"])
def test_drafts_equal_the_plain_torch_head(tiny, method):
    import transformers

    from pagoda import LLM

    llm = LLM(str(tiny.path(TARGET)), dtype="float32", speculative_config=_spec(tiny, method, k=4))
    prop = llm.llm_engine.core.spec.proposer
    hf = transformers.LlamaForCausalLM.from_pretrained(tiny.path(TARGET), torch_dtype=torch.float32).eval()
    cfg, w = _head_tensors(tiny, method)
    prompt = llm.get_tokenizer()(REPEAT[0]).input_ids[:23]
    with torch.no_grad():
        hs = hf(torch.tensor([prompt]), output_hidden_states=True).hidden_states
    rows = hs[-1][0] if method == "eagle" else torch.cat([hs[i][0] for i in AUX], -1)
    req = Request("r", prompt, SamplingParams(temperature=0.0, max_tokens=8), set(), 8)
    for start, end in ((0, 9), (9, len(prompt) - 1)):  # two steps: a prompt chunk, then the rest
        req.num_computed_tokens = end
        prop.observe(SpecHidden(rows[start:end], ["r"], [0, end - start], [start]), {"r": req})
    assert prop.propose([req], [4]) == [_ref_drafts(method, cfg, w, hf, prompt, 4)]
    prop.retain(set())
    assert len(prop.free_blocks) == prop.num_blocks
    llm.shutdown()


def test_eagle3_aux_layers_as_vllm():
    assert eagle3_aux_layers({}, 32) == (2, 16, 29)
    assert eagle3_aux_layers({"eagle_aux_hidden_state_layer_ids": [9, 1, 5]}, 32) == (1, 5, 9)  # layer order
    assert eagle3_aux_layers({"eagle_config": {"eagle_aux_hidden_state_layer_ids": [0, 3, 7]}}, 8) == (0, 3, 7)
    for cfg, layers in (({}, 4), ({"eagle_aux_hidden_state_layer_ids": [1, 2, 9]}, 8)):  # (2, 2, 1); 9 >= 8
        with pytest.raises(ValueError, match="eagle_aux_hidden_state_layer_ids"):
            eagle3_aux_layers(cfg, layers)


# ------------------------------------------------------------------ engine
_base: dict[str, list] = {}


@pytest.mark.parametrize("method, kwargs", [
    ("eagle", {}),
    ("eagle3", {}),
    ("eagle", {"max_num_batched_tokens": 24, "max_num_seqs": 4}),  # chunked prompts, verifies cut by the budget
    ("eagle3", {"num_gpu_blocks_override": 14}),  # preemption (and recompute) while speculating
    ("eagle3", {"async_scheduling": True}),
], ids=["eagle", "eagle3", "eagle-small-budget", "eagle3-preempt", "eagle3-async"])
def test_greedy_identical_with_eagle(tiny, method, kwargs):
    from pagoda import LLM

    p = greedy(24, logprobs=2)
    if "greedy" not in _base:
        _base["greedy"] = tiny.llm(TARGET).generate(REPEAT, p, use_tqdm=False)
    base = _base["greedy"]
    llm = LLM(str(tiny.path(TARGET)), dtype="float32", speculative_config=_spec(tiny, method), **kwargs)
    for _ in range(2):  # the second run hits the prefix cache the first one filled
        outs = llm.generate(REPEAT, p, use_tqdm=False)
        assert token_ids(outs) == token_ids(base)
        for o, b in zip(outs, base, strict=True):
            for d, e in zip(o.outputs[0].logprobs, b.outputs[0].logprobs, strict=True):
                assert d.keys() == e.keys()
                assert all(math.isclose(d[t].logprob, e[t].logprob, abs_tol=1e-4) for t in d)
    st = llm.llm_engine.core.scheduler.spec_stats
    assert st.num_drafts > 0 and st.num_draft_tokens >= st.num_drafts and len(st.accepted_per_pos) == 3
    assert_engine_clean(llm)
    prop = llm.llm_engine.core.spec.proposer
    assert not prop.entries and len(prop.free_blocks) == prop.num_blocks  # every draft block freed
    if method == "eagle3" and not kwargs:
        outs = llm.generate(REPEAT[:2], SamplingParams(n=3, temperature=1.0, max_tokens=20, ignore_eos=True, seed=1),
                            use_tqdm=False)
        assert all(len(o.outputs) == 3 and all(len(c.token_ids) == 20 for c in o.outputs) for o in outs)
        assert_engine_clean(llm)
    llm.shutdown()


def _copy_head(cfg, w):
    """An EAGLE-1 head whose output is the target's hidden state itself (fc = [0 | I], attention and MLP
    outputs zero): its drafts are the target's greedy token at the last entry, i.e. the newest token, k times."""
    h = cfg["hidden_size"]
    w["fc.weight"] = torch.cat([torch.zeros(h, h), torch.eye(h)], 1)
    w["fc.bias"] = torch.zeros(h)
    w["layers.0.self_attn.o_proj.weight"].zero_()
    w["layers.0.mlp.down_proj.weight"].zero_()


def test_acceptance_counters_of_a_copying_head(tiny):
    """The copying head proposes what the synthetic proposer proposes (the newest token k times), so both
    runs accept exactly the same tokens, and the tiny model's repetitions make some accepted."""
    from pagoda import LLM

    stats = []
    for spec in ({"method": "eagle", "model": _write_head(tiny, "head-copy", "eagle", _copy_head),
                  "num_speculative_tokens": 3}, {"method": "synthetic", "num_speculative_tokens": 3}):
        llm = LLM(str(tiny.path(TARGET)), dtype="float32", speculative_config=spec)
        llm.generate(REPEAT, greedy(24), use_tqdm=False)
        st = llm.llm_engine.core.scheduler.spec_stats
        stats.append((st.num_drafts, st.num_draft_tokens, st.num_accepted_tokens, list(st.accepted_per_pos)))
        llm.shutdown()
    assert stats[0] == stats[1]
    assert stats[0][2] > 0


# --------------------------------------------------------------- bad input
def _drop(name):
    return lambda cfg, w: w.pop(name)


@pytest.mark.parametrize("method, edit, match", [
    ("eagle3", _drop("midlayer.hidden_norm.weight"), "midlayer.hidden_norm.weight"),
    ("eagle", _drop("fc.weight"), "fc.weight"),
    ("eagle", lambda cfg, w: cfg.update(hidden_size=32), "hidden_size"),
    ("eagle3", lambda cfg, w: cfg.update(target_hidden_size=32), "target_hidden_size"),
    ("eagle3", lambda cfg, w: cfg.update(vocab_size=cfg["vocab_size"] + 8), "vocab_size"),
    ("eagle3", _drop("d2t"), "d2t"),
    ("eagle3", lambda cfg, w: w.update(d2t=w["d2t"] + 10_000), "d2t"),
    ("eagle", lambda cfg, w: w.update({"layers.0.mlp.up_proj.weight": torch.zeros(3, 3)}),
     "layers.0.mlp.up_proj.weight"),
    ("eagle", lambda cfg, w: w.update({"bogus.weight": torch.zeros(3)}), "bogus.weight"),
], ids=["missing-midlayer", "missing-fc", "hidden", "target-hidden", "vocab", "no-d2t", "d2t-range", "shape",
        "unknown"])
def test_bad_head_checkpoints_name_the_tensor(tiny, request, method, edit, match):
    from pagoda import LLM

    path = _write_head(tiny, f"bad-{request.node.callspec.id}", method, edit)
    with pytest.raises(ValueError, match=match):
        LLM(str(tiny.path(TARGET)), dtype="float32",
            speculative_config={"method": method, "model": path, "num_speculative_tokens": 2})


def test_missing_head_folder_and_model_key():
    from pagoda.spec_decode.config import SpeculativeConfig

    with pytest.raises(ValueError, match="speculative_config.model"):
        SpeculativeConfig.from_dict({"method": "eagle3", "num_speculative_tokens": 2})


def test_missing_head_checkpoint(tiny):
    from pagoda import LLM

    with pytest.raises(ValueError, match="speculative_config.model: no config.json"):
        LLM(str(tiny.path(TARGET)), dtype="float32",
            speculative_config={"method": "eagle", "model": str(tiny.root / "nowhere"), "num_speculative_tokens": 2})
