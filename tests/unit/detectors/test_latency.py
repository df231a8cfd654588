from __future__ import annotations

import math
import random

import pytest

from bench.tracegen import CanaryScenario
from tests.unit.detectors.conftest import feed_latency_trace
from tfwarden.core.types import INCONCLUSIVE, OK, REGRESSION, Finding, Sample
from tfwarden.detectors.latency import BaselineLatency, CanaryLatency, LatencySettings


def first_regression(scenario: CanaryScenario):  # type: ignore[no-untyped-def]
    return feed_latency_trace(CanaryLatency("m", 1, 2), scenario)


def test_doubling_is_found_within_seconds() -> None:
    delay, finding = first_regression(CanaryScenario(seconds=120, canary_factor=2.0, seed=1))
    assert delay is not None and delay <= 15
    assert finding.effect["median_ratio"] > 1.5
    low, high = finding.effect["median_ratio_ci"]
    assert low <= finding.effect["median_ratio"] <= high
    assert finding.model == "m" and finding.version == 2 and finding.target == "v1"


def test_plus_25_percent_median_is_found_within_a_minute() -> None:
    delays = [first_regression(CanaryScenario(seconds=180, canary_factor=1.25, seed=s))[0]
              for s in range(3)]
    assert all(d is not None and d <= 90 for d in delays), delays  # median ~50 s: BENCHMARKS.md


def test_identical_versions_stay_ok_for_hours_with_spikes_and_load_swings() -> None:
    delay, finding = first_regression(CanaryScenario(seconds=3 * 3600, seed=5))
    assert delay is None
    assert finding.verdict == OK


def test_regression_under_the_effect_floor_is_not_reported() -> None:
    delay, _ = first_regression(CanaryScenario(seconds=1800, canary_factor=1.04, seed=2))
    assert delay is None


def test_p99_only_regression_is_caught_by_the_tail_test() -> None:
    scenario = CanaryScenario(seconds=900, canary_tail_rate=0.03, canary_tail_factor=8, seed=4)
    delay, finding = first_regression(scenario)
    assert delay is not None
    assert "p99" in finding.reason
    assert finding.effect["p99_ratio"] > 1.1


def test_too_few_pairs_is_inconclusive() -> None:
    detector = CanaryLatency("m", 1, 2, LatencySettings(min_pairs=50))
    for i in range(20):
        for version in (1, 2):
            detector.observe(Sample(t=i * 0.1, source="t", metric="latency_ms", value=10.0 * version,
                                    model="m", version=version))
    finding = detector.evaluate(2.0)
    assert finding.verdict == INCONCLUSIVE and "need 50" in finding.reason


def test_missing_canary_data_is_inconclusive_never_ok_or_regression() -> None:
    detector = CanaryLatency("m", 1, 2)
    rng = random.Random(0)
    for i in range(600):
        for version in (1, 2):
            detector.observe(Sample(t=i * 0.1, source="t", metric="latency_ms",
                                    value=20 * math.exp(rng.gauss(0, 0.5)) * version,
                                    model="m", version=version))
    assert detector.evaluate(60.0).verdict == REGRESSION
    for i in range(600, 1000):  # the canary's probes stop arriving
        detector.observe(Sample(t=i * 0.1, source="t", metric="latency_ms", value=20.0,
                                model="m", version=1))
    finding = detector.evaluate(100.0)
    assert finding.verdict == INCONCLUSIVE and "version 2" in finding.reason


def test_unreachable_probes_are_inconclusive() -> None:
    detector = CanaryLatency("m", 1, 2)
    for i in range(400):
        for version in (1, 2):
            detector.observe(Sample(t=i * 0.1, source="t", metric="latency_ms", value=2000.0,
                                    model="m", version=version, ok=False,
                                    labels={"outcome": "unreachable"}))
    finding = detector.evaluate(40.0)
    assert finding.verdict == INCONCLUSIVE and "reach" in finding.reason


def test_baseline_detector_flags_a_slower_new_version_and_not_an_equal_one() -> None:
    rng = random.Random(3)
    baseline = [20 * math.exp(rng.gauss(0, 0.5)) for _ in range(3000)]
    for factor, expected in ((2.0, REGRESSION), (1.0, OK)):
        detector = BaselineLatency("m", 3, baseline, seed=1)
        for i in range(3000):
            detector.observe(Sample(t=i * 0.1, source="t", metric="latency_ms",
                                    value=20 * factor * math.exp(rng.gauss(0, 0.5)),
                                    model="m", version=3))
        assert detector.evaluate(300.0).verdict == expected


def test_latency_slo_follows_the_p99_confidence_interval() -> None:
    import random

    from tfwarden.core.types import Sample
    from tfwarden.detectors.latency import LatencySLO

    rng = random.Random(1)
    slo = LatencySLO("m", 1, objective_ms=20.0)
    for i in range(100):
        slo.observe(Sample(float(i), "probe", "latency_ms", 5.0, model="m", version=1))
    assert slo.evaluate(100.0).verdict == "inconclusive"  # too few samples
    for i in range(400):
        slo.observe(Sample(100.0 + i, "probe", "latency_ms", rng.lognormvariate(1.6, 0.2),
                           model="m", version=1))
        slo.observe(Sample(100.0 + i, "probe", "latency_ms", 500.0, model="m", version=2))
    assert slo.evaluate(500.0).verdict == "ok"  # p99 ~8 ms; version 2 is not this version's
    slow = LatencySLO("m", 1, objective_ms=20.0)
    for i in range(400):
        slow.observe(Sample(float(i), "probe", "latency_ms", 30.0 + rng.random(), model="m",
                            version=1))
    finding = slow.evaluate(400.0)
    assert finding.verdict == "regression" and finding.target == "slo"
    assert finding.effect["ratio"] > 1.5
    assert slow.evaluate(400.0 + 601).verdict == "inconclusive"  # the samples got old


def test_prepare_runs_the_bootstrap_in_a_thread_and_evaluate_then_gives_the_same_finding(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import threading

    from tfwarden.detectors import latency

    scenario = CanaryScenario(seconds=900, canary_tail_rate=0.03, canary_tail_factor=8, seed=4)
    _, inline = first_regression(scenario)  # the bootstrap ran inside evaluate
    assert inline.verdict == REGRESSION and "p99_ratio_ci" in inline.effect

    detector, threads = CanaryLatency("m", 1, 2), []
    real = latency._p99_ratio

    def recorded(*args: object) -> object:
        threads.append(threading.current_thread() is threading.main_thread())
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(latency, "_p99_ratio", recorded)

    async def daemon_like() -> Finding:
        from bench.tracegen import latency_trace
        finding = None
        for event in latency_trace(scenario):
            if event["type"] != "latency":
                continue
            detector.observe(Sample(t=event["t"], source="t", metric="latency_ms",
                                    value=event["ms"], model="m", version=event["version"],
                                    ok=event["ok"], labels={}))
            await detector.prepare(event["t"])
            finding = detector.evaluate(event["t"])
            if finding.verdict == REGRESSION:
                return finding
        raise AssertionError("no regression")

    prepared = asyncio.run(daemon_like())
    assert threads and not any(threads)  # every bootstrap ran off the main (event loop) thread
    assert prepared.effect == inline.effect and prepared.reason == inline.reason
