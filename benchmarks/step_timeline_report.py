"""Summarize a step timeline (``--step-timeline PATH`` of ``pagoda bench throughput|latency``, or the
``PAGODA_STEP_TIMELINE`` file of a server's engine core): where a run's time went.

    python benchmarks/step_timeline_report.py PATH [--json]

For each run label in the file (fields: pagoda/engine/step_timeline.py) it prints:

* the span (first step's start to last step's end), the time inside ``step()`` calls and the time
  between them (the front end's work: output processing, detokenization, adding requests);
* time, steps and mean / median step by batch size (the requests of the step a call launched), in buckets 1, 2-4, 5-16,
  17-64, 65-256, >256 (and "none": calls that only waited for the last step in flight);
* time in steps with prompt tokens against pure decode steps;
* the tail: from the first call after the peak of running requests at which fewer than 25 % of that
  peak are running, to the end (its time, share of the span, steps, output tokens, mean batch);
* the host-wait share: time blocked on device results / time inside ``step()``;
* steps and time per forward path (decode_graph, verify_graph, chunk_graph, eager).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from typing import Any

BUCKETS = ((1, 1, "1"), (2, 4, "2-4"), (5, 16, "5-16"), (17, 64, "17-64"), (65, 256, "65-256"),
           (257, None, ">256"))
TAIL_FRACTION = 0.25


def bucket(n: int) -> str:
    """The batch-size bucket of a step of ``n`` requests ("none" for 0)."""
    for lo, hi, name in BUCKETS:
        if n >= lo and (hi is None or n <= hi):
            return name
    return "none"


def _dur(r: dict[str, Any]) -> float:
    return r["t1"] - r["t0"]


def _group(recs: list[dict[str, Any]], key) -> dict[str, dict[str, float]]:
    """Per group: steps, seconds, tokens, and the median step in ms (a mean far above it: a few slow steps)."""
    out: dict[str, dict[str, float]] = defaultdict(lambda: {"steps": 0, "seconds": 0.0, "prefill_tokens": 0,
                                                           "decode_tokens": 0, "out_tokens": 0})
    durs: dict[str, list[float]] = defaultdict(list)
    for r in recs:
        g = out[key(r)]
        g["steps"] += 1
        g["seconds"] += _dur(r)
        durs[key(r)].append(_dur(r))
        for k in ("prefill_tokens", "decode_tokens", "out_tokens"):
            g[k] += r[k]
    for name, g in out.items():
        g["median_ms"] = 1000 * statistics.median(durs[name])
    return dict(out)


def tail_start(recs: list[dict[str, Any]], fraction: float = TAIL_FRACTION) -> int | None:
    """Index of the first record after the peak of running requests with fewer than ``fraction`` x peak
    running; None when it never falls that low (or nothing ran)."""
    running = [r["num_running"] or 0 for r in recs]
    if not running or max(running) == 0:
        return None
    peak = max(running)
    first_peak = running.index(peak)
    for i in range(first_peak + 1, len(recs)):
        if running[i] < fraction * peak:
            return i
    return None


def _tail(recs: list[dict[str, Any]], span: float) -> dict[str, Any]:
    i = tail_start(recs)
    peak = max((r["num_running"] or 0) for r in recs)
    if i is None:
        return {"peak_running": peak, "start_step": None, "seconds": 0.0, "share": 0.0, "steps": 0,
                "out_tokens": 0, "mean_batch": None}
    t = recs[i:]
    seconds = recs[-1]["t1"] - recs[i]["t0"]
    launched = [r["num_reqs"] for r in t if r["num_reqs"]]
    return {"peak_running": peak, "start_step": recs[i]["step"], "seconds": seconds,
            "share": seconds / span if span else 0.0, "steps": len(t), "out_tokens": sum(r["out_tokens"] for r in t),
            "mean_batch": sum(launched) / len(launched) if launched else None}


def summarize(recs: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of one run's records (file order = step order)."""
    span = recs[-1]["t1"] - recs[0]["t0"]
    inside = sum(_dur(r) for r in recs)
    wait = sum(r["wait_s"] for r in recs)
    by_bucket = _group(recs, lambda r: bucket(r["num_reqs"]))
    order = [name for _, _, name in BUCKETS] + ["none"]
    return {
        "steps": len(recs),
        "span_s": span,
        "in_step_s": inside,
        "between_steps_s": span - inside,
        "out_tokens": sum(r["out_tokens"] for r in recs),
        "by_batch": {k: by_bucket[k] for k in order if k in by_bucket},
        "by_kind": _group(recs, lambda r: "prefill" if r["prefill_tokens"] else
                          ("decode" if r["decode_tokens"] else "none")),
        "tail": _tail(recs, span),
        "host_wait_s": wait,
        "host_wait_share": wait / inside if inside else 0.0,
        "by_path": _group(recs, lambda r: r["path"] or "none"),
    }


def _table(title: str, groups: dict[str, dict[str, float]], total: float) -> list[str]:
    lines = [f"  {title:<14}{'steps':>8}{'seconds':>10}{'share':>8}{'mean ms':>9}{'p50 ms':>8}{'prefill tok':>13}"
             f"{'decode tok':>12}{'out tok/s':>11}"]
    for name, g in groups.items():
        s = g["seconds"]
        lines.append(f"  {name:<14}{g['steps']:>8}{s:>10.3f}{100 * s / total if total else 0:>7.1f}%"
                     f"{1000 * s / g['steps']:>9.2f}{g['median_ms']:>8.2f}{g['prefill_tokens']:>13}"
                     f"{g['decode_tokens']:>12}{g['out_tokens'] / s if s else 0:>11.0f}")
    return lines


def format_summary(run: str, s: dict[str, Any]) -> str:
    t = s["tail"]
    lines = [
        f"== run {run or '(unlabelled)'}: {s['steps']} steps, span {s['span_s']:.3f} s, inside step() "
        f"{s['in_step_s']:.3f} s, between steps {s['between_steps_s']:.3f} s, {s['out_tokens']} output tokens",
        *_table("batch", s["by_batch"], s["in_step_s"]),
        *_table("kind", s["by_kind"], s["in_step_s"]),
        *_table("path", s["by_path"], s["in_step_s"]),
        f"  host wait for the device: {s['host_wait_s']:.3f} s = {100 * s['host_wait_share']:.1f}% of the time "
        f"inside step()",
    ]
    if t["start_step"] is None:
        lines.append(f"  tail: running never fell below {int(100 * TAIL_FRACTION)}% of its peak ({t['peak_running']})")
    else:
        mb = f"{t['mean_batch']:.1f}" if t["mean_batch"] is not None else "n/a"
        lines.append(f"  tail (running < {int(100 * TAIL_FRACTION)}% of peak {t['peak_running']}, from step "
                     f"{t['start_step']}): {t['seconds']:.3f} s = {100 * t['share']:.1f}% of the span, {t['steps']} "
                     f"steps, {t['out_tokens']} output tokens, mean batch {mb}")
    return "\n".join(lines)


def load_runs(path: str) -> dict[str, list[dict[str, Any]]]:
    """Records grouped by run label, in file order."""
    runs: dict[str, list[dict[str, Any]]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                runs.setdefault(r.get("run", ""), []).append(r)
    return runs


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("path", help="step timeline (JSON lines)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON instead of tables")
    args = p.parse_args(argv)
    runs = load_runs(args.path)
    if not runs:
        sys.exit(f"{args.path}: no step recorded")
    out = {run: summarize(recs) for run, recs in runs.items()}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print("\n".join(format_summary(run, s) for run, s in out.items()))
    return out


if __name__ == "__main__":
    main()
