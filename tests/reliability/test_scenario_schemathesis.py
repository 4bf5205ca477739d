"""Scenario 4b (bad input, generated): schemathesis against the server's own OpenAPI schema.

Every operation of /openapi.json gets requests generated from the schema, valid (positive)
and schema-violating (negative) ones, and each must be answered without a 5xx and without
hanging. Full mode sends at least 1,000 requests; CI sends fewer (SCHEMATHESIS_REQUESTS).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import requests
import schemathesis
from harness import Ledger, assert_recovered, record, scale, take_baseline
from hypothesis import HealthCheck, Phase, given, seed, settings
from schemathesis.generation import GenerationMode

SCHEMATHESIS_REQUESTS = scale(300, 1200)
HANG_S = 10.0


def test_schemathesis_openapi(make_server):
    # a short context keeps the valid requests it generates cheap (n up to 128, max_tokens up to 128)
    srv = make_server("--max-model-len", "128")
    base = take_baseline(srv)
    schema_json = srv.get("/openapi.json").json()
    schema = schemathesis.openapi.from_dict(schema_json)
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 8, [op.label for op in operations]
    per_mode = max(1, SCHEMATHESIS_REQUESTS // (2 * len(operations)) + 1)
    ledger = Ledger()
    statuses: dict[int, int] = {}
    failures: list[str] = []
    session = requests.Session()

    def check_case(case, op, mode: GenerationMode) -> None:
        t0 = time.monotonic()
        try:
            resp = case.call(base_url=srv.url, session=session, headers=srv.headers, timeout=HANG_S)
        except requests.RequestException as e:
            ledger.lost(f"{op.label}: {type(e).__name__}")
            failures.append(f"{op.label} ({mode.value}): {type(e).__name__}: {e}")
            return
        dt = time.monotonic() - t0
        statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
        if resp.status_code >= 500:
            ledger.lost(f"{op.label}: {resp.status_code}")
            failures.append(f"{op.label} ({mode.value}): {resp.status_code} {resp.text[:300]}\n"
                            f"  {case.as_curl_command()[:600]}")
        elif resp.status_code >= 400:
            ledger.error(resp.status_code)
        else:
            ledger.ok(dt)

    # Operations without parameters (GET /health) exhaust after one example: rounds with new
    # seeds go on until the budget is spent.
    rounds = 0
    while len(ledger.outcomes) < SCHEMATHESIS_REQUESTS and rounds < 30:
        rounds += 1
        for op, mode in [(op, mode) for op in operations
                         for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]:
            try:
                _hypothesis_run(op, mode, rounds, per_mode, check_case)()
            except Exception as e:  # schemathesis could not generate for this mode (e.g. no negative space)
                if "Unsatisfiable" not in type(e).__name__:
                    raise
    n = len(ledger.outcomes)
    assert not failures, f"{len(failures)} of {n} requests failed:\n" + "\n".join(failures[:10])
    assert n >= SCHEMATHESIS_REQUESTS, (n, statuses)
    figures = assert_recovered(srv, base, ledger)
    record("schemathesis", ledger, operations=len(operations), rounds=rounds, statuses=statuses, **figures)


def _hypothesis_run(op, mode: GenerationMode, round_seed: int, per_mode: int,
                    check: Callable[[Any, Any, GenerationMode], None]) -> Callable[[], None]:
    """A hypothesis test that sends ``per_mode`` generated requests for ``op`` in ``mode`` to ``check``."""

    @seed(round_seed)
    @settings(max_examples=per_mode, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case) -> None:
        check(case, op, mode)

    return run
