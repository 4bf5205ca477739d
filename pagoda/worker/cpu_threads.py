"""How torch's CPU threads wait and how many there are: pagoda's default for shared machines.

torch's CPU wheel computes with OpenMP (GNU libgomp, shipped in ``torch/lib``; MKL and oneDNN
use the same runtime). With the runtime's default wait policy a thread that reaches the end of
a parallel region spins before it sleeps. On a machine that does nothing else that is the
fastest choice; when any other process uses the cores, the spinners and the threads they wait
for take turns on the CPU and a decode step gets many times slower (measurements in
benchmarks/RESULTS.md, the choice in docs/design.md, "CPU threads").

The policy, applied unless the user chose their own:

* ``OMP_WAIT_POLICY=PASSIVE``: a waiting thread sleeps at once (libgomp and LLVM/Intel libomp
  both read this variable). Not set when the user set any of ``OMP_WAIT_POLICY``,
  ``GOMP_SPINCOUNT`` or ``KMP_BLOCKTIME``.
* ``OMP_NUM_THREADS`` = the CPUs this process may use (its affinity mask and cgroup CPU quota),
  only when that is fewer than the machine's CPUs, which torch would otherwise use. Not set
  when the user set ``OMP_NUM_THREADS``.

The OpenMP runtime reads these variables once, when it is loaded (``import torch``), so
:func:`apply_env_policy` runs from ``pagoda/__init__.py`` before anything imports torch: every
``pagoda`` command, the engine-core process of ``pagoda serve`` (it inherits the environment)
and a user's ``import pagoda`` that comes before ``import torch``. When torch was loaded first,
:func:`apply_runtime_policy` (called when a CPU engine starts) can still lower the thread
count with ``torch.set_num_threads``, but the wait policy stays the runtime's: it logs a hint
once instead.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Iterator, MutableMapping

logger = logging.getLogger("pagoda")

WAIT_POLICY = {"OMP_WAIT_POLICY": "PASSIVE"}
"""Environment pagoda sets for the wait policy (the measured choice; see docs/design.md)."""

WAIT_KNOBS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
"""Variables by which a user chooses the wait policy; any one of them set turns pagoda's off."""

THREADS_KNOB = "OMP_NUM_THREADS"

SMALL_STEP_MAX_ROWS = 8
"""Under the passive wait policy a CPU forward of at most this many token rows runs on one thread (the LM head
and sampling keep every thread): each parallel region would wake a sleeping thread (a futex round trip per op),
which costs more than the second core gives a small op. Measured 2026-12-02 on the 2-core dev VM, default model,
``benchmarks/cpu_switch_ab.py --switch one-thread`` (benchmarks/RESULTS.md, "CPU: one thread for small steps"):
batch 1 1.37x, 4 1.13x, 8 1.05x, 16 0.97x tok/s (32, untouched: 0.97x, the arms' noise). With spinning threads
(``OMP_WAIT_POLICY=ACTIVE``) two threads stay faster, so the switch applies under the passive policy only, and never
under ``--deterministic`` (:func:`small_steps_one_thread`)."""


class _State:
    """What :func:`apply_env_policy` did in this process, for :func:`apply_runtime_policy`."""

    added: dict[str, str] = {}
    torch_loaded_first = False
    runtime_done = False
    outer_threads = 0  # inside one_thread(): torch's count outside it


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, bounded by a cgroup CPU quota (containers)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def _cgroup_cpu_quota() -> float | None:
    """CPUs' worth of time per period allowed by cgroup v2 ``cpu.max`` or v1 ``cfs_quota_us``; None if unlimited."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            q = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            p = int(f.read())
        return q / p if q > 0 and p > 0 else None
    except (OSError, ValueError):
        return None


def policy_env(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """The variables pagoda would add to ``environ`` (default ``os.environ``); never one already set."""
    env = os.environ if environ is None else environ
    out: dict[str, str] = {}
    if not any(k in env for k in WAIT_KNOBS):
        out.update(WAIT_POLICY)
    if THREADS_KNOB not in env:
        n = usable_cpus()
        if n < (os.cpu_count() or n):
            out[THREADS_KNOB] = str(n)
    return out


def apply_env_policy(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Add :func:`policy_env` to the environment; returns what was added.

    Effective for this process only if torch is not imported yet (recorded for
    :func:`apply_runtime_policy`); child processes started afterwards inherit it either way.
    """
    env = os.environ if environ is None else environ
    added = policy_env(env)
    env.update(added)
    if environ is None:
        _State.added = added
        _State.torch_loaded_first = "torch" in sys.modules
    return added


def passive_wait() -> bool:
    """Whether torch's OpenMP threads run under ``OMP_WAIT_POLICY=PASSIVE`` (set before torch loaded: by the user,
    by this process's :func:`apply_env_policy`, or inherited from a parent that applied it)."""
    if os.environ.get("OMP_WAIT_POLICY", "").strip().upper() != "PASSIVE":
        return False
    return not (_State.torch_loaded_first and "OMP_WAIT_POLICY" in _State.added)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch's intra-op work on the calling thread only, for the block (results are bitwise the same: torch's CPU
    kernels split work, not sums, across threads)."""
    import torch

    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    _State.outer_threads = n
    try:
        yield
    finally:
        _State.outer_threads = 0
        torch.set_num_threads(n)


def small_steps_one_thread(device_type: str, deterministic: bool) -> bool:
    """Whether a forward of at most :data:`SMALL_STEP_MAX_ROWS` rows runs in :func:`one_thread`: on the CPU, under the
    passive wait policy, outside ``--deterministic``. Invariant kept: under ``--deterministic`` every step runs on the
    same thread count, so a row's bits cannot depend on how many rows its step has. The mode's dense GEMMs (oneDNN
    bf16, in 32-row tiles) split some sums by thread count (measured on the default model: 1 vs 16 threads gave other
    bits for o_proj / down_proj tiles), while the default path's int4 kernels do not (1-40 rows, 1-16 threads)."""
    return device_type == "cpu" and not deterministic and passive_wait()


def outer_threads() -> int:
    """torch's intra-op thread count, outside any :func:`one_thread` block (inside one, the count it set aside):
    the threads of work that waits for no sleeping OpenMP thread, such as the native decoder stack's own team."""
    import torch

    return _State.outer_threads or torch.get_num_threads()


def user_chose_threads() -> bool:
    """Whether ``OMP_NUM_THREADS`` is the user's (set, and not by :func:`apply_env_policy`)."""
    return THREADS_KNOB in os.environ and THREADS_KNOB not in _State.added


def apply_runtime_policy() -> None:
    """Once per process, when a CPU engine starts: what can still be done with torch loaded.

    Lowers torch's intra-op threads to :func:`usable_cpus` when it uses more and the user set no
    ``OMP_NUM_THREADS`` (a count the user chose with ``torch.set_num_threads`` at or below that
    is kept). When torch was imported before pagoda and the user chose no wait policy, logs
    once how to get pagoda's.
    """
    if _State.runtime_done:
        return
    _State.runtime_done = True
    import torch

    n = usable_cpus()
    if not user_chose_threads() and torch.get_num_threads() > n:
        logger.info("Using %d CPU threads (the CPUs this process may use) instead of %d", n, torch.get_num_threads())
        torch.set_num_threads(n)
    if _State.torch_loaded_first and any(k in _State.added for k in WAIT_KNOBS):
        logger.info(
            "torch was imported before pagoda, so its OpenMP threads keep busy-waiting between steps; on a "
            "machine shared with other work, set %s before Python starts (see docs/design.md).",
            " ".join(f"{k}={v}" for k, v in WAIT_POLICY.items()),
        )

