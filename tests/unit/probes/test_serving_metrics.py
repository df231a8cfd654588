"""Serving metrics probe on recorded TF Serving pages (tests/testdata/serving-metrics).

page-1 then page-2, 15 s apart: 600 successful predicts at ~4 ms median, 30 UNAVAILABLE, 5 GET
status calls (counted by TF Serving, API "") and one malformed request (model_name "")."""

from __future__ import annotations

import asyncio

import httpx

from tests.helpers import TESTDATA
from tfwarden.core.clock import Clock
from tfwarden.probes.serving_metrics import ServingMetricsProbe, derive, histogram_quantile, parse_page

PAGES = [(TESTDATA / "serving-metrics" / f"page-{i}.txt").read_text() for i in (1, 2)]


def test_parse_reads_tf_serving_names_and_labels() -> None:
    scrape = parse_page(PAGES[0], 0.0)
    assert scrape.requests["half_plus_two"] == {"OK": 1005.0, "UNAVAILABLE": 2.0}
    assert scrape.requests[""] == {"INVALID_ARGUMENT": 1.0}
    buckets = scrape.buckets["half_plus_two"]
    assert buckets[float("inf")] == 1000  # only API != "" (predict): status GETs left out
    assert sorted(buckets)[:3] == [10.0, 18.0, 32.4]  # Exponential(10, 1.8, 33) in microseconds


def test_derive_rates_errors_and_quantiles_over_the_interval() -> None:
    samples, detail = derive(parse_page(PAGES[0], 100.0), parse_page(PAGES[1], 115.0))
    model = detail["models"]["half_plus_two"]
    assert model["requests"] == 635 and model["errors"] == 30
    assert model["errors_by_status"] == {"UNAVAILABLE": 30}
    assert abs(model["request_rate"] - 635 / 15) < 1e-9
    assert abs(model["error_ratio"] - 30 / 635) < 1e-9
    # the interval's latency is the 600 new requests at ~4 ms, not the earlier ~2 ms ones
    assert 3.0 < model["latency_p50_ms"] < 5.5
    assert model["latency_p99_ms"] >= model["latency_p90_ms"] >= model["latency_p50_ms"]
    metrics = {s.metric for s in samples if s.model == "half_plus_two"}
    assert {"serving_requests", "serving_errors", "serving_error_ratio",
            "serving_latency_p99_ms"} <= metrics
    assert all(s.version is None for s in samples)  # Serving has no version label


def test_counter_reset_is_a_restart_not_a_negative_rate() -> None:
    _, detail = derive(parse_page(PAGES[1], 0.0), parse_page(PAGES[0], 10.0))
    assert detail["models"]["half_plus_two"]["requests"] == 1007


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    buckets = [(10.0, 0.0), (20.0, 50.0), (40.0, 100.0), (float("inf"), 100.0)]
    assert histogram_quantile(0.5, buckets) == 20.0
    assert histogram_quantile(0.75, buckets) == 30.0
    assert histogram_quantile(0.5, [(10.0, 0.0), (float("inf"), 0.0)]) is None


class StepClock(Clock):
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        self.t += 15
        return self.t

    def monotonic(self) -> float:
        return self.t


def test_probe_scrapes_and_reports_failures_as_data() -> None:
    pages = iter(PAGES)

    def handler(request: httpx.Request) -> httpx.Response:
        page = next(pages, None)
        return httpx.Response(200, text=page) if page else httpx.Response(503)

    async def scenario():  # type: ignore[no-untyped-def]
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            probe = ServingMetricsProbe("tfs", "http://tfs:8501/monitoring/prometheus/metrics",
                                        client, clock=StepClock())
            return [await probe.run() for _ in range(3)]

    first, second, third = asyncio.run(scenario())
    assert first.ok and first.samples == ()
    assert second.ok and second.detail["models"]["half_plus_two"]["errors"] == 30
    assert not third.ok and "503" in str(third.error)
