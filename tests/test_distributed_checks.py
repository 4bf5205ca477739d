"""Start-up checks of the distributed flags that ``LLM(...)`` reaches without the CLI's parsing: an executor backend
pagoda does not have, and a checkpoint format that does not shard, are refused naming the flag before any process
starts."""

from __future__ import annotations

import pytest
import torch
from engine_checks import assert_start_up_error


@pytest.mark.parametrize("kw", [
    {"distributed_executor_backend": "external_launcher", "tensor_parallel_size": 2},
    {"distributed_executor_backend": "uni"},
    {"distributed_executor_backend": "foo", "tensor_parallel_size": 2},
])
def test_unknown_executor_backend_is_refused_naming_the_flag(tiny, kw):
    """vLLM raises "Unknown distributed executor backend" for a value it lacks; pagoda has mp and ray only (the CLI's
    choices), so ``LLM(distributed_executor_backend=...)`` must not run the mp executor under another name."""
    assert_start_up_error(tiny.path("llama"), kw, r"--distributed-executor-backend must be one of mp, ray .*got '")


def test_gguf_with_tensor_parallel_names_the_format_before_the_head_split():
    """The default model's shape (9 heads, 3 KV heads) with ``-tp 2``: the refusal names what no tensor-parallel size
    can fix (GGUF does not shard), not the head split (which would send the user to ``-tp 3``, refused next)."""
    from pagoda.distributed.support import check_tensor_parallel
    from pagoda.quantization.gguf import GGUFConfig

    qc = GGUFConfig.__new__(GGUFConfig)  # the refusal depends on the format alone
    cfg = {"num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576, "intermediate_size": 1536}
    for tp in (2, 3):
        with pytest.raises(ValueError, match="gguf checkpoints do not split over ranks"):
            check_tensor_parallel(tp, None, arch="LlamaForCausalLM", model_impl="pagoda", quantized=True,
                                  pooling=False, device=torch.device("cpu"), hf_config=cfg, kv_offloading=False,
                                  async_scheduling=None, quant_config=qc)
