"""Where the time to first token goes under load: a ``pagoda bench serve`` result joined with the server's
``PAGODA_REQUEST_TRACE`` lines, request by request.

Usage:
  PAGODA_REQUEST_TRACE=/tmp/trace.jsonl pagoda bench serve ... --save-result --result-filename r.json
  python benchmarks/ttft_breakdown.py r.json /tmp/trace.jsonl [--skip 64]

Segments of each request's TTFT (all wall-clock, one machine's clock):
  http_in   client sent → the front end registered it (HTTP, chat template, tokenization)
  to_core   → added to the engine core (message transit, the core's input poll)
  queue     → first scheduled (the core's loop reaching its next schedule call)
  prefill   → its first token's step outputs received by the front end (steps already in flight, the step
            computing its prompt, the output message)
  out       → the first token-carrying chunk read by the client (output processing, SSE, client parsing)
``--skip``: leave out the first N requests by send time (the burst that starts a ``--max-concurrency`` run, which
waits for each other's prefill). Prints the median and p90 of each segment and of their sum, next to the
client's TTFT and the median inter-token latency (one decode step's time, roughly).
"""

from __future__ import annotations

import argparse
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


def breakdown(result: dict, trace: list[dict], skip: int) -> dict[str, list[float]]:
    """Per segment (and ``ttft``, ``sum``), the values in ms of every joined request after the first ``skip``."""
    by_id = {t["id"]: t for t in trace}
    rows = sorted(zip(result["sent_ats"], result["response_ids"], result["ttfts"], strict=True))[skip:]
    out: dict[str, list[float]] = {k: [] for k in (*SEGMENTS, "sum", "ttft")}
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
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("result", help="bench serve's --save-result JSON (.json or .json.gz)")
    ap.add_argument("trace", help="the server's PAGODA_REQUEST_TRACE file")
    ap.add_argument("--skip", type=int, default=None, help="first requests left out (default: max_concurrency)")
    a = ap.parse_args()
    result = _load_result(a.result)
    with open(a.trace) as f:
        trace = [json.loads(line) for line in f if line.strip()]
    skip = a.skip if a.skip is not None else int(result.get("max_concurrency") or 0)
    seg = breakdown(result, trace, skip)
    n = len(seg["ttft"])
    itl = result.get("median_itl_ms") or 0.0
    print(f"{n} requests joined (first {skip} by send time left out); median ITL {itl:.2f} ms")
    print(f"{'segment':<10}{'p50 ms':>10}{'p90 ms':>10}{'mean ms':>10}")
    for k in (*SEGMENTS, "sum", "ttft"):
        xs = seg[k]
        if xs:
            print(f"{k:<10}{statistics.median(xs):>10.2f}{_pct(xs, 90):>10.2f}{statistics.fmean(xs):>10.2f}")


if __name__ == "__main__":
    main()
