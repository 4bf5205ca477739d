"""Helpers for the server tests: a real `pagoda serve` subprocess on a free port.

Servers run with ``OMP_NUM_THREADS=1``: the tiny model gains nothing from threads, and on a
shared 2-core machine spinning OpenMP threads make every step wait for descheduled peers.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

API_KEY = "sk-pagoda-test"
MODEL = "tiny"
ALIAS = "tiny-alias"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STARTED: list[RemoteServer] = []
"""Every server started in this test process, in order: ``tests/conftest.py`` adds their logs to a failed test's
report (a failure such as a 503 from the server says nothing of why without the server's own log)."""


class RemoteServer:
    def __init__(self, model: str | None, args: list[str], env: dict[str, str] | None = None,
                 api_key: str | None = None, wait: bool = True, timeout: float = 240.0,
                 log_level: str = "WARNING") -> None:
        self.api_key = api_key
        self._model, self._args, self._log_level = model, args, log_level
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        if api_key:
            full_env["PAGODA_API_KEY"] = api_key
        self._env = full_env
        self._relaunches = 0
        self._launch()
        STARTED.append(self)
        self.health_statuses: list[int] = []
        if wait:
            self.wait_ready(timeout)

    def _launch(self) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "pagoda", "--log-level", self._log_level, "serve"]
        if self._model is not None:
            cmd.append(self._model)
        cmd += ["--port", str(self.port), "--uvicorn-log-level", "warning", "--disable-log-requests", *self._args]
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"pagoda-serve-{os.getpid()}-{self.port}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self._env)
        self.url = f"http://127.0.0.1:{self.port}"

    def _lost_its_port(self) -> bool:
        """The server exited because another process took the port :func:`free_port` chose (it is free only until
        someone binds it: an outgoing connection of this process can take it meanwhile)."""
        return bool(re.search(rf"port {self.port} on \S+ is already in use", self.log())) and self._relaunches < 3

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def wait_ready(self, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if self._lost_its_port():
                    self._log.close()
                    self._relaunches += 1
                    self._launch()
                    continue
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                r = httpx.get(self.url + "/health", timeout=2)
                self.health_statuses.append(r.status_code)
                if r.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()[-5000:]

    def client(self, **kw):
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.api_key or "none", max_retries=0, **kw)

    def async_client(self, **kw):
        import openai

        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=self.api_key or "none", max_retries=0, **kw)

    def post(self, path: str, body, **kw) -> httpx.Response:
        headers = {**self.headers, **kw.pop("headers", {})}
        if isinstance(body, (bytes, str)):
            return httpx.post(self.url + path, content=body, headers={"Content-Type": "application/json", **headers},
                              timeout=kw.pop("timeout", 60), **kw)
        return httpx.post(self.url + path, json=body, headers=headers, timeout=kw.pop("timeout", 60), **kw)

    def get(self, path: str, **kw) -> httpx.Response:
        headers = {**self.headers, **kw.pop("headers", {})}
        return httpx.get(self.url + path, headers=headers, timeout=kw.pop("timeout", 30), **kw)

    def metrics(self) -> dict[str, float]:
        """Sample name (with labels) -> value, for the pagoda: series."""
        out = {}
        for line in self.get("/metrics").text.splitlines():
            if line.startswith("pagoda:"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def metric(self, name: str, **labels) -> float:
        total = 0.0
        for k, v in self.metrics().items():
            base = k.split("{", 1)[0]
            if base != name:
                continue
            if all(f'{lk}="{lv}"' in k for lk, lv in labels.items()):
                total += v
        return total

    def core_pid(self) -> int:
        """The engine-core child process (spawned by multiprocessing; named pagoda-core once it runs)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except (OSError, IndexError, ValueError):
                continue
            if ppid == self.proc.pid and b"spawn_main" in cmd:
                found.append(int(entry.name))
        named = [pid for pid in found if process_name(pid) == "pagoda-core"]
        if named or found:
            return (named or found)[0]
        raise RuntimeError("engine core process not found")

    def children_named(self, name: str) -> list[int]:
        """The server's child processes called ``name`` (``/proc/PID/comm``)."""
        kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return [int(c) for c in kids if process_name(int(c)) == name]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, exited and not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def wait_for(pred, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()




async def wait_idle(eng, timeout: float = 60.0) -> bool:
    """Whether an ``AsyncLLM``'s engine reports no running or waiting request and an empty KV cache within
    ``timeout`` seconds (a bound on a hang only: an idle core reports so in its next heartbeat, up to 1 s later)."""
    import asyncio

    for _ in range(int(timeout / 0.05)):
        s = eng.last_stats
        if s.num_running == 0 and s.num_waiting == 0 and s.kv_cache_usage == 0.0:
            return True
        await asyncio.sleep(0.05)
    return False
