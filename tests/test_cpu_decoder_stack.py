"""The native decoder stack (pagoda/models/cpu_decoder_stack.c): a small CPU step's layers in one call give bitwise
the Python path's hidden states (tokens and logprobs of decode steps, several requests' rows, n-gram verify rows),
it binds to the model that qualifies, and it declines what it does not cover."""

from __future__ import annotations

import copy

import pytest
from engine_checks import greedy
from test_gguf import _tiny_quantized_gguf

from pagoda.layers import cpu_fused
from pagoda.models import cpu_decoder_stack
from pagoda.quantization.kernels import cpu_int4_dot

pytestmark = pytest.mark.skipif(not (cpu_int4_dot.available() and cpu_fused.available()),
                                reason="no bf16-dot int4 kernel here (needs x86-64 AVX512-BF16 and a C compiler)")

ALL_4BIT = {k: "Q4_1" for k in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")} | {
    "attn_q": "Q4_0", "ffn_down": "Q4_0", "token_embd": "Q8_0"}
PROMPTS = [[1, 40, 60, 70, 80, 90, 100, 40, 60, 70], [5, 6, 7, 8], [9, 9, 9, 9, 9, 9]]
NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1, "prompt_lookup_max": 3}


@pytest.fixture
def gguf_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PAGODA_CACHE", str(tmp_path / "cache"))
    return _tiny_quantized_gguf(tmp_path / "tiny.gguf", True, ALL_4BIT)


def _llm(path, **kw):
    from pagoda import LLM

    return LLM(model=str(path), device="cpu", dtype="bfloat16", max_model_len=128, kv_cache_memory_bytes=1 << 20,
               **kw)


def _outputs(llm, batch: int) -> list:
    sp = greedy(max_tokens=24, logprobs=5)
    outs = []
    for i in range(0, len(PROMPTS), batch):
        outs += llm.generate([{"prompt_token_ids": p} for p in PROMPTS[i : i + batch]], sp, use_tqdm=False)
    return [(o.outputs[0].token_ids, [sorted((t, e.logprob) for t, e in d.items()) for d in o.outputs[0].logprobs])
            for o in outs]


@pytest.mark.parametrize("threads", [0, 1, 3], ids=["team", "alone", "team3"])
@pytest.mark.parametrize("spec", [None, NGRAM], ids=["decode", "ngram"])
def test_bitwise_the_python_path(gguf_path, monkeypatch, spec, threads):
    """The stack's own threads (0: the engine's count, 2 on CI; 3: more threads than cores) split each matmul's
    column blocks and the attention's items between them: the same bits as one thread and as the Python path."""
    monkeypatch.setattr(cpu_decoder_stack, "THREADS", threads)
    llm = _llm(gguf_path, **({"speculative_config": spec} if spec else {}))
    model = llm.llm_engine.core.runner.model
    seen = _record(monkeypatch)
    native = {b: _outputs(llm, b) for b in (1, 3)}
    assert isinstance(model._cpu_stack, cpu_decoder_stack.DecoderStack)
    taken = [rows for rows, ok in seen if ok]
    assert 1 in taken and max(taken) > 1  # decode rows, and several rows in one step
    if spec:
        assert llm.llm_engine.core.scheduler.spec_stats.num_draft_tokens > 0  # verify rows ran through the stack
    monkeypatch.setattr(cpu_decoder_stack, "ENABLED", False)
    seen.clear()
    python = {b: _outputs(llm, b) for b in (1, 3)}
    assert seen and not any(ok for _, ok in seen)  # the switch sends every step to the Python path
    assert native == python  # tokens and logprobs, bit for bit, alone and batched


def _record(monkeypatch) -> list[tuple[int, bool]]:
    """(rows, taken) of every step offered to the stack from now on."""
    seen: list[tuple[int, bool]] = []
    run = cpu_decoder_stack.DecoderStack.run

    def recording(self, h, *args):
        out = run(self, h, *args)
        seen.append((h.shape[0], out is not None))
        return out

    monkeypatch.setattr(cpu_decoder_stack.DecoderStack, "run", recording)
    return seen


