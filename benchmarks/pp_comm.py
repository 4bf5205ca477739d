"""Per-step communication of pipeline parallelism on this machine (CPU, gloo).

    PYTHONPATH=. python benchmarks/pp_comm.py [--layers 16 --hidden 512 --batch 8 --new 64]

1. The transfer alone: two gloo processes pass a stage's output (``[tokens, hidden]`` float32, what one stage
   boundary carries per step) back and forth; one-way time = round trip / 2 (median of 50), for a decode step
   (``--batch`` tokens) and a prefill step (``--batch x --prompt-len`` tokens).
2. The engine: PP=1 against PP=2 on the same requests (a Llama-shaped model with random weights, as
   ``benchmarks/tp_comm.py``; ``--max-num-seqs`` below ``--batch``, so the requests form two micro-batches):
   steps, step time, and the engine core's receive time per step (the last stage waiting for the first: the
   transfer plus whatever of the first stage's compute is not overlapped).
Measured only: on 2 shared cores PP=2 is a correctness path, not a speed-up.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

_ITERS = 50


def _pingpong(rank: int, init: str, shapes: list[tuple[int, int]], out: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    res = {}
    for shape in shapes:
        x = torch.randn(shape)
        times = []
        for _ in range(_ITERS + 5):
            t0 = time.perf_counter()
            if rank == 0:
                dist.send(x, 1)
                dist.recv(x, 1)
            else:
                dist.recv(x, 0)
                dist.send(x, 0)
            times.append(time.perf_counter() - t0)
        res[f"{shape[0]}x{shape[1]}"] = 1e3 * statistics.median(times[5:]) / 2
    if rank == 0:
        Path(out).write_text(json.dumps(res))
    dist.destroy_process_group()


def transfer_ms(shapes: list[tuple[int, int]]) -> dict[str, float]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "res.json")
        mp.spawn(_pingpong, args=(f"file://{d}/rdv", shapes, out), nprocs=2)
        return json.loads(Path(out).read_text())


def run(model: Path, pp: int, prompts: list[list[int]], new: int, seqs: int) -> dict[str, float]:
    from pagoda import LLM, SamplingParams

    llm = LLM(str(model), dtype="float32", load_format="dummy", device="cpu", pipeline_parallel_size=pp,
              enable_prefix_caching=False, max_num_seqs=seqs)
    params = SamplingParams(temperature=0.0, max_tokens=new, ignore_eos=True)
    llm.generate([{"prompt_token_ids": p} for p in prompts[:1]], params, use_tqdm=False)  # warm-up
    from tp_comm import timed_generate

    stage = llm.llm_engine.core.runner.pp
    s0 = stage.stats.seconds if stage else 0.0
    wall, steps = timed_generate(llm, prompts, params, "_complete")
    recv = (stage.stats.seconds - s0) if stage else 0.0
    llm.llm_engine.shutdown()
    return {"pp": pp, "steps": steps, "wall_s": wall, "step_ms": 1e3 * wall / steps,
            "recv_ms_per_step": 1e3 * recv / steps}


def main() -> None:
    from tp_comm import workload_parser, write_model

    ap = workload_parser()
    ap.add_argument("--max-num-seqs", type=int, default=4, help="per step: the batch splits into micro-batches")
    ap.add_argument("--transfer-only", action="store_true", help="part 1 only")
    a = ap.parse_args()
    shapes = [(a.batch, a.hidden), (a.batch * a.prompt_len, a.hidden)]
    print(json.dumps({"one_way_transfer_ms": {k: round(v, 3) for k, v in transfer_ms(shapes).items()}}), flush=True)
    if a.transfer_only:
        return
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as d:
        model = write_model(Path(d), a.layers, a.hidden)
        prompts = [[rng.randrange(10, 300) for _ in range(a.prompt_len)] for _ in range(a.batch)]
        for pp in (1, 2):
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                              for k, v in run(model, pp, prompts, a.new, a.max_num_seqs).items()}), flush=True)


if __name__ == "__main__":
    main()
