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
# xgrammar without its dependencies (torch, transformers, triton and numpy are on the GPU image), plus what it and
# the structured-output tests import that the image lacks: apache-tvm-ffi (xgrammar >= 0.2.9) and jsonschema's tree.
python -m pip download -q --no-deps --only-binary=:all: --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
  --python-version 3.12 -d .gpu_carry/wheels xgrammar apache-tvm-ffi jsonschema jsonschema-specifications referencing \
  rpds-py attrs
du -sh .gpu_carry/wheels
