"""The peer baselines of bench/detection.py follow the rules of their sources (docs/peers.md)."""

from __future__ import annotations

import math
import random

import pytest

from bench.peers import (
    FlaggerConfig,
    KayentaConfig,
    KayentaMetric,
    Requests,
    classify,
    commons_percentile,
    cumulative_buckets,
    flagger_analysis,
    flagger_check,
    histogram_quantile,
    kayenta_analysis,
    mann_whitney_interval,
    remove_outliers,
    scraped_window,
    summary_score,
)

BOUNDS = (10.0, 20.0, 40.0, math.inf)
LATENCY = KayentaMetric("latency", "latency", "mean_ms", direction="increase")


# --- Prometheus histogram_quantile ------------------------------------------------------------

@pytest.mark.parametrize(("q", "expected"), [
    (0.5, 15.0),  # rank 20 in (10, 20]: 10 + 10 * (20 - 10) / 20
    (0.99, 39.2),  # rank 39.6 in (20, 40]: 20 + 20 * (39.6 - 30) / 10
    (0.1, 4.0),  # rank 4 in the first bucket, which starts at 0
])
def test_histogram_quantile_interpolates_linearly_inside_the_bucket(q: float, expected: float) -> None:
    assert histogram_quantile(q, BOUNDS, [10, 30, 40, 40]) == pytest.approx(expected)


def test_histogram_quantile_in_the_inf_bucket_returns_the_highest_finite_bound() -> None:
    assert histogram_quantile(0.9, BOUNDS, [10, 30, 40, 50]) == 40.0


def test_histogram_quantile_without_observations_is_nan() -> None:
    assert math.isnan(histogram_quantile(0.99, BOUNDS, [0, 0, 0, 0]))


def test_cumulative_buckets_count_values_at_or_below_each_bound() -> None:
    assert cumulative_buckets([5, 10, 10.5, 39, 41], BOUNDS) == [2, 3, 4, 5]


def test_rate_sees_the_requests_between_the_first_and_last_scrape_of_the_range() -> None:
    assert scraped_window(150.0, 60.0, 15.0) == (105.0, 150.0)
    assert scraped_window(157.0, 60.0, 15.0) == (105.0, 150.0)
    assert scraped_window(150.0, 10.0, 15.0) is None  # fewer than two scrapes: no value


# --- Flagger ----------------------------------------------------------------------------------

def probes(seconds: float, failing_checks: set[int] = frozenset(), ms: float = 20.0) -> Requests:  # type: ignore[assignment]
    """10 requests/s from t=0; the requests that analysis check k (0-based, at tick 150 + 60 k
    with the default config) sees all fail when k is in failing_checks."""
    requests = Requests()
    for i in range(int(seconds * 10)):
        t = i / 10 + 0.05
        check = math.ceil((t - 150) / 60)
        requests.add(t, ms, check not in failing_checks)
    return requests


def test_flagger_promotes_after_max_weight_over_step_weight_passed_checks() -> None:
    outcome = flagger_analysis(probes(900), 0.0, 900.0, FlaggerConfig())
    assert outcome.verdict == "promoted"
    assert len(outcome.checks) == 5  # weights 10, 20, 30, 40, then promotion at 50
    assert outcome.t == 30 + 60 + 5 * 60


def test_flagger_rolls_back_one_tick_after_the_threshold_th_failed_check() -> None:
    outcome = flagger_analysis(probes(900, set(range(20))), 0.0, 900.0, FlaggerConfig(threshold=5))
    assert outcome.verdict == "rollback"
    assert len(outcome.checks) == 5
    assert outcome.t == 30 + 60 + 6 * 60


def test_a_passed_check_does_not_reset_the_failed_checks() -> None:
    alternating = {0, 2, 4, 6, 8}  # F P F P F P F P F, and a fifth pass would promote
    outcome = flagger_analysis(probes(1200, alternating), 0.0, 1200.0, FlaggerConfig(threshold=5))
    assert [c.passed for c in outcome.checks] == [False, True] * 4 + [False]
    assert outcome.verdict == "rollback"


def test_the_default_threshold_of_one_rolls_back_after_a_single_failed_check() -> None:
    outcome = flagger_analysis(probes(900, {2}), 0.0, 900.0, FlaggerConfig(threshold=1))
    assert [c.passed for c in outcome.checks] == [True, True, False]
    assert outcome.verdict == "rollback"


def test_no_values_count_as_a_failed_check() -> None:
    outcome = flagger_analysis(Requests(), 0.0, 900.0, FlaggerConfig(threshold=1))
    assert outcome.verdict == "rollback"
    assert math.isnan(outcome.checks[0].success_rate)


def test_request_duration_compares_whole_milliseconds_and_fails_only_above_the_max() -> None:
    canary = Requests()
    for i in range(100):  # all inside (105, 150]: 98 at 20 ms, 2 at 200 ms -> P99 = 175 ms
        canary.add(106 + i * 0.4, 200.0 if i < 2 else 20.0, True)
    assert flagger_check(canary, 150.0, FlaggerConfig(duration_max_ms=175)).passed
    check = flagger_check(canary, 150.0, FlaggerConfig(duration_max_ms=174))
    assert check.p99_ms == pytest.approx(175.0)
    assert not check.passed


def test_success_rate_below_the_minimum_fails() -> None:
    canary = Requests()
    for i in range(100):
        canary.add(106 + i * 0.4, 20.0, i >= 2)  # 98 %
    assert not flagger_check(canary, 150.0, FlaggerConfig(success_rate_min=99)).passed
    assert flagger_check(canary, 150.0, FlaggerConfig(success_rate_min=98)).passed


