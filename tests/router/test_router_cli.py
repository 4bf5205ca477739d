"""``pagoda router`` as a command: flags documented in docs/cli.md, start-up errors, and a subprocess
router that re-reads its --backends-file on SIGHUP."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from router_utils import FakeBackend
from server_utils import free_port, wait_for

from pagoda.entrypoints.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def router_parser():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices["router"]


def test_every_router_flag_is_documented():
    doc = (ROOT / "docs/cli.md").read_text()
    section = doc.split("## `pagoda router`", 1)[1].split("\n## ", 1)[0]
    flags = {o for a in router_parser()._actions for o in a.option_strings if o.startswith("--") and o != "--help"}
    documented = set(re.findall(r"`(--[a-z0-9-]+)", section))
    assert flags == documented


def test_no_backend_is_a_startup_error():
    from pagoda.router.cli_args import router_config

    args = build_parser().parse_args(["router"])
    with pytest.raises(ValueError, match="--backend"):
        router_config(args)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["router", "--backend", "x:1", "--routing-logic", "kvaware"])


def test_a_bad_backend_url_is_a_startup_error_naming_its_flag(tmp_path):
    from pagoda.router.cli_args import router_config

    args = build_parser().parse_args(["router", "--backend", "http://h:8000", "--backend", "http://h:abc"])
    with pytest.raises(ValueError, match=r"--backend http://h:abc: backend URL 'http://h:abc' is not a valid URL"):
        router_config(args)
    listed = tmp_path / "backends.yaml"
    listed.write_text("- http://h:8000\n- http://h:99999\n")
    args = build_parser().parse_args(["router", "--backends-file", str(listed)])
    with pytest.raises(ValueError, match=r"--backends-file .*: backend URL 'http://h:99999': port 99999 is not in"):
        router_config(args)


def test_bad_port_or_host_is_a_startup_error():
    """The same [1, 65535] check as serve's (it used to log port 70000 and listen on 4464), and an address that does
    not resolve is named as --host's, before uvicorn starts."""
    from pagoda.router.cli_args import router_config, run_router

    for port in ("70000", "-1", "0"):
        args = build_parser().parse_args(["router", "--backend", "http://127.0.0.1:9", "--port", port])
        with pytest.raises(ValueError, match=rf"--port must be in \[1, 65535\], got {port}\."):
            router_config(args)
    args = build_parser().parse_args(["router", "--backend", "http://127.0.0.1:9", "--host", "no.such.host.invalid",
                                      "--port", str(free_port())])
    with pytest.raises(ValueError, match=r"cannot resolve --host no.such.host.invalid .*; change --host\."):
        run_router(args)
    for extra in (["--port", "70000"], ["--host", "999.1.1.1"]):
        r = subprocess.run([sys.executable, "-m", "pagoda", "router", "--backend", "http://127.0.0.1:9", *extra],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().splitlines()[-1].startswith("error: ") and extra[0] in r.stderr
        assert "pagoda router on" not in r.stderr  # refused before it said where it listens


def test_cli_router_rereads_backends_file_on_sighup(tmp_path):
    a, b = FakeBackend("ok"), FakeBackend("ok")
    path = tmp_path / "backends.json"
    path.write_text(f'["{a.url}"]')
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # A long check interval: only SIGHUP can make it see the new file in time.
    proc = subprocess.Popen([sys.executable, "-m", "pagoda", "router", "--backends-file", str(path), "--port",
                             str(port), "--health-check-interval", "3600"], cwd=ROOT)
    try:
        assert wait_for(lambda: _up(url), 120)
        assert httpx.post(url + "/v1/completions", json={"prompt": "x"}).json()["port"] == a.port
        path.write_text(f'["{b.url}"]')
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: httpx.post(url + "/v1/completions", json={"prompt": "x"}).json()["port"] == b.port,
                        20)
    finally:
        proc.terminate()
        proc.wait(20)
        a.stop()
        b.stop()


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_router_command_does_not_import_torch():
    # A router host (or image) needs no torch: `pagoda router` builds only its own parser.
    code = ("import sys, uvicorn; uvicorn.Server.run = lambda self, sockets=None: setattr(self, 'started', True); "
            "from pagoda.entrypoints.cli import main; main(['--log-level', 'WARNING', 'router', '--backend', "
            f"'http://127.0.0.1:9', '--port', '{free_port()}']); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
