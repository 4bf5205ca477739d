"""The transformers fallback's fused RMSNorms (pagoda/models/transformers_norms.py): only modules that compute
a plain RMSNorm are replaced, and the bf16 CPU fallback (where they are fused) still equals HF's logits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pagoda.attention.metadata import AttentionMetadata
from pagoda.attention.torch_ref import TorchAttentionBackend
from pagoda.models.transformers_norms import FusedRMSNorm, fuse_rms_norms
from pagoda.worker.kv_cache import allocate_kv_caches


def prompt_logits(model, dtype: torch.dtype, n: int = 12, block: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, logits)``: ``n`` random tokens through a loaded fallback ``model`` as one prompt on the CPU (a fresh
    paged cache of ``block``-token blocks, the torch attention backend)."""
    ids = torch.randint(0, model.shape.vocab_size, (n,), generator=torch.Generator().manual_seed(0))
    caches = allocate_kv_caches(model.num_layers, 1 + n // block, block, model.num_kv_heads, model.head_dim,
                                dtype, torch.device("cpu"), "HND")
    meta = AttentionMetadata(
        query_start_loc=torch.tensor([0, n], dtype=torch.int32), seq_lens=torch.tensor([n], dtype=torch.int32),
        block_tables=torch.arange(1, 1 + n // block, dtype=torch.int32)[None], slot_mapping=torch.arange(n) + block,
        max_query_len=n, max_seq_len=n, query_lens_cpu=[n], seq_lens_cpu=[n],
    )
    return ids, model.compute_logits(model(ids, torch.arange(n), caches, meta, TorchAttentionBackend()))


def test_only_plain_rms_norms_are_replaced():
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    model = nn.Module()
    model.llama = LlamaRMSNorm(16, eps=1e-5)
    model.gemma = GemmaRMSNorm(16, eps=1e-6)  # weight applied as (1 + w): must stay
    model.inner = nn.Sequential(LlamaRMSNorm(16, eps=1e-6), nn.LayerNorm(16))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    x = torch.randn(2, 5, 16, generator=g)
    before = [model.llama(x), model.gemma(x), model.inner(x)]
    assert fuse_rms_norms(model, triton=False) == 2
    assert isinstance(model.llama, FusedRMSNorm) and isinstance(model.inner[0], FusedRMSNorm)
    assert isinstance(model.gemma, GemmaRMSNorm) and isinstance(model.inner[1], nn.LayerNorm)
    assert model.llama.weight is not None and model.llama.eps == 1e-5
    for want, got in zip(before, [model.llama(x), model.gemma(x), model.inner(x)], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "olmo2"])
@torch.inference_mode()
def test_bf16_cpu_fallback_with_fused_norms_follows_hf(tiny, arch):
    from transformers import AutoModelForCausalLM

    from pagoda.config import EngineArgs
    from pagoda.models.loader import load_model

    path = tiny.path(arch)
    model = load_model(EngineArgs(model=str(path), model_impl="transformers", dtype="bfloat16").create_config())
    assert sum(isinstance(m, FusedRMSNorm) for m in model.modules()) > 0  # bf16 on the CPU: fused
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    ids, ours = prompt_logits(model, torch.bfloat16)
    want = hf(input_ids=ids[None]).logits[0].float()
    # One bf16 rounding less per norm: logits within bf16 noise of HF's, the same greedy token nearly everywhere.
    assert (ours - want).abs().max() < 0.1 * want.abs().max()
    assert (ours.argmax(-1) == want.argmax(-1)).float().mean() >= 0.9
