"""Issue 21 item 4's figure: the default model's batch-1 decode step on the CPU against its weight-bandwidth floor,
both measured in the same run, alternating, because this VM's read bandwidth drifts by a third from hour to hour
(40.7 GB/s on two threads in session 25, 30-34 in session 27: a floor taken from another run says little).

Each round: (1) the read bandwidth, ``benchmarks/cpu/read_bandwidth.c`` (a 512 MiB buffer summed by the engine's
thread count, best of 7 passes); (2) one greedy request of ``--max-tokens`` tokens (EOS ignored) through ``LLM``,
every engine step timed; the decode steps' median is the step time (the prompt's step and the first decode step
left out). The floor is the bytes a decode step must read, the model's 4-bit linears (codes and scales) and its LM
head's weight (the tied Q8_0 table's codes and scales where the Q8_0 head runs, else the bf16 weight), over that
round's bandwidth; the attention's KV reads (a few hundred KB) and the embedding row are
left out. Prints each round and the median ratio.

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. python benchmarks/cpu_floor_ratio.py [--rounds 3] [--max-tokens 256]
        [--model PATH] [--bandwidth-mib 512]
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

_BW_SOURCE = Path(__file__).parent / "cpu" / "read_bandwidth.c"


def read_bandwidth_fn():
    """``pagoda_read_bandwidth(bytes, threads, reps) -> GB/s`` compiled from ``cpu/read_bandwidth.c``."""
    out = Path(tempfile.mkdtemp()) / "read_bandwidth.so"
    subprocess.run(["cc", "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-o", str(out), str(_BW_SOURCE)],
                   check=True)
    fn = ctypes.CDLL(str(out)).pagoda_read_bandwidth
    fn.restype = ctypes.c_double
    fn.argtypes = [ctypes.c_int64, ctypes.c_int, ctypes.c_int]
    return fn


def decode_bytes(model: torch.nn.Module) -> tuple[int, str]:
    """What a batch-1 decode step reads of the weights: every int-weight buffer (codes, scales) and the LM head (the
    Q8_0 table's codes and scales where that head runs, else its bf16 weight); and which head that is."""
    from pagoda.quantization.int_weight import IntWeight

    total = sum(b.numel() * b.element_size() for m in model.modules() if isinstance(m, IntWeight)
                for b in m.buffers(recurse=False) if b is not None and b.dim() > 0 and b.dtype != torch.int64)
    q8 = getattr(model, "_lm_q8", None)
    if q8 is not None:
        return total + q8.nbytes, "Q8_0 LM head"
    head = getattr(model, "_lm_dot", None)
    if head is None:
        head = getattr(model, "_head_dense", None)
    if head is None:
        raise SystemExit("the model has no dense CPU head to count (not the default model on a bf16 CPU path?)")
    return total + head.numel() * head.element_size(), "bf16 LM head"


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--model", default=None, help="a bf16-on-CPU model (default: pagoda's default model)")
    ap.add_argument("--bandwidth-mib", type=int, default=512, help="the probe's buffer (well above the L3)")
    args = ap.parse_args(argv)

    from pagoda import LLM, SamplingParams

    bw_fn = read_bandwidth_fn()
    llm = LLM(args.model, max_num_seqs=8) if args.model else LLM(max_num_seqs=8)
    core = llm.llm_engine.core
    model = core.runner.model
    nbytes, head_kind = decode_bytes(model)
    threads = torch.get_num_threads()
    times: list[float] = []
    step = core.step

    def timed_step():
        t = time.perf_counter()
        out = step()
        times.append(time.perf_counter() - t)
        return out

    core.step = timed_step
    sp = SamplingParams(max_tokens=args.max_tokens, temperature=0, ignore_eos=True)
    prompt = [{"prompt_token_ids": [1, 40, 60, 70, 80, 90]}] if args.model else ["Tell me about the sea."]
    llm.generate(prompt, SamplingParams(max_tokens=8, temperature=0), use_tqdm=False)  # warm-up
    print(f"decode bytes {nbytes / 1e6:.1f} MB a step ({head_kind}), {threads} threads")
    ratios = []
    for r in range(args.rounds):
        gbs = bw_fn(args.bandwidth_mib << 20, threads, 7)
        times.clear()
        llm.generate(prompt, sp, use_tqdm=False)
        step_ms = statistics.median(times[2:]) * 1e3
        floor_ms = nbytes / (gbs * 1e9) * 1e3
        ratios.append(step_ms / floor_ms)
        print(f"round {r}: read bandwidth {gbs:.1f} GB/s, floor {floor_ms:.2f} ms, decode step median {step_ms:.2f} ms "
              f"({len(times) - 2} steps), ratio {ratios[-1]:.2f}", flush=True)
    print(f"median ratio {statistics.median(ratios):.2f} (target <= 1.5)")
    return statistics.median(ratios)


if __name__ == "__main__":
    main()
