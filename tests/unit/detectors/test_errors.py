from __future__ import annotations

from bench.tracegen import CanaryScenario
from tests.unit.detectors.conftest import feed_latency_trace
from tfwarden.core.types import INCONCLUSIVE, OK, REGRESSION, Sample
from tfwarden.detectors.errors import BurnRate, CanaryErrors


def run(scenario: CanaryScenario):  # type: ignore[no-untyped-def]
    return feed_latency_trace(CanaryErrors("m", 1, 2), scenario)


def test_five_percent_canary_errors_against_a_tenth_percent_found_within_a_minute() -> None:
    for seed in range(3):
        delay, finding = run(CanaryScenario(seconds=300, canary_error_rate=0.05, seed=seed))
        assert delay is not None and delay <= 60, (seed, delay)
    assert finding.effect["canary_error_rate"] > finding.effect["stable_error_rate"]


def test_equal_error_rates_stay_ok() -> None:
    delay, finding = run(CanaryScenario(seconds=7200, stable_error_rate=0.01,
                                        canary_error_rate=0.01, seed=9))
    assert delay is None and finding.verdict == OK


def test_unreachable_is_missing_data() -> None:
    detector = CanaryErrors("m", 1, 2)
    for i in range(500):
        for version in (1, 2):
            detector.observe(Sample(t=i * 0.1, source="t", metric="latency_ms", value=1.0,
                                    model="m", version=version, ok=False,
                                    labels={"outcome": "unreachable"}))
    finding = detector.evaluate(50.0)
    assert finding.verdict == INCONCLUSIVE


def test_full_outage_pages_within_about_a_minute() -> None:
    burn = BurnRate("m", 1, availability=0.999)
    t = 0.0
    for _ in range(6 * 3600):  # six hours of healthy traffic at 1/s
        burn.add(t, 1, 0)
        t += 1
    assert burn.evaluate(t).verdict == OK
    outage_start = t
    while burn.evaluate(t).severity != "page":
        burn.add(t, 1, 1)
        t += 1
        assert t - outage_start < 120
    assert 45 <= t - outage_start <= 70  # the SRE workbook: ~52 s for a 100 % outage


def test_slow_burn_opens_a_ticket_not_a_page() -> None:
    burn = BurnRate("m", 1, availability=0.999)
    for minute in range(3 * 24 * 60):  # 3 days at 0.15 % errors: 1.5x the budget
        burn.add(minute * 60.0, 1000, 1.5)
    finding = burn.evaluate(3 * 86400.0 - 60)
    assert finding.verdict == REGRESSION and finding.severity == "ticket"


def test_too_little_traffic_is_inconclusive() -> None:
    burn = BurnRate("m", 1, availability=0.999)
    burn.add(0.0, 3, 3)
    assert burn.evaluate(1.0).verdict == INCONCLUSIVE


def test_burn_windows_stay_exact_over_days_of_buckets() -> None:
    burn = BurnRate("m", 1, availability=0.99)
    for minute in range(5 * 24 * 60):  # five days: old buckets are trimmed on the way
        errors = 50 if minute >= 5 * 24 * 60 - 10 else 0  # the last 10 minutes fail half
        burn.add(minute * 60.0, 100, errors)
    now = 5 * 86400.0 - 1
    ratio_5m, requests_5m = burn._ratio(now, 300)
    assert requests_5m == 500 and ratio_5m == 0.5
    ratio_3d, requests_3d = burn._ratio(now, 3 * 86400)
    assert requests_3d == 3 * 24 * 60 * 100 and abs(ratio_3d - 500 / 432000) < 1e-12
