"""Interleaved runs of `pagoda bench latency` under OpenMP settings; records foreign CPU use per run.

Run from a copy of pagoda without the thread policy at /tmp/omp/src (e.g. ``git archive 44669c2 pagoda``).
usage: drive_local.py LABEL ROUNDS [busy]   (busy: one `while True: pass` process for the whole run)
"""
import json
import os
import resource
import subprocess
import sys
import time

label, rounds = sys.argv[1], int(sys.argv[2])
busy = len(sys.argv) > 3
CONFIGS = {
    "default": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "spin1k": {"GOMP_SPINCOUNT": "1000"},
    "spin10k": {"GOMP_SPINCOUNT": "10000"},
    "t1": {"OMP_NUM_THREADS": "1"},
    "t1passive": {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"},
}
only = os.environ.get("CONFIGS")
if only:
    CONFIGS = {k: v for k, v in CONFIGS.items() if k in only.split(",")}
def busy_jiffies():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4], sum(v)
bp = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
try:
    for r in range(rounds):
        for name, extra in CONFIGS.items():
            knobs = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")
            env = {k: v for k, v in os.environ.items() if k not in knobs}
            env.update(extra, PYTHONPATH="/tmp/omp/src")
            out = f"/tmp/omp/{label}-{name}-r{r}.json"
            b0, t0 = busy_jiffies()
            w0 = time.time()
            ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run([sys.executable, "-m", "pagoda", "--log-level", "WARNING", "bench", "latency",
                            "--batch-size", "1", "16", "--input-len", "32", "--output-len", "32", "--num-iters", "3",
                            "--output-json", out], env=env, cwd="/tmp/omp/src", check=True, stdout=subprocess.DEVNULL)
            ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            b1, t1 = busy_jiffies()
            wall = time.time() - w0
            hz = os.sysconf("SC_CLK_TCK")
            own = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
            foreign = (b1 - b0) / hz / wall - own / wall  # cores used by others (incl. busy loop) during run
            res = json.load(open(out))
            row = {"label": label, "config": name, "round": r, "foreign_cores": round(foreign, 2),
                   "b1_ms": round(res[0]["decode_step_ms_median"], 1), "b1_p90": round(res[0]["decode_step_ms_p90"], 1),
                   "b16_ms": round(res[1]["decode_step_ms_median"], 1),
                   "b16_tok_s": round(res[1]["output_tokens_per_s"], 1),
                   "b1_tok_s": round(res[0]["output_tokens_per_s"], 1), "time": time.strftime("%H:%M:%S")}
            print(json.dumps(row), flush=True)
finally:
    if bp:
        bp.kill()
