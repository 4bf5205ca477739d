"""Compiling pagoda's small native CPU kernels (C sources beside their Python wrappers).

:func:`compile_shared` builds a C file into a shared library under ``$PAGODA_CACHE/kernels/`` with the system C
compiler, once per (source, flags, compiler): the file name carries a hash of the three (the source's bytes with
those of the shared headers of this folder, e.g. ``bf16.h``, which sources include), so an edited kernel
is rebuilt and concurrent processes never load a half-written file (each compiles to its own temporary name,
then renames atomically). :func:`load_library` also loads it with ctypes; callers self-check it against torch
before use; no compiler, or a failed compile, returns None and the caller keeps its torch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger("pagoda")


def cache_dir() -> Path:
    from pagoda import envs

    return Path(os.path.expanduser(envs.cache_root())) / "kernels"


def compile_shared(source: Path, flags: tuple[str, ...], what: str) -> Path | None:
    """The shared library built from ``source`` with ``flags`` (cached), or None (logged at info with
    ``what``, the kernel's name for the log) when there is no C compiler or the compile fails."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    here = Path(__file__).parent
    src = source.read_bytes() + b"".join(h.read_bytes() for h in sorted(here.glob("*.h")))  # shared headers too
    flags = (*flags, "-I", str(here))
    tag = hashlib.sha256(src + " ".join(flags).encode() + cc.encode()).hexdigest()[:16]
    out = cache_dir() / f"{source.stem}-{tag}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_so = Path(tmp) / out.name
        res = subprocess.run([cc, *flags, "-o", str(tmp_so), str(source)], capture_output=True, text=True,
                             timeout=120)
        if res.returncode != 0:
            logger.info("CPU: %s did not compile (%s); torch's ops are used", what,
                        res.stderr.strip().splitlines()[-1:] or res.returncode)
            return None
        os.replace(tmp_so, out)  # atomic: concurrent processes each write their own temp file
    return out


def load_library(source: Path, flags: tuple[str, ...], what: str) -> ctypes.CDLL | None:
    """:func:`compile_shared` then ``ctypes.CDLL``: the loaded library, or None (logged at info with ``what``) when
    there is no compiler, the compile fails or the library does not load. Callers self-check it before use."""
    try:
        path = compile_shared(source, flags, what)
        return ctypes.CDLL(str(path)) if path is not None else None
    except (OSError, subprocess.SubprocessError) as e:
        logger.info("CPU: %s is unavailable (%s); torch's ops are used", what, e)
        return None


def cpu_has(*flags: str) -> bool:
    """``cpuid`` reports every one of ``flags`` (``/proc/cpuinfo``'s names, e.g. ``avx512_bf16``): instructions of
    those extensions will not fault here. False where the file cannot be read."""
    try:
        line = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        return False
    have = set(line.split())
    return all(f in have for f in flags)


def isa_flags() -> tuple[str, ...]:
    """The compiler's ISA flags for torch's CPU capability here (AVX-512 / AVX2 with FMA; none elsewhere)."""
    import torch

    cap = torch.backends.cpu.get_cpu_capability()
    if cap in ("AVX512", "AMX"):
        return ("-mavx512f", "-mavx2", "-mfma")
    return ("-mavx2", "-mfma") if cap == "AVX2" else ()


def load_checked(source: Path, flags: tuple[str, ...], what: str, symbol: str, argtypes: list,
                 self_check: Callable[[ctypes.CDLL], bool]) -> ctypes.CDLL | None:
    """:func:`load_library`, ``symbol``'s signature (an int return and ``argtypes``), then ``self_check(lib)``: the
    library, or None (a warning names ``what`` when the check fails, and its caller keeps its torch path)."""
    lib = load_library(source, flags, what)
    if lib is None:
        return None
    fn = getattr(lib, symbol)
    fn.restype = ctypes.c_int
    fn.argtypes = argtypes
    if not self_check(lib):
        logger.warning("CPU: %s disagrees with a float64 reference on this machine; its torch path is used", what)
        return None
    return lib
