import json
from collections import defaultdict
for name in ("base", "spec"):
    L = [json.loads(l) for l in open(f"/tmp/sim/tl_{name}.jsonl")]
    agg = defaultdict(lambda: [0, 0.0, 0.0, 0])
    prev_t1 = None; gap = 0.0
    for x in L:
        if x["prefill_tokens"]:
            cls = "prefill"
        elif x["decode_tokens"] == 1:
            cls = "decode"
        elif x["decode_tokens"] > 1:
            cls = f"verify{x['decode_tokens']}"
        else:
            cls = "none"
        a = agg[cls]; a[0] += 1; a[1] += x["t1"] - x["t0"]; a[2] += x.get("wait_s") or 0; a[3] += x.get("out_tokens") or 0
        if prev_t1 is not None and x["t0"] - prev_t1 < 0.5:
            gap += x["t0"] - prev_t1
        prev_t1 = x["t1"]
    tot = sum(a[1] for a in agg.values())
    print(name, f"in step() {tot:.2f} s, between steps {gap:.2f} s")
    for cls, (n, t, w, o) in sorted(agg.items()):
        print(f"  {cls:9s} n={n:5d}  total {t:6.2f} s  per step {1e3 * t / n:6.2f} ms  wait {1e3 * w / n:6.2f} ms  out {o}")
