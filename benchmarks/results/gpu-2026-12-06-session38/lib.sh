#!/bin/bash
# Session 38's device calls: session 34's set-up (packages, the 8B-shape model, `step`, CLI/LAT/TP).
source benchmarks/results/gpu-2026-12-05-session34/lib.sh
