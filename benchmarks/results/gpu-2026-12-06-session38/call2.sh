#!/bin/bash
# Session 38, call 2 (carry ["wheels"]): where the batch-1 verify step's exposed host path goes on the GPU's host
# (call 1: 185 us median from the event wait's return to the next graph launch, ~110 us of it inside the runner's
# _forward before the replay, where the dev VM measured 12 us of staging): the phases with finer timers, the same
# with Python's collector off (a GC hypothesis), and a cProfile of the same steps.
set -uo pipefail
export CAP=560
source benchmarks/results/gpu-2026-12-06-session38/lib.sh
SC='{"max_model_len": 2048, "speculative_config": {"method": "synthetic", "num_speculative_tokens": 4}}'
W="pagoda.worker.verify_graphs:VerifyGraphs.run pagoda.worker.model_runner:ModelRunner._forward_path
 pagoda.worker.verify_graphs:stage_tokens pagoda.worker.verify_graphs:VerifyGraphs.last_logits
 pagoda.worker.model_runner:ModelRunner._block_table_rows pagoda.engine.core:EngineCore._result
 pagoda.layers.sampler:DeviceSample.finish
 pagoda.engine.core:EngineCore._advance_grammars pagoda.structured_output.manager:StructuredOutputManager.grammar_bitmask"
step phases 80 python benchmarks/gpu/profile_steps.py $M --batch 1 --steps 60 --phases --wrap $W --engine-args "$SC"
sed -n '/host phases/,/event wait returned/p' $OUT/phases.txt | tee -a $S
step phases_nogc 80 python -c "import gc, runpy, sys; gc.disable(); sys.argv = sys.argv[1:]; \
runpy.run_path(sys.argv[0], run_name='__main__')" benchmarks/gpu/profile_steps.py $M --batch 1 --steps 60 --phases \
  --engine-args "$SC"
sed -n '/host phases/,/event wait returned/p' $OUT/phases_nogc.txt | sed 's/^/gc off: /' | tee -a $S
step cprofile 90 python benchmarks/gpu/profile_steps.py $M --batch 1 --steps 60 --cprofile --engine-args "$SC"
exit 0
