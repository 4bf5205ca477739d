import json, sys
sys.path.insert(0, '.')
from pagoda.spec_decode.ngram import NgramProposer
data = json.load(open('/tmp/sim/greedy.json'))

def cost(rows, c=0.06):
    return 1.0 + c * (rows - 1)

def simulate(policy, c=0.06, verbose=False):
    tot_tokens = tot_time = 0.0
    steps = verifies = 0
    per = []
    for d in data:
        prompt, out = d["prompt"], d["out"]
        i = 0; state = {}
        t_req = 0.0; s_req = 0
        while i < len(out):
            ctx = prompt + out[:i]
            prop = policy(ctx, state)
            prop = prop[: len(out) - i - 1] if len(out) - i - 1 >= 0 else []
            a = 0
            while a < len(prop) and prop[a] == out[i + a]:
                a += 1
            if prop:
                verifies += 1
                state['last'] = (len(prop), a)
            t_req += cost(1 + len(prop), c)
            s_req += 1
            i += a + 1
        steps += s_req; tot_time += t_req; tot_tokens += len(out)
        per.append((d["task"], len(out), s_req, round(len(out) / t_req, 2)))
    if verbose:
        print(per)
    return tot_tokens / steps, tot_tokens / tot_time, verifies

def fixed(k, lo=2, hi=5):
    p = NgramProposer(lo, hi)
    return lambda ctx, st: p.propose_one(ctx, k)

def adaptive(k0=4, kmax=16, lo=2, hi=5):
    p = NgramProposer(lo, hi)
    def f(ctx, st):
        k = st.get('k', k0)
        if 'last' in st:
            n, a = st.pop('last')
            k = min(kmax, 2 * k) if a == n and n >= k else max(2, min(k, a + 2))
        st['k'] = k
        return p.propose_one(ctx, k)
    return f

for c in (0.04, 0.06, 0.08):
    print(f"verify cost per extra row {c}")
    for name, pol in [("k4", fixed(4)), ("k6", fixed(6)), ("k8", fixed(8)), ("k12", fixed(12)), ("k16", fixed(16)),
                      ("adapt4-16", adaptive()), ("adapt4-32", adaptive(kmax=32)), ("adapt2-16", adaptive(k0=2)),
                      ("adapt6-24", adaptive(k0=6, kmax=24)), ("k8 min3", fixed(8, 3, 5)), ("k8 min1", fixed(8, 1, 5))]:
        r, sp, v = simulate(pol, c)
        print(f"  {name:10s} tokens/step {r:.2f}  speed-up (decode steps only) {sp:.2f}  verifies {v}")
simulate(fixed(6), 0.06, verbose=True)
simulate(adaptive(), 0.06, verbose=True)
