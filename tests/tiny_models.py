"""Tiny random models for tests: built from transformers configs with a fixed seed.

Each model folder gets a small byte-level BPE tokenizer trained here (no download),
with a ChatML chat template, so text prompts and chat work end to end.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France. Berlin is the capital of Germany.",
    "Large language models generate text one token at a time.",
    "PagedAttention stores the key value cache in fixed size blocks.",
    "Continuous batching lets new requests join a running batch.",
    "héllo wörld — ünïcode 日本語 テキスト 🙂 emoji",
] * 20

CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    fast.save_pretrained(folder)
    return fast


ARCH_CONFIGS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "llama8": ("LlamaConfig", "LlamaForCausalLM", {"num_hidden_layers": 8}),  # EAGLE-3's default aux layers: 2, 4, 5
    "llama31": ("LlamaConfig", "LlamaForCausalLM", {
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 64}, "rope_theta": 500000.0}),
    # the default model's layer shapes (SmolLM2-135M), so its one-row linears take the GEMV (pagoda.layers.dense_gemv)
    "smollm_shape": ("LlamaConfig", "LlamaForCausalLM", {"hidden_size": 576, "intermediate_size": 1536,
                                                         "num_attention_heads": 9, "num_key_value_heads": 3}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),
    # MoE (models/moe.py): 8 experts, top-2; Qwen2-MoE with a shared expert; "qwen2moe_dense" has a
    # dense layer (mlp_only_layers) among sparse ones; Qwen3-MoE renormalises its top-k.
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", {"num_local_experts": 8, "num_experts_per_tok": 2,
                                                        "sliding_window": None}),
    "qwen2moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", {
        "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 48,
        "shared_expert_intermediate_size": 80}),
    "qwen2moe_dense": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", {
        "num_experts": 6, "num_experts_per_tok": 3, "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 40, "num_hidden_layers": 3, "mlp_only_layers": [1],
        "norm_topk_prob": True}),
    "qwen3moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", {
        "num_experts": 8, "num_experts_per_tok": 3, "moe_intermediate_size": 48, "head_dim": 16,
        "norm_topk_prob": True, "decoder_sparse_step": 1}),
    # Model coverage (tests/test_model_coverage.py): windows of 8-16 keys under prompts of up to ~275 tokens.
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {
        "head_dim": 16, "query_pre_attn_scalar": 24, "sliding_window": 8, "attn_logit_softcapping": 5.0,
        "final_logit_softcapping": 3.0}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {
        "head_dim": 16, "query_pre_attn_scalar": 24, "sliding_window": 8, "final_logit_softcapping": 3.0,
        "layer_types": ["sliding_attention", "full_attention"], "rope_theta": 50000.0, "rope_local_base_freq": 100.0}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {
        "sliding_window": 16, "partial_rotary_factor": 0.75, "max_position_embeddings": 1024,
        "original_max_position_embeddings": 512, "pad_token_id": 0,
        "rope_scaling": {"rope_type": "longrope", "short_factor": [1.0, 1.1, 1.3, 1.6, 2.0, 2.5],
                         "long_factor": [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]}}),
    "qwen2yarn": ("Qwen2Config", "Qwen2ForCausalLM", {
        "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
        "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1}),
    "llamalinear": ("LlamaConfig", "LlamaForCausalLM", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    "llamadynamic": ("LlamaConfig", "LlamaForCausalLM", {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}),
    "mistralsw": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 8}),
    # No native implementation: these run through the transformers fallback.
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {}),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}),
    "granite": ("GraniteConfig", "GraniteForCausalLM", {
        "embedding_multiplier": 2.0, "residual_multiplier": 0.5, "attention_multiplier": 0.2, "logits_scaling": 1.5}),
    "stablelm": ("StableLmConfig", "StableLmForCausalLM", {}),
    "phi": ("PhiConfig", "PhiForCausalLM", {}),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", {"n_inner": 128}),
    "cohere": ("CohereConfig", "CohereForCausalLM", {"logit_scale": 0.5}),
    "falcon": ("FalconConfig", "FalconForCausalLM", {"alibi": True}),
}


def build_tiny_model(folder: Path, arch: str = "llama", seed: int = 0, tie: bool = False,
                     extra_vocab: int = 0) -> Path:
    """Write a tiny random model of ``arch`` (key of ARCH_CONFIGS) into ``folder``; ``extra_vocab``: rows of the
    embedding past the tokenizer's vocabulary (e.g. an odd vocab_size)."""
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(folder)
    cfg_cls_name, model_cls_name, extra = ARCH_CONFIGS[arch]
    cfg_cls = getattr(transformers, cfg_cls_name)
    shape = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_position_embeddings": 512}
    cfg = cfg_cls(
        vocab_size=len(tok) + extra_vocab,
        tie_word_embeddings=tie,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **{**shape, **extra},
    )
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls_name)(cfg).to(torch.float32)
    with torch.no_grad():  # larger weights than HF's init so logits are well separated
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0.0, 0.08)
    model.save_pretrained(folder, safe_serialization=True)
    with open(folder / "generation_config.json", "w") as f:
        json.dump({"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}, f)
    return folder


def build_long_context_model(folder: Path, max_position_embeddings: int = 2048) -> Path:
    """The tiny random Llama with its context stretched, so a request can run long enough to be
    interrupted (server and reliability tests)."""
    build_tiny_model(folder, "llama")
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["max_position_embeddings"] = max_position_embeddings
    cfg_path.write_text(json.dumps(cfg))
    return folder