# --- Kayenta ----------------------------------------------------------------------------------

def test_commons_percentile_uses_the_n_plus_one_position() -> None:
    values = list(range(1, 11))
    assert commons_percentile(values, 25) == pytest.approx(2.75)
    assert commons_percentile(values, 1) == 1
    assert commons_percentile(values, 99) == 10


def test_iqr_detector_drops_only_far_outliers() -> None:
    values = [float(v) for v in range(1, 101)] + [10_000.0]
    assert remove_outliers(values) == values[:-1]


def test_mann_whitney_interval_brackets_a_known_shift() -> None:
    rng = random.Random(1)
    control = [rng.gauss(100, 5) for _ in range(60)]
    experiment = [rng.gauss(110, 5) for _ in range(60)]
    lower, upper, estimate = mann_whitney_interval(experiment, control, 0.98)
    assert lower < 10 < upper
    assert estimate == pytest.approx(10, abs=2)
    assert 0 < lower


def test_a_clearly_shifted_metric_is_high_and_identical_data_pass() -> None:
    rng = random.Random(2)
    control = [rng.gauss(100, 5) for _ in range(30)]
    assert classify(control, [v * 1.5 for v in control], LATENCY) == ("High", False)
    assert classify(control, list(reversed(control)), LATENCY) == ("Pass", False)
    assert classify(control, [rng.gauss(100, 5) for _ in range(30)], LATENCY) == ("Pass", False)


def test_direction_and_effect_size_gate_the_classification() -> None:
    rng = random.Random(3)
    control = [rng.gauss(100, 1) for _ in range(50)]
    lower = [v * 0.8 for v in control]
    assert classify(control, lower, LATENCY)[0] == "Pass"  # increase-only metric
    either = KayentaMetric("latency", "latency", "mean_ms")
    assert classify(control, lower, either)[0] == "Low"
    slightly_higher = [v * 1.05 for v in control]
    assert classify(control, slightly_higher, LATENCY)[0] == "High"
    tolerant = KayentaMetric("latency", "latency", "mean_ms", direction="increase",
                             allowed_increase=1.1)
    assert classify(control, slightly_higher, tolerant)[0] == "Pass"


def test_missing_data_is_nodata() -> None:
    assert classify([], [1.0, 2.0], LATENCY) == ("Nodata", False)


def test_score_is_the_weighted_share_of_passing_metrics_per_group() -> None:
    errors = KayentaMetric("errors", "errors", "error_percent")
    p99 = KayentaMetric("p99", "latency", "p99_ms")
    weights = {"latency": 50.0, "errors": 50.0}
    assert summary_score([(LATENCY, "High", False), (p99, "Pass", False),
                          (errors, "Pass", False)], weights) == 75.0
    assert summary_score([(LATENCY, "Pass", False), (p99, "Pass", False),
                          (errors, "High", False)], weights) == 50.0
    assert summary_score([(LATENCY, "Pass", False), (p99, "Pass", False),
                          (errors, "Nodata", False)], weights) == 50.0  # no-data group dropped
    assert summary_score([(LATENCY, "High", True), (p99, "Pass", False),
                          (errors, "Pass", False)], weights) == 0.0  # critical failure


def two_versions(seconds: float, canary_factor: float, seed: int = 4) -> tuple[Requests, Requests]:
    rng = random.Random(seed)
    stable, canary = Requests(), Requests()
    for i in range(int(seconds * 10)):
        t = i / 10 + 0.05
        stable.add(t, 20 * math.exp(rng.gauss(0, 0.3)), True)
        canary.add(t, canary_factor * 20 * math.exp(rng.gauss(0, 0.3)), True)
    return stable, canary


def test_kayenta_fails_the_stage_at_the_first_judgment_at_or_below_marginal() -> None:
    stable, canary = two_versions(1800, 2.0)
    outcome = kayenta_analysis(stable, canary, 0.0, 1800.0, KayentaConfig())
    assert outcome.verdict == "fail"
    assert outcome.scores == (50.0,)  # mean and p99 High: latency 0/2, errors 1/1
    assert outcome.t == 300.0


def test_kayenta_passes_identical_versions_after_the_whole_lifetime() -> None:
    stable, canary = two_versions(1800, 1.0)
    outcome = kayenta_analysis(stable, canary, 0.0, 1800.0, KayentaConfig())
    assert outcome.verdict == "pass"
    assert len(outcome.scores) == 6
    assert outcome.t == 1800.0


def test_kayenta_final_score_between_marginal_and_pass_fails() -> None:
    config = KayentaConfig(pass_score=101.0, marginal_score=75.0)
    stable, canary = two_versions(1800, 1.0)
    assert kayenta_analysis(stable, canary, 0.0, 1800.0, config).verdict == "fail"


def test_a_judgment_scoring_exactly_marginal_fails_the_stage() -> None:
    config = KayentaConfig(metrics=(KayentaMetric("latency-mean", "latency", "mean_ms", "increase"),
                                    KayentaMetric("error-rate", "errors", "error_percent", "increase")),
                           group_weights=(("latency", 25.0), ("errors", 75.0)))
    stable, canary = two_versions(1800, 2.0)
    outcome = kayenta_analysis(stable, canary, 0.0, 1800.0, config)
    assert outcome.scores == (75.0,)
    assert outcome.verdict == "fail"
