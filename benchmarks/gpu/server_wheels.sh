#!/usr/bin/env bash
# The GPU machines lack the server's packages (fastapi, uvicorn, msgspec, pyzmq, ...) and have no
# network: download wheels here into .gpu_carry/wheels (git-ignored; pass it as a device call's
# carry), then on the GPU machine:
#   python -m pip install -q --no-index --find-links .gpu_carry/wheels fastapi uvicorn uvloop httptools msgspec pyzmq \
#       prometheus_client openai psutil
#   python -m pytest tests/server -q --deselect tests/server/test_default_model.py
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .gpu_carry/wheels
for v in 3.11 3.12 3.13; do
  python -m pip download -q --only-binary=:all: --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --python-version "$v" -d .gpu_carry/wheels \
    fastapi uvicorn uvloop httptools msgspec pyzmq prometheus_client openai psutil pytest-timeout httpx gguf
done
du -sh .gpu_carry/wheels
