"""The per-token latency histograms (kept without prometheus_client's Histogram, metrics._TokenGaps) expose exactly
the samples a prometheus_client Histogram fed the same values exposes."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from pagoda.entrypoints.openai.metrics import (
    ITL_BUCKETS,
    LABELS,
    PER_TOKEN_HISTOGRAMS,
    VLLM_METRICS,
    PrometheusStatLogger,
)


def _family_lines(text: str, full: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith(full + "_") or ln.startswith(f"# HELP {full} ")
            or ln.startswith(f"# TYPE {full} ")]


@pytest.mark.parametrize("prefix", ["pagoda", "vllm"])
def test_token_gaps_expose_what_a_histogram_would(prefix):
    rng = random.Random(0)
    values = {0: [rng.choice([rng.uniform(0, 0.2), rng.choice(ITL_BUCKETS), rng.uniform(50, 200)])
                  for _ in range(500)],
              1: [0.0, 0.01, 0.0100001, 80.0, 81.0]}
    logger = PrometheusStatLogger("m", prefix=prefix, num_engines=2)
    ref = CollectorRegistry()
    for name in PER_TOKEN_HISTOGRAMS:
        h = Histogram(f"{prefix}:{name}", VLLM_METRICS[name][1], LABELS, buckets=ITL_BUCKETS, registry=ref)
        for engine, vs in values.items():
            for v in vs:
                h.labels("m", str(engine)).observe(v)
    for engine, vs in values.items():
        for v in vs:
            logger.on_inter_token(v, engine=engine)
    got, want = logger.render()[0].decode(), generate_latest(ref).decode()
    for name in PER_TOKEN_HISTOGRAMS:
        full = f"{prefix}:{name}"
        want_lines = [ln for ln in _family_lines(want, full) if "_created" not in ln]
        assert want_lines and _family_lines(got, full) == want_lines