def test_declines_what_it_does_not_cover(tmp_path, gguf_path, monkeypatch):
    from test_gguf import LAYER_TYPES

    mixed = _llm(_tiny_quantized_gguf(tmp_path / "mixed.gguf", True, LAYER_TYPES))  # 5- and 8-bit linears
    mixed.generate([{"prompt_token_ids": PROMPTS[0]}], greedy(max_tokens=2), use_tqdm=False)
    assert mixed.llm_engine.core.runner.model._cpu_stack is None
    det = _llm(gguf_path, deterministic=True)  # --deterministic: per-row linears, another attention kernel
    det.generate([{"prompt_token_ids": PROMPTS[1]}], greedy(max_tokens=3), use_tqdm=False)
    assert det.llm_engine.core.runner.model._cpu_stack is None
    llm = _llm(gguf_path)
    seen = _record(monkeypatch)
    llm.generate([{"prompt_token_ids": PROMPTS[1]}], greedy(max_tokens=3), use_tqdm=False)
    model = llm.llm_engine.core.runner.model
    assert isinstance(model._cpu_stack, cpu_decoder_stack.DecoderStack) and (1, True) in seen
    # a copied model binds again, to its own tensors (raw pointers are not copied)
    assert copy.deepcopy(model._cpu_stack) is False
    seen.clear()  # an A/B switch of a kernel the stack calls sends the steps to the Python path
    monkeypatch.setattr(cpu_int4_dot, "BOUND_CALLS", False)
    llm.generate([{"prompt_token_ids": PROMPTS[1]}], greedy(max_tokens=3), use_tqdm=False)
    assert seen and not any(taken for _, taken in seen)


