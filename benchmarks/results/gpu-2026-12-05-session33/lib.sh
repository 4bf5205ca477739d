#!/bin/bash
# Shared set-up of session 33's device calls (sourced): session 32's, unchanged (packages from the carried wheels,
# the 8B-shape model, `step NAME TIMEOUT CMD...` under the call's CAP).
source benchmarks/results/gpu-2026-12-05-session32/lib.sh
