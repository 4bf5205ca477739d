"""``pagoda serve`` flags that used to be accepted and then did nothing (found by a flag-by-flag pass, session 41):
each is now a start-up error naming it, before anything loads.

* ``--allowed-methods`` / ``--allowed-headers`` / ``--allow-credentials`` without ``--allowed-origins``: pagoda
  sends no CORS headers unless origins are named (unlike vLLM, which allows every origin), so they changed nothing;
* ``--ssl-ca-certs`` / ``--ssl-cert-reqs`` without ``--ssl-certfile``: the server spoke plain HTTP and asked no
  client for a certificate; ``--ssl-cert-reqs 2`` without ``--ssl-ca-certs`` could verify no client; ``--ssl-cert-reqs
  5`` was taken (uvicorn failed once the model was up);
* ``--engine-stuck-timeout 0`` (``/health`` failing whenever a request waits), a negative ``--shutdown-grace-period``
  (uvicorn waited without limit, the API servers not at all), a negative ``--max-log-len`` (cut the prompt's end).
"""

from __future__ import annotations

import argparse
import functools
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pagoda.entrypoints.openai.cli_args import add_serve_args, validate_serve_args


@functools.cache
def _parser() -> argparse.ArgumentParser:
    return add_serve_args(argparse.ArgumentParser(prog="pagoda serve"))


def _args(*argv: str) -> argparse.Namespace:
    return _parser().parse_args(["some/model", *argv])


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> tuple[str, str]:
    """A self-signed key and certificate (the certificate doubles as the CA of client certificates)."""
    if not shutil.which("openssl"):
        pytest.skip("no openssl to make a certificate with")
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost"],
                   check=True, capture_output=True)
    return str(key), str(cert)


# ----------------------------------------------------------------------------------------------------- CORS
@pytest.mark.parametrize("argv,named", [
    (["--allow-credentials"], "--allow-credentials"),
    (["--allowed-methods", "GET"], "--allowed-methods"),
    (["--allowed-headers", '["X-Custom"]'], "--allowed-headers"),
    (["--allowed-methods", "GET", "--allow-credentials"], "--allowed-methods and --allow-credentials"),
])
def test_cors_details_without_origins_are_refused(argv, named):
    with pytest.raises(ValueError, match=f"CORS is off without --allowed-origins .* so {named} would change nothing"):
        validate_serve_args(_args(*argv))


def test_cors_details_with_origins_are_taken():
    args = _args("--allowed-origins", "https://app.example", "--allowed-methods", "GET", "--allow-credentials")
    validate_serve_args(args)
    assert args.allowed_methods == ["GET"] and args.allowed_headers == ["*"] and args.allow_credentials
    validate_serve_args(_args())  # no CORS flag at all: nothing to refuse


# ------------------------------------------------------------------------------------------------------ TLS
@pytest.mark.parametrize("argv,named", [
    (["--ssl-ca-certs", "ca.pem"], "--ssl-ca-certs"),
    (["--ssl-cert-reqs", "2"], "--ssl-cert-reqs"),
    (["--ssl-ca-certs", "ca.pem", "--ssl-cert-reqs", "1"], "--ssl-ca-certs and --ssl-cert-reqs"),
])
def test_client_certificate_flags_without_tls_are_refused(argv, named):
    with pytest.raises(ValueError, match=f"TLS is off without --ssl-keyfile and --ssl-certfile .* so {named} would"):
        validate_serve_args(_args(*argv))


def test_client_certificates_need_a_ca_to_verify_them(tls):
    key, cert = tls
    for reqs in ("1", "2"):
        with pytest.raises(ValueError, match=f"--ssl-cert-reqs {reqs} asks for client certificates, which are "
                                             f"verified against --ssl-ca-certs: add it"):
            validate_serve_args(_args("--ssl-keyfile", key, "--ssl-certfile", cert, "--ssl-cert-reqs", reqs))
    validate_serve_args(_args("--ssl-keyfile", key, "--ssl-certfile", cert, "--ssl-cert-reqs", "2",
                              "--ssl-ca-certs", cert))
    validate_serve_args(_args("--ssl-keyfile", key, "--ssl-certfile", cert))  # server TLS alone


def test_ssl_cert_reqs_takes_only_the_three_modes(capsys):
    with pytest.raises(SystemExit) as e:
        _args("--ssl-cert-reqs", "5")
    assert e.value.code == 2 and "argument --ssl-cert-reqs: invalid choice: 5 (choose from 0, 1, 2)" \
        in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- durations
@pytest.mark.parametrize("argv,message", [
    (["--engine-stuck-timeout", "0"], "--engine-stuck-timeout must be above 0 seconds, got 0"),
    (["--engine-stuck-timeout", "-3"], "--engine-stuck-timeout must be above 0 seconds, got -3"),
    (["--shutdown-grace-period", "-1"], "--shutdown-grace-period must be 0 or more seconds"),
])
def test_durations_out_of_range_are_refused(argv, message):
    with pytest.raises(ValueError, match=message):
        validate_serve_args(_args(*argv))


def test_durations_at_their_limits_are_taken(capsys):
    validate_serve_args(_args("--shutdown-grace-period", "0", "--engine-stuck-timeout", "0.5", "--max-log-len", "0"))
    with pytest.raises(SystemExit):
        _args("--max-log-len", "-1")
    assert "argument --max-log-len: must be at least 0, got -1" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- end to end
def test_serve_refuses_a_cors_detail_alone_before_loading(tiny):
    model: Path = tiny.path("llama")
    r = subprocess.run([sys.executable, "-m", "pagoda", "serve", str(model), "--allow-credentials"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "error: CORS is off without --allowed-origins" in r.stderr
    assert "KV cache" not in r.stderr and "engine core" not in r.stderr  # refused before anything loaded