def test_a_long_prompt_chunk_runs_the_python_path(gguf_path, monkeypatch):
    llm = _llm(gguf_path)
    seen = _record(monkeypatch)
    prompt = list(range(3, 40))  # 37 rows: more than a decode-like request
    out = llm.generate([{"prompt_token_ids": prompt}], greedy(max_tokens=4), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 4
    assert (37, False) in seen and (1, True) in seen


@pytest.fixture
def pos_chunk():
    """Sets the attention's position chunk for a test (cpu_decode_native.set_pos_chunk), back to 0 after it."""
    from pagoda.attention import cpu_decode_native

    yield cpu_decode_native.set_pos_chunk
    cpu_decode_native.set_pos_chunk(0)


@pytest.mark.parametrize("chunk", [0, 256], ids=["whole", "chunks"])
@pytest.mark.parametrize("spec", [None, NGRAM], ids=["decode", "ngram"])
def test_past_256_positions_bitwise_the_python_path(tmp_path, monkeypatch, spec, chunk, pos_chunk):
    """Rows past 256 positions, with the attention's position chunks (cpu_decode_native.set_pos_chunk) off and on:
    the stack's items (and their merge on its team) give the Python path's bits (tokens and logprobs), decode rows and
    verify rows."""
    from pagoda import LLM

    pos_chunk(chunk)

    monkeypatch.setenv("PAGODA_CACHE", str(tmp_path / "cache"))
    path = _tiny_quantized_gguf(tmp_path / "long.gguf", True, ALL_4BIT, context=512)
    llm = LLM(model=str(path), device="cpu", dtype="bfloat16", max_model_len=512, kv_cache_memory_bytes=4 << 20,
              enable_prefix_caching=False,  # the second run recomputes the prompts as the first did
              **({"speculative_config": spec} if spec else {}))
    seen = _record(monkeypatch)
    prompts = [[5 + (i * 7) % 90 for i in range(300)], [3, 4, 5] * 90]  # the second repeats: n-gram drafts
    sp = greedy(max_tokens=12, logprobs=5)

    def run() -> list:
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
        return [(o.outputs[0].token_ids, [sorted((t, e.logprob) for t, e in d.items()) for d in o.outputs[0].logprobs])
                for o in outs]

    native = run()
    assert any(ok for _, ok in seen)
    if spec:
        assert llm.llm_engine.core.scheduler.spec_stats.num_draft_tokens > 0  # verify rows past 256 ran too
    monkeypatch.setattr(cpu_decoder_stack, "ENABLED", False)
    assert run() == native


@pytest.mark.parametrize("spec", [None, NGRAM], ids=["decode", "ngram"])
def test_one_row_matmuls_and_speculation(gguf_path, spec):
    """One-row steps run cpu_int4_dot.one_row_library's build (the vdpbf16ps one on AMX CPUs), also in an engine that
    speculates: the two builds give the same bits on grid-rounded rows (cpu_int4_dot.builds_agree), so its verify
    rows equal its decode rows; only a weight whose builds could disagree runs one build at every row count."""
    from pagoda.quantization.int_weight import IntWeight

    llm = _llm(gguf_path, **({"speculative_config": spec} if spec else {}))
    llm.generate([{"prompt_token_ids": PROMPTS[0]}], greedy(max_tokens=4), use_tqdm=False)
    model = llm.llm_engine.core.runner.model
    stack = model._cpu_stack
    assert isinstance(stack, cpu_decoder_stack.DecoderStack)
    ints = [m for m in model.modules() if isinstance(m, IntWeight)]
    one_kernel = spec is not None and cpu_int4_dot.one_kernel_needed(ints[0].group_size)
    assert ints and all(w.one_kernel == one_kernel for w in ints)
    assert not one_kernel or not cpu_int4_dot.builds_agree()  # group 32: within the grid's limit
    lib, one = cpu_int4_dot.library(), cpu_int4_dot.one_row_library()
    addr = cpu_decoder_stack._addr  # noqa: SLF001
    assert stack._stack.mm_block == addr(lib.pagoda_int4_dot_block)  # noqa: SLF001
    assert stack._stack.mm_block1 == addr((lib if one_kernel else one).pagoda_int4_dot_block)  # noqa: SLF001


def test_the_phase_clock_build_compiles_and_reads_back(monkeypatch):
    """``PHASE_CLOCKS`` (``benchmarks/spec_cpu_profile.py --phases``) builds the library with per-phase clocks;
    :func:`phase_ns` reads and zeroes them (the default build has none: None)."""
    from pagoda.models import cpu_decoder_stack as cds

    if cds._lib() is None:  # noqa: SLF001
        pytest.skip("no C compiler")
    assert cds.phase_ns() is None
    monkeypatch.setattr(cds, "PHASE_CLOCKS", True)
    cds._lib.cache_clear()  # noqa: SLF001
    try:
        assert cds.phase_ns() == dict.fromkeys(cds.PHASES, 0)
    finally:
        monkeypatch.setattr(cds, "PHASE_CLOCKS", False)
        cds._lib.cache_clear()  # noqa: SLF001


def _write_adapter(folder, dims: dict[str, tuple[int, int]], num_layers: int, r: int = 4) -> str:
    """A random PEFT-layout LoRA adapter on every target of every layer (``dims``: module -> (in, out))."""
    import json

    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(3)
    parent = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
              "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
    tensors = {}
    for layer in range(num_layers):
        for name, (n_in, n_out) in dims.items():
            key = f"base_model.model.model.layers.{layer}.{parent[name]}.{name}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(r, n_in, generator=g) / n_in**0.5
            tensors[f"{key}.lora_B.weight"] = torch.randn(n_out, r, generator=g)
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": list(dims), "bias": "none"}))
    return str(folder)


def test_a_lora_engine_runs_adapter_free_steps_on_the_stack(tmp_path, gguf_path, monkeypatch):
    """``--enable-lora``: a step with no adapter rows runs on the stack (bitwise the base engine's outputs), a step
    with some runs the Python path with the hooks, and the two alternate without touching each other's results."""
    from pagoda.lora.request import LoRARequest

    base = _outputs(_llm(gguf_path), 1)
    llm = _llm(gguf_path, enable_lora=True, max_loras=1, max_lora_rank=4)
    runner = llm.llm_engine.core.runner
    assert runner.lora is not None
    adapter = LoRARequest("a", 1, _write_adapter(tmp_path / "adapter", runner.lora.shape.dims,
                                                 runner.lora.shape.num_layers))
    sp = greedy(max_tokens=24, logprobs=5)

    def with_adapter() -> list:
        outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], sp, use_tqdm=False, lora_request=adapter)
        return [o.outputs[0].token_ids for o in outs]

    seen = _record(monkeypatch)
    first = with_adapter()
    assert not [ok for _, ok in seen if ok]  # adapter rows: never the stack (it would skip the hooks)
    assert first != [t for t, _ in base]  # the adapter changes the tokens
    assert _outputs(llm, 1) == base  # adapter-free steps: the stack, the base engine's bits
    assert isinstance(runner.model._cpu_stack, cpu_decoder_stack.DecoderStack)
    assert [ok for _, ok in seen if ok]
    assert with_adapter() == first
