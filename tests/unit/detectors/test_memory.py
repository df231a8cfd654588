from __future__ import annotations

from bench.tracegen import MemoryScenario, memory_trace
from tfwarden.core.types import INCONCLUSIVE, OK, REGRESSION, Sample
from tfwarden.detectors.memory import MemoryLeak


def run(scenario: MemoryScenario):  # type: ignore[no-untyped-def]
    detector = MemoryLeak("serving-0")
    finding = None
    first = None
    for event in memory_trace(scenario):
        detector.observe(Sample(t=event["t"], source="t", metric="limit_bytes",
                                value=event["limit_bytes"], target="serving-0"))
        detector.observe(Sample(t=event["t"], source="t", metric="rss_bytes",
                                value=event["rss_bytes"], target="serving-0"))
        finding = detector.evaluate(event["t"])
        if finding.verdict == REGRESSION and first is None:
            first = (event["t"] - scenario.t0, finding)
    return first, finding


def test_leak_is_found_with_slope_and_time_to_limit() -> None:
    first, _ = run(MemoryScenario(hours=6, leak_mb_per_hour=20, seed=1))
    assert first is not None
    delay, finding = first
    assert delay <= 3 * 3600  # median 1.4 h over seeds: BENCHMARKS.md
    low, high = finding.effect["slope_mib_per_hour_ci"]
    assert low <= 20 <= high * 1.5
    assert finding.effect["time_to_limit_seconds"] > 0
    assert finding.severity in ("ticket", "info")


def test_fast_leak_near_the_limit_pages() -> None:
    first, _ = run(MemoryScenario(hours=3, base_mb=3500, leak_mb_per_hour=200, seed=2))
    assert first is not None and first[1].severity == "page"


def test_no_finding_on_autocorrelated_leak_free_sawtooth() -> None:
    for seed, rho in ((3, 0.9), (4, 0.98)):
        first, last = run(MemoryScenario(hours=24, rho=rho, seed=seed))
        assert first is None, first
        assert last.verdict == OK


def test_restart_resets_history_and_warmup_is_ignored() -> None:
    detector = MemoryLeak("x")
    for i in range(400):
        value = 1e9 + i * 1e6 if i < 200 else 5e8  # growth, then a restart (big drop)
        detector.observe(Sample(t=i * 10.0, source="t", metric="rss_bytes", value=value,
                                target="x"))
    finding = detector.evaluate(3990.0)
    assert finding.verdict == INCONCLUSIVE and detector.restarts == 1


def test_stale_samples_are_inconclusive() -> None:
    detector = MemoryLeak("x")
    detector.observe(Sample(t=0.0, source="t", metric="rss_bytes", value=1e9, target="x"))
    assert detector.evaluate(1000.0).verdict == INCONCLUSIVE
