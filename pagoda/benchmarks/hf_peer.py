"""HF transformers as the peer of ``pagoda bench throughput``, on exactly pagoda's request list.

Two ways to run HF (``--hf-impl``):

* ``generate``: static batches of ``--hf-batch-size`` requests (default: all), left-padded;
  each batch runs to its longest request's output length, because ``generate`` takes one
  ``max_new_tokens`` per call;
* ``generate_batch``: HF's continuous batching (paged attention), each request with its own
  ``max_new_tokens``.

Crediting: the peer is credited with every token it generated, counted from what HF
returned (the new columns of each row of a ``generate`` batch, pad-free because EOS is
off and ``min_new_tokens`` equals ``max_new_tokens``; ``len(generated_tokens)`` per request
of ``generate_batch``), including tokens a ``generate`` batch produced past a request's own
length. ``requested_output_tokens`` keeps what pagoda was asked for, so the surplus is visible.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pagoda.benchmarks.datasets import BenchRequest


@dataclass
class HFRun:
    seconds: float
    generated_tokens: int  # every token HF produced (see the module docstring)


def load_hf_model(model_path: str, dtype: Any, device: Any, dummy: bool, attn: str | None = None) -> Any:
    """The HF model on ``device``: random weights from the config when ``dummy`` (as pagoda's
    ``--load-format dummy``), else the checkpoint."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = {"attn_implementation": attn} if attn else {}
    if dummy:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path), dtype=dtype, **kw)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, **kw).to(device)
    return model.eval()


def cb_attn_implementation() -> str:
    """The attention ``generate_batch`` needs: ``paged|sdpa`` before transformers 5.23, plain
    ``sdpa`` from then on (the prefix is deprecated there)."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "sdpa" if (major, minor) >= (5, 23) else "paged|sdpa"


def _sync(device: Any) -> None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize()


def run_hf_generate(model: Any, reqs: list[BenchRequest], batch_size: int | None, device: Any) -> HFRun:
    """Static batches through ``model.generate`` (greedy, EOS off); one untimed warm-up call."""
    import torch

    bsz = batch_size or len(reqs)
    pad = 0
    seconds, generated = 0.0, 0
    with torch.inference_mode():
        model.generate(torch.tensor([reqs[0].prompt_token_ids], device=device), max_new_tokens=2, do_sample=False,
                       pad_token_id=pad)
        for i in range(0, len(reqs), bsz):
            chunk = reqs[i : i + bsz]
            width = max(len(r.prompt_token_ids) for r in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, r in enumerate(chunk):  # left padding
                ids[j, width - len(r.prompt_token_ids) :] = torch.tensor(r.prompt_token_ids)
                mask[j, width - len(r.prompt_token_ids) :] = 1
            new = max(r.output_len for r in chunk)
            t0 = time.perf_counter()
            out = model.generate(ids.to(device), attention_mask=mask.to(device), max_new_tokens=new,
                                 min_new_tokens=new, do_sample=False, pad_token_id=pad)
            _sync(device)
            seconds += time.perf_counter() - t0
            generated += len(chunk) * (out.shape[1] - width)  # every row ran `new` steps
    return HFRun(seconds, generated)


def _cb_config(reqs: list[BenchRequest], device: Any) -> dict[str, Any]:
    """On CUDA, HF's own sizing with the workload hints ``generate_batch`` gives it (where this
    transformers has them). On the CPU, HF's default cache sizing (from free memory) makes every
    step crawl; the cache is sized for the workload there."""
    if getattr(device, "type", str(device)) == "cuda":
        try:
            from transformers.generation.continuous_batching.utils import WorkloadHints
        except ImportError:
            return {}
        return {"workload_hints": WorkloadHints(max_prompt_length=max(len(r.prompt_token_ids) for r in reqs),
                                                max_generated_length=max(r.output_len for r in reqs),
                                                num_requests=len(reqs))}
    try:
        from transformers.generation.configuration_utils import ContinuousBatchingConfig
    except ImportError:  # older transformers: its defaults
        return {}
    page = 256
    blocks = sum(-(-(len(r.prompt_token_ids) + r.output_len) // page) for r in reqs) + 1
    tokens = max(len(r.prompt_token_ids) for r in reqs) + len(reqs)
    return {"continuous_batching_config": ContinuousBatchingConfig(page_size=page, num_blocks=blocks,
                                                                   max_batch_tokens=tokens)}


def _cb_generate(manager: Any, reqs: list[BenchRequest], prefix: str, max_new: int | None = None) -> list[Any]:
    for i, r in enumerate(reqs):
        manager.add_request(r.prompt_token_ids, request_id=f"{prefix}-{i}", max_new_tokens=max_new or r.output_len)
    results: dict[str, Any] = {}
    while len(results) < len(reqs):
        res = manager.get_result(timeout=1)
        if res is not None and res.is_finished():
            results[res.request_id] = res
        elif res is None and not manager.is_running():
            raise RuntimeError(f"HF generate_batch stopped after {len(results)} of {len(reqs)} requests")
    return list(results.values())


def run_hf_generate_batch(model: Any, reqs: list[BenchRequest], device: Any) -> HFRun:
    """HF continuous batching, each request with its own ``max_new_tokens`` (greedy, EOS off);
    up to 8 untimed warm-up requests of 8 tokens first, on the same manager."""
    from transformers import GenerationConfig

    gc = GenerationConfig(max_new_tokens=max(r.output_len for r in reqs), do_sample=False, eos_token_id=-1,
                          pad_token_id=0)
    import inspect

    accepted = inspect.signature(model.init_continuous_batching).parameters
    extra = {k: v for k, v in _cb_config(reqs, device).items() if k in accepted}  # older transformers lack some
    manager = model.init_continuous_batching(generation_config=gc, **extra)
    if hasattr(manager, "warmup") and not getattr(manager, "warmed_up", True):
        manager.warmup()  # what generate_batch does first (CUDA graphs at the largest sizes)
    manager.start()
    try:
        _cb_generate(manager, reqs[:8], "warmup", max_new=8)
        _sync(device)
        t0 = time.perf_counter()
        results = _cb_generate(manager, reqs, "req")
        _sync(device)
        seconds = time.perf_counter() - t0
    finally:
        manager.stop(block=True)
    return HFRun(seconds, sum(len(res.generated_tokens) for res in results))
