"""``--dtype auto`` on CPU: half-precision checkpoints run in bf16 where the CPU has native bf16 or the linears
are weight-only int (torch's int4 kernel is fast for bf16 activations only), in float32 otherwise."""

from __future__ import annotations

import logging

import pytest
import torch

import pagoda.config as config
from pagoda.quantization.awq import AWQConfig
from pagoda.quantization.fp8 import Fp8Config
from pagoda.quantization.gptq import GPTQConfig

CPU = torch.device("cpu")
BF16_CFG = {"torch_dtype": "bfloat16"}


@pytest.mark.parametrize("native", [True, False])
def test_auto_on_cpu_follows_native_bf16_for_dense_weights(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(config, "cpu_supports_bf16", lambda: native)
    want = torch.bfloat16 if native else torch.float32
    assert config.resolve_dtype("auto", BF16_CFG, CPU) == want
    assert config.resolve_dtype("auto", {"torch_dtype": "float16"}, CPU) == want
    assert config.resolve_dtype("auto", {"torch_dtype": "float32"}, CPU) == torch.float32


def test_auto_on_cpu_runs_int_weights_in_bf16_without_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "cpu_supports_bf16", lambda: False)
    assert config.resolve_dtype("auto", BF16_CFG, CPU, int_weights=True) == torch.bfloat16
    # A float32 checkpoint stays float32: auto never lowers precision below the checkpoint's own.
    assert config.resolve_dtype("auto", {"torch_dtype": "float32"}, CPU, int_weights=True) == torch.float32


def test_explicit_float32_with_int_weights_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=config.logger.name):
        assert config.resolve_dtype("float32", BF16_CFG, CPU, int_weights=True) == torch.float32
    assert "--dtype auto or bfloat16" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=config.logger.name):
        assert config.resolve_dtype("float32", BF16_CFG, CPU) == torch.float32
    assert caplog.text == ""


def test_which_methods_are_weight_only_int() -> None:
    assert GPTQConfig.from_config({"bits": 4, "group_size": 128}).weight_only_int()
    assert AWQConfig.from_config({"bits": 4, "group_size": 128, "zero_point": True}).weight_only_int()
    assert not Fp8Config.from_config({"quant_method": "fp8"}).weight_only_int()
