#!/bin/bash
# Session 38 (the Xeon dev VM with AMX, after the code and head-table prefetch): the default model against llama.cpp and HF, under pagoda's passive wait policy
# and without it (each backend credited with its better run), as session 28's peers.sh.
cd "$(git rev-parse --show-toplevel)"
D=benchmarks/results/cpu-2026-12-06-session38
OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. .venv/bin/python benchmarks/cpu_default_model.py --rounds 3 --backends pagoda-q llama.cpp hf --output-json $D/default_model_passive.json > $D/default_model_passive.txt 2>&1
env -u OMP_WAIT_POLICY PYTHONPATH=. .venv/bin/python benchmarks/cpu_default_model.py --rounds 3 --backends pagoda-q llama.cpp hf --output-json $D/default_model_default_env.json > $D/default_model_default_env.txt 2>&1
