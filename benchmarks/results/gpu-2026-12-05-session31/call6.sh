#!/bin/bash
# Session 31, call 6 (carry ["wheels"]; the last ~100 device seconds): W8A16 (8-bit, per-channel) at 64/256/1024
# rows, the u8 kernel's candidates against the dense copy + torch.matmul (Rule('deq'), not yet in U8_TABLE).
set -uo pipefail
export PYTHONUNBUFFERED=1
python -m pip install -q --no-index --find-links wheels --target /tmp/site msgspec 2>&1 | tail -1
export PYTHONPATH="$PWD:/tmp/site:$PWD/benchmarks/gpu"
timeout 85 python benchmarks/gpu/int_weight_sweep.py --only u8 --ms 64 256 1024 > $OUT/call6_u8.txt 2>&1
echo "rc=$?"; grep -E "floor|step linears|chosen|U8_TABLE|^    " $OUT/call6_u8.txt | tail -30
