"""What ``--enable-lora`` costs on the CPU: the default model's decode with and without LoRA, arms alternating.

Arms (one process; two engines: the base engine and one started with ``enable_lora=True, max_loras=1,
max_lora_rank=--rank``):

* ``base``: the base engine (the native CPU decoder stack on where it applies);
* ``base-stack-off``: the same engine with ``pagoda.models.cpu_decoder_stack.ENABLED = False`` (the layers from
  Python, as ``--enable-lora`` runs them, but no LoRA hooks): a diagnostic arm splitting LoRA's cost into "the
  stack is off" and "the hooks and the adapter's matmuls";
* ``lora-none``: the LoRA engine, requests without an adapter;
* ``lora-r16``: the LoRA engine, every request with one adapter of rank ``--rank`` on q/k/v/o/gate/up/down, made
  by PEFT (``get_peft_model(init_lora_weights=False)``: random nonzero A and B) on the HF model of the same weights
  (the folder pagoda converted the GGUF into; its weights are the exact dequantized values); ``--lora-dtype auto``
  (float32 on the CPU for the bf16 model, since session 44);
* ``lora-r16-bf16``: the same with a third engine started with ``lora_dtype="bfloat16"`` (the adapter in the model's
  dtype, vLLM's ``auto``): the A/B of that default.

Each round, in a rotating arm order: the memory bandwidth (a large torch copy, ``2 * bytes / seconds``, best of 5;
and the read-only probe ``benchmarks/cpu/read_bandwidth.c`` where a C compiler is there), then per arm one greedy
request of ``--max-tokens`` new tokens (EOS ignored), then per arm ``--batch`` prompts of ``--max-tokens`` new
tokens each. Every engine step is timed; the decode step median leaves out each request's prompt step and first
decode step (batch 1). The batch-1 floor is the bytes a decode step reads of the weights (the 4-bit linears' codes
and scales and the LM head's table, as ``benchmarks/cpu_floor_ratio.py`` counts them; for ``lora-r16`` plus the
adapter's slot: A and B of every target) over the round's copy bandwidth. Greedy tokens are checked: ``lora-none``
and ``base-stack-off`` should equal ``base``; ``lora-r16`` must differ.

    PYTHONPATH=. .venv/bin/python benchmarks/cpu/lora_cost.py [--rounds 3] [--max-tokens 128] [--batch 32]
        [--rank 16] [--model FOLDER (default: pagoda's default model)] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for cpu_floor_ratio

ARMS = ("base", "base-stack-off", "lora-none", "lora-r16", "lora-r16-bf16")
ADAPTER_ARMS = ("lora-r16", "lora-r16-bf16")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TEXTS = ["Tell me about the sea.", "Write a haiku about autumn leaves.", "What is the capital of France?",
         "Explain how a bicycle works.", "List three uses of copper.", "Why is the sky blue?",
         "Describe a busy market.", "How do bees make honey?"]


def make_adapter(base: Path, out: Path, rank: int, seed: int = 0) -> Path:
    """A PEFT LoRA adapter of ``rank`` on every target of ``base`` (random A and B), saved to ``out``."""
    import peft.import_utils
    import peft.tuners.lora.awq
    import peft.tuners.lora.gptq
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    for mod in (peft.import_utils, peft.tuners.lora.gptq, peft.tuners.lora.awq):  # as tests/test_lora.py does
        mod.is_gptqmodel_available = lambda: False  # type: ignore[attr-defined]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    pm = get_peft_model(model, LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS, init_lora_weights=False))
    pm.save_pretrained(out)
    del pm, model
    return out


def copy_bandwidth(nbytes: int, reps: int = 5) -> float:
    """GB/s of ``dst.copy_(src)`` over ``nbytes`` (read + written bytes over the time), best of ``reps``."""
    import torch

    src = torch.ones(nbytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() * 4 / best / 1e9


def weight_bytes(model) -> tuple[int, str]:
    """Bytes of weights a batch-1 decode step reads: ``cpu_floor_ratio.decode_bytes`` on the default model; on
    another model (unquantized: the smoke run's tiny one) every parameter but the input embedding."""
    from cpu_floor_ratio import decode_bytes

    try:
        return decode_bytes(model)
    except SystemExit:
        embed = model.embed_tokens.weight
        tot = sum(p.numel() * p.element_size() for p in model.parameters() if p is not embed)
        return tot, "every parameter but the embedding"


def lora_slot_bytes(runner) -> int:
    """Bytes of one adapter slot (A and B of every target linear) that the hooks read each step."""
    return sum(ls.nbytes // ls.slots for slots in runner.lora.layers for ls in slots)


class StepTimer:
    """Wraps an engine core's ``step`` and records each step's seconds."""

    def __init__(self, llm) -> None:
        self.times: list[float] = []
        core = llm.llm_engine.core
        step = core.step

        def timed():
            t = time.perf_counter()
            out = step()
            self.times.append(time.perf_counter() - t)
            return out

        core.step = timed


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--model", default=None, help="a model folder (default: pagoda's default model)")
    ap.add_argument("--bandwidth-mib", type=int, default=1024, help="the copy's buffer (each of src and dst)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: 2 rounds, 6 tokens, batch 3, 16 MiB copy")
    args = ap.parse_args(argv)
    if args.smoke:
        args.rounds, args.max_tokens, args.batch, args.bandwidth_mib = 2, 6, 3, 16

    # pagoda before torch: its import sets the passive OpenMP wait policy (pagoda/worker/cpu_threads.py), which the
    # OpenMP runtime reads when torch loads; small steps then run on one thread, as in a user's process.
    from pagoda import LLM, SamplingParams  # isort: skip
    import torch  # isort: skip
    from pagoda.lora.request import LoRARequest
    from pagoda.models import cpu_decoder_stack
    from pagoda.models.model_files import resolve_model

    folder = resolve_model(args.model, progress=False)
    read_bw = None
    if shutil.which("cc") and not args.smoke:
        from cpu_floor_ratio import read_bandwidth_fn

        read_bw = read_bandwidth_fn()
    tmp = Path(tempfile.mkdtemp(prefix="lora_cost_"))
    t0 = time.perf_counter()
    adapter = make_adapter(folder, tmp / "adapter", args.rank)
    print(f"adapter: rank {args.rank} on {','.join(TARGETS)} from {folder} ({time.perf_counter() - t0:.1f} s)")

    # The tiny smoke model is fp32 (bf16 on the CPU: the default model's dtype, what a user gets).
    kw: dict = {"max_num_seqs": max(args.batch, 8)}
    if args.model is not None:
        kw["dtype"] = "float32"
    base = LLM(args.model, **kw)
    lora = LLM(args.model, enable_lora=True, max_loras=1, max_lora_rank=args.rank, **kw)
    lora_bf16 = LLM(args.model, enable_lora=True, max_loras=1, max_lora_rank=args.rank, lora_dtype="bfloat16", **kw)
    engines = {"base": base, "base-stack-off": base, "lora-none": lora, "lora-r16": lora, "lora-r16-bf16": lora_bf16}
    timers = {id(e): StepTimer(e) for e in (base, lora, lora_bf16)}
    lreq = LoRARequest("r16", 1, str(adapter))

    wbytes, head = weight_bytes(base.llm_engine.core.runner.model)
    wbytes_l, _ = weight_bytes(lora.llm_engine.core.runner.model)
    abytes = lora_slot_bytes(lora.llm_engine.core.runner)
    abytes_bf16 = lora_slot_bytes(lora_bf16.llm_engine.core.runner)
    floor_bytes = {"base": wbytes, "base-stack-off": wbytes, "lora-none": wbytes_l, "lora-r16": wbytes_l + abytes,
                   "lora-r16-bf16": wbytes_l + abytes_bf16}
    print(f"weights read a decode step: {wbytes / 1e6:.1f} MB ({head}); LoRA engine {wbytes_l / 1e6:.1f} MB; "
          f"rank-{args.rank} adapter slot {abytes / 1e6:.2f} MB ({lora.llm_engine.core.runner.cfg.lora.dtype}); "
          f"{torch.get_num_threads()} torch threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"small steps on one thread: {base.llm_engine.core.runner.small_steps_one_thread}")

    if args.model is None:
        one = [TEXTS[0]]
        many = [f"{TEXTS[i % len(TEXTS)]} ({i})" for i in range(args.batch)]
    else:
        one = [{"prompt_token_ids": [1, 5, 9, 33, 70, 12]}]
        many = [{"prompt_token_ids": [1, 5 + i, 9, 33, 70 + i, 12]} for i in range(args.batch)]
    sp = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)

    def run(arm: str, prompts) -> tuple[float, float, list[list[int]]]:
        """(seconds, decode step median s, tokens) of one generate call of ``arm``."""
        llm = engines[arm]
        cpu_decoder_stack.ENABLED = arm != "base-stack-off"
        timer = timers[id(llm)]
        timer.times.clear()
        t = time.perf_counter()
        outs = llm.generate(prompts, sp, use_tqdm=False, lora_request=lreq if arm in ADAPTER_ARMS else None)
        dt = time.perf_counter() - t
        cpu_decoder_stack.ENABLED = True
        steps = timer.times[2:] if len(timer.times) > 3 else timer.times
        return dt, statistics.median(steps), [list(o.outputs[0].token_ids) for o in outs]

    warm = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    for arm in ARMS:  # first calls (the adapter read and put in its slot, the stack bound, allocator warm)
        cpu_decoder_stack.ENABLED = arm != "base-stack-off"
        engines[arm].generate(many, warm, use_tqdm=False, lora_request=lreq if arm in ADAPTER_ARMS else None)
    cpu_decoder_stack.ENABLED = True

    res: dict[tuple[str, int], list[dict]] = {(a, b): [] for a in ARMS for b in (1, args.batch)}
    tokens: dict[tuple[str, int], list[list[int]]] = {}
    for r in range(args.rounds):
        gbs = copy_bandwidth(args.bandwidth_mib << 20)
        rgbs = read_bw(512 << 20, torch.get_num_threads(), 5) if read_bw is not None else float("nan")
        print(f"round {r}: copy bandwidth {gbs:.1f} GB/s (2 x {args.bandwidth_mib} MiB / s), read probe "
              f"{rgbs:.1f} GB/s", flush=True)
        order = ARMS[r % len(ARMS):] + ARMS[:r % len(ARMS)]
        if r % 2:
            order = tuple(reversed(order))
        for bs, prompts in ((1, one), (args.batch, many)):
            for arm in order:
                dt, step, toks = run(arm, prompts)
                tps = bs * args.max_tokens / dt
                rec = {"tps": tps, "step_ms": step * 1e3, "gbs": gbs, "rgbs": rgbs}
                line = (f"round {r} batch {bs:>2} {arm:<14} {tps:8.1f} tok/s ({bs * args.max_tokens} tokens in "
                        f"{dt:.2f} s), decode step median {step * 1e3:.2f} ms")
                if bs == 1:
                    floor_ms = floor_bytes[arm] / (gbs * 1e9) * 1e3
                    rec["ratio"] = step * 1e3 / floor_ms
                    line += f", floor {floor_ms:.2f} ms, ratio {rec['ratio']:.2f}"
                print(line, flush=True)
                res[(arm, bs)].append(rec)
                tokens.setdefault((arm, bs), toks)

    for bs in (1, args.batch):
        ref = tokens[("base", bs)]
        same = {a: sum(x == y for x, y in zip(ref, tokens[(a, bs)], strict=True)) for a in ARMS[1:]}
        print(f"greedy tokens, batch {bs}: " + ", ".join(f"{a} equals base on {n} of {len(ref)}"
                                                        for a, n in same.items()))
        f32, b16 = tokens[("lora-r16", bs)], tokens[("lora-r16-bf16", bs)]
        print(f"greedy tokens, batch {bs}: lora-r16-bf16 equals lora-r16 on "
              f"{sum(x == y for x, y in zip(f32, b16, strict=True))} of {len(f32)}")

    med = {k: {f: statistics.median(x[f] for x in v) for f in v[0]} for k, v in res.items()}
    gbs_med = statistics.median(x["gbs"] for x in res[("base", 1)])
    print(f"\nsummary: medians of {args.rounds} rounds, {args.max_tokens} new tokens a request; copy bandwidth median "
          f"{gbs_med:.1f} GB/s; batch-1 floor {floor_bytes['base'] / gbs_med / 1e6:.2f} ms "
          f"({floor_bytes['base'] / 1e6:.1f} MB), with the adapter {floor_bytes['lora-r16'] / gbs_med / 1e6:.2f} ms")
    print(f"{'arm':<16}{'b1 tok/s':>10}{'b1 step ms':>12}{'x floor':>9}{'vs base':>9}"
          f"{f'b{args.batch} tok/s':>12}{f'b{args.batch} step ms':>13}{'vs base':>9}")
    b1, bn = med[("base", 1)]["tps"], med[("base", args.batch)]["tps"]
    for arm in ARMS:
        m1, mn = med[(arm, 1)], med[(arm, args.batch)]
        print(f"{arm:<16}{m1['tps']:>10.1f}{m1['step_ms']:>12.2f}{m1['ratio']:>9.2f}{m1['tps'] / b1:>9.2f}"
              f"{mn['tps']:>12.1f}{mn['step_ms']:>13.2f}{mn['tps'] / bn:>9.2f}")
    base.shutdown()
    lora.shutdown()
    lora_bf16.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
