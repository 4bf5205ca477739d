#!/usr/bin/env bash
# Batch-1 decode with a long prompt (PROMPT_LEN random token ids, default 1,000; 128 greedy new tokens, EOS ignored),
# the default model, ROUNDS rounds (default 2):
# OLD_REV (default 26dd6a8: session 28 before the position chunks) against the working tree, each in its own process (a git worktree
# for the old code), alternating; the decode steps' median (engine steps timed as cpu_floor_ratio.py does).
# Usage (repository root): PROMPT_LEN=1000 ROUNDS=2 bash benchmarks/results/cpu-2026-12-05-session28/long_context_ab.sh
# (session 28 ran it at f114391, chunks on by default then; since 5c0f6e7 they are off unless set_pos_chunk is called)
set -euo pipefail
OLD=$(mktemp -d)/old
git worktree add -q --detach "$OLD" "${OLD_REV:-26dd6a8}"
trap 'git worktree remove --force "$OLD"' EXIT
cat > "$OLD/../run.py" <<'PY'
import statistics, sys, time
import torch
from pagoda import LLM, SamplingParams
llm = LLM(max_num_seqs=8, max_model_len=4096)
core = llm.llm_engine.core
times = []
step = core.step
def timed():
    t = time.perf_counter(); out = step(); times.append(time.perf_counter() - t); return out
core.step = timed
ids = torch.randint(100, 40000, (int(sys.argv[2]),), generator=torch.Generator().manual_seed(0)).tolist()
sp = SamplingParams(max_tokens=128, temperature=0, ignore_eos=True)
llm.generate([{"prompt_token_ids": ids[:16]}], SamplingParams(max_tokens=4, temperature=0), use_tqdm=False)
times.clear()
out = llm.generate([{"prompt_token_ids": ids}], sp, use_tqdm=False)
dec = times[2:]
import pagoda
print(f"{sys.argv[1]} ({pagoda.__file__}): decode step median {statistics.median(dec) * 1e3:.2f} ms over {len(dec)} steps, "
      f"first tokens {list(out[0].outputs[0].token_ids[:8])}", flush=True)
PY
for r in $(seq "${ROUNDS:-2}"); do
  (cd "$OLD" && OMP_WAIT_POLICY=PASSIVE PYTHONPATH="$OLD" python "$OLD/../run.py" old "${PROMPT_LEN:-1000}" 2>&1 | grep decode)
  OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. python "$OLD/../run.py" new "${PROMPT_LEN:-1000}" 2>&1 | grep decode
done
