"""The server side of ``pagoda bench serve``: start a server for the run, and read the CPU time of its
processes (Linux ``/proc``).

``--serve-cmd`` starts the given command line (no shell: its pid is the API server process), waits
until ``/health`` answers 200, and stops it (SIGINT, then SIGKILL) after the run. It refuses to start when
something already listens on the bench's port (a server left by an earlier run would answer the health check
and be measured instead). ``--server-pid``
names a server on this host that the bench did not start. Either way the bench reads, just before and
just after the timed run, the CPU seconds (user + system, all threads) of

* the API server processes: the pid and, with ``--api-server-count``, its children named ``pagoda-api<N>``
  (summed), and
* its engine-core processes: its other children started by ``multiprocessing``'s spawn (``spawn_main`` in
  their command line; one per data-parallel replica, summed),

so their differences are the CPU each spent on the run. Without a pid, or off Linux, there is none.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

_PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (field 3, the state, is index 0)."""
    text = (_PROC / str(pid) / "stat").read_text()
    return text.rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (every thread), from /proc/<pid>/stat."""
    f = _stat_fields(pid)
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


API_SERVER_NAME_PREFIX = "pagoda-api"
"""API servers 1.. of ``--api-server-count`` name themselves ``pagoda-api<N>`` (``/proc/<pid>/comm``)."""


def _spawned_children(server_pid: int) -> list[tuple[int, str]]:
    """(pid, name) of the server's children started by multiprocessing's spawn, in pid order."""
    out = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry.name))[1])
            cmd = (entry / "cmdline").read_bytes()
            name = (entry / "comm").read_text().strip()
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile, or not ours to read
        if ppid == server_pid and b"spawn_main" in cmd:
            out.append((int(entry.name), name))
    return sorted(out)


@dataclass
class CpuSnapshot:
    """CPU seconds of the API server(s) and of its engine cores at one moment."""

    api_server_s: float
    engine_core_s: float
    engine_core_pids: list[int]

    @classmethod
    def take(cls, server_pid: int) -> CpuSnapshot:
        children = _spawned_children(server_pid)
        cores = [pid for pid, name in children if not name.startswith(API_SERVER_NAME_PREFIX)]
        apis = [server_pid] + [pid for pid, name in children if name.startswith(API_SERVER_NAME_PREFIX)]
        return cls(sum(cpu_seconds(p) for p in apis), sum(cpu_seconds(p) for p in cores), cores)


def cpu_report(before: CpuSnapshot | None, after: CpuSnapshot | None, output_tokens: int,
               requests: int) -> dict[str, float | int | None]:
    """CPU seconds of each process over the run, per output token and per request (None: not measured)."""
    if before is None or after is None:
        return {"api_server_cpu_s": None, "engine_core_cpu_s": None, "api_server_cpu_ms_per_output_token": None,
                "engine_core_cpu_ms_per_output_token": None, "api_server_cpu_ms_per_request": None,
                "engine_core_processes": None}
    api = after.api_server_s - before.api_server_s
    # None: no engine-core child (not a pagoda server), or the cores changed during the run (restarted)
    same = after.engine_core_pids == before.engine_core_pids and bool(after.engine_core_pids)
    core = after.engine_core_s - before.engine_core_s if same else None
    per_tok = 1000 / output_tokens if output_tokens else None
    return {
        "api_server_cpu_s": api,
        "engine_core_cpu_s": core,
        "api_server_cpu_ms_per_output_token": api * per_tok if per_tok else None,
        "engine_core_cpu_ms_per_output_token": core * per_tok if per_tok and core is not None else None,
        "api_server_cpu_ms_per_request": 1000 * api / requests if requests else None,
        "engine_core_processes": len(after.engine_core_pids),
    }


def port_in_use(base_url: str) -> bool:
    """Whether a TCP connection to ``base_url``'s host and port succeeds now."""
    u = urlsplit(base_url)
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


class LaunchedServer:
    """A server command run for the benchmark; its output goes to ``log_path``."""

    def __init__(self, cmd: str, log_path: str | None = None, base_url: str | None = None) -> None:
        """``base_url``: where the bench will talk to it; nothing may listen there yet (``ValueError``)."""
        argv = shlex.split(cmd)
        if not argv:
            raise ValueError("--serve-cmd is empty")
        if base_url is not None and port_in_use(base_url):
            raise ValueError(f"--serve-cmd: something already listens at {base_url} (a server left by an earlier "
                             f"run?); stop it or give the bench and the server another --port.")
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix="pagoda-bench-serve-", suffix=".log")
            os.close(fd)
        self.log_path = log_path
        self._log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def log_tail(self, chars: int = 3000) -> str:
        self._log.flush()
        return Path(self.log_path).read_text(errors="replace")[-chars:]

    def wait_ready(self, base: str, timeout: float) -> float:
        """Wait until GET ``base``/health answers 200; returns the seconds it took."""
        import httpx

        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode} before it was ready "
                                   f"(log {self.log_path}):\n{self.log_tail()}")
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    return time.monotonic() - t0
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"the server was not ready after {timeout:.0f} s (log {self.log_path}):\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGINT (a clean shutdown), then SIGKILL after ``timeout`` seconds."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
