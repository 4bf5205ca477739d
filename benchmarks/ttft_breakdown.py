"""Where the time to first token goes under load: a ``pagoda bench serve`` result joined with the server's
``PAGODA_REQUEST_TRACE`` lines, request by request.

Usage:
  PAGODA_REQUEST_TRACE=/tmp/trace.jsonl pagoda bench serve ... --save-result --result-filename r.json
  python benchmarks/ttft_breakdown.py r.json /tmp/trace.jsonl [--skip 64] [--steps core_steps.jsonl]

Segments of each request's TTFT (all wall-clock, one machine's clock):
  http_in   client sent → the front end registered it (HTTP, chat template, tokenization)
  to_core   → added to the engine core (message transit, the core's input poll)
  queue     → first scheduled (the core's loop reaching its next schedule call)
  prefill   → its first token's step outputs received by the front end (steps already in flight, the step
            computing its prompt, the output message)
  out       → the first token-carrying chunk read by the client (output processing, SSE, client parsing)
``--steps``: the engine core's step timeline of the same run (``PAGODA_STEP_TIMELINE``); the prefill segment is then
also split at the ends of the core's ``step()`` calls (their ``wall_t1``):
  in_flight   → the end of the call that scheduled it (with async scheduling: the step already on the device)
  prompt_step → the end of the last call before its first token reached the front end (the step(s) computing
                its prompt, as the host saw them; 0 without async scheduling, where in_flight holds that step)
  to_front    → its first token received by the front end (output message, the front end's loop)
``--skip``: leave out the first N requests by send time (the burst that starts a ``--max-concurrency`` run, which
waits for each other's prefill). Prints the median and p90 of each segment and of their sum, next to the
client's TTFT and the median inter-token latency (one decode step's time, roughly).
"""

from __future__ import annotations

import argparse
import bisect
import gzip
import json
import statistics

SEGMENTS = ("http_in", "to_core", "queue", "prefill", "out")


def _load_result(path: str) -> dict:
    with (gzip.open(path, "rt") if path.endswith(".gz") else open(path)) as f:
        return json.load(f)


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q / 100 * len(s)))]


PREFILL_PARTS = ("in_flight", "prompt_step", "to_front")


def split_prefill(scheduled: float, first_token: float, ends: list[float]) -> tuple[float, float, float] | None:
    """(in_flight, prompt_step, to_front) in ms of one request's prefill segment, from the sorted wall-clock ends
    of the core's ``step()`` calls; None when no call ended inside the segment."""
    k = bisect.bisect_left(ends, scheduled)  # the call that scheduled it ends at or after it
    j = bisect.bisect_right(ends, first_token) - 1  # the last call that ended before the front end had the token
    if k >= len(ends) or j < k:
        return None
    return (ends[k] - scheduled) * 1e3, (ends[j] - ends[k]) * 1e3, (first_token - ends[j]) * 1e3


def breakdown(result: dict, trace: list[dict], skip: int, steps: list[dict] | None = None) -> dict[str, list[float]]:
    """Per segment (and ``ttft``, ``sum``), the values in ms of every joined request after the first ``skip``;
    with ``steps`` (a step timeline) also the prefill segment's parts (:data:`PREFILL_PARTS`)."""
    by_id = {t["id"]: t for t in trace}
    rows = sorted(zip(result["sent_ats"], result["response_ids"], result["ttfts"], strict=True))[skip:]
    out: dict[str, list[float]] = {k: [] for k in (*SEGMENTS, "sum", "ttft")}
    ends = sorted(r["wall_t1"] for r in steps or [])
    if steps is not None:
        out.update({k: [] for k in PREFILL_PARTS})
    for sent, rid, ttft in rows:
        t = by_id.get(f"{rid}-0") or by_id.get(rid)  # completions: the engine request of prompt 0
        if ttft is None or t is None or None in (t["core_arrival"], t["scheduled"], t["first_token"]):
            continue
        marks = [sent, t["arrival"], t["core_arrival"], t["scheduled"], t["first_token"], sent + ttft]
        segs = [(b - a) * 1e3 for a, b in zip(marks, marks[1:], strict=False)]
        for k, v in zip(SEGMENTS, segs, strict=True):
            out[k].append(v)
        out["sum"].append(sum(segs))
        out["ttft"].append(ttft * 1e3)
        parts = split_prefill(t["scheduled"], t["first_token"], ends) if ends else None
        for k, v in zip(PREFILL_PARTS, parts or (), strict=False):
            out[k].append(v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("result", help="bench serve's --save-result JSON (.json or .json.gz)")
    ap.add_argument("trace", help="the server's PAGODA_REQUEST_TRACE file")
    ap.add_argument("--skip", type=int, default=None, help="first requests left out (default: max_concurrency)")
    ap.add_argument("--steps", default=None, help="the core's PAGODA_STEP_TIMELINE file of the same run")
    a = ap.parse_args()
    result = _load_result(a.result)
    with open(a.trace) as f:
        trace = [json.loads(line) for line in f if line.strip()]
    steps = None
    if a.steps:
        with open(a.steps) as f:
            steps = [json.loads(line) for line in f if line.strip()]
    skip = a.skip if a.skip is not None else int(result.get("max_concurrency") or 0)
    seg = breakdown(result, trace, skip, steps)
    n = len(seg["ttft"])
    itl = result.get("median_itl_ms") or 0.0
    print(f"{n} requests joined (first {skip} by send time left out); median ITL {itl:.2f} ms")
    print(f"{'segment':<14}{'p50 ms':>10}{'p90 ms':>10}{'mean ms':>10}")
    for k in (*SEGMENTS, "sum", "ttft", *(f"  {p}" for p in PREFILL_PARTS if p in seg)):
        xs = seg[k.strip()]
        if xs:
            print(f"{k:<14}{statistics.median(xs):>10.2f}{_pct(xs, 90):>10.2f}{statistics.fmean(xs):>10.2f}")
    if steps is not None:
        print(f"(prefill split for {len(seg['in_flight'])} of the {n} requests: those with a step() call ending inside "
              "their prefill segment)")


if __name__ == "__main__":
    main()
