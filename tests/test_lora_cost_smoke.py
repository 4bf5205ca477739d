"""Smoke run of ``benchmarks/cpu/lora_cost.py --smoke`` on the tiny Llama (so the script cannot rot): every arm
prints its rounds and a summary row. No timing assertions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("peft")
ROOT = Path(__file__).resolve().parents[1]


def test_lora_cost_smoke(tiny):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/cpu/lora_cost.py"), "--smoke", "--model",
                          str(tiny.path("llama"))], capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True).stdout
    assert all(f"batch  1 {a} " in out and f"\n{a} " in out for a in ("base", "lora-none", "lora-r16")), out
