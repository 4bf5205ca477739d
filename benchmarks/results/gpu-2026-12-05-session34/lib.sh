#!/bin/bash
# Session 34's device calls: session 32's set-up (packages, the 8B-shape model, `step`), plus xgrammar and jsonschema
# for the structured-output GPU tests (wheels carried; --no-deps: the machine has torch and transformers).
source benchmarks/results/gpu-2026-12-05-session32/lib.sh
[ -d /tmp/site/tvm_ffi ] || python -m pip install -q --no-index --no-deps --find-links wheels --target /tmp/site \
  xgrammar apache-tvm-ffi jsonschema referencing rpds-py jsonschema-specifications attrs 2>&1 | tail -2
