"""Per-cohort verdicts of edge rollouts on seeded device fleets: the false-regression rate over
many null rollouts with heterogeneous devices stays under alpha, a regression in one cohort is
found and named while the others stay ok, thin cohorts are inconclusive, failures and effect
floors, and every device counts once."""

from __future__ import annotations

import math
import random

from tfwarden.core.types import INCONCLUSIVE, OK, REGRESSION, Sample
from tfwarden.detectors.edge import (
    FAILED_INFERENCES,
    INFERENCE_MS,
    LOAD_MS,
    EdgeComparison,
    EdgeVerdicts,
    EdgeVerdictSettings,
)

COHORTS = ("delegate=gpu | device=a", "delegate=cpu | device=a", "delegate=gpu | device=b",
           "delegate=xnnpack | device=c", "delegate=nnapi | device=d")


def report(t: float, version: int, cohort: str, device: str, mean_ms: float, count: int = 20,
           metric: str = INFERENCE_MS) -> Sample:
    return Sample(t, "edge", metric, mean_ms if metric != FAILED_INFERENCES else float(count),
                  "digits", version, labels={"cohort": cohort, "device": device,
                                             "count": str(count)})


def fleet(comparison: EdgeComparison, rng: random.Random, devices: int, slow: dict[str, float],
          share: float = 0.2, reports: int = 3, failures: dict[str, float] | None = None,
          cohorts: tuple[str, ...] = COHORTS) -> None:
    """``devices`` per cohort, each with its own speed (lognormal, sigma 0.5: devices of one
    cohort differ a lot), reporting ``reports`` times; a ``share`` of them on the candidate,
    whose cohort's inference time is multiplied by ``slow[cohort]``."""
    t = 1000.0
    for i in range(devices):
        for cohort in cohorts:
            device = f"{cohort}/{i}"
            candidate = rng.random() < share
            version = 2 if candidate else 1
            speed = 5.0 * math.exp(rng.gauss(0, 0.5)) * (slow.get(cohort, 1.0) if candidate else 1)
            for _ in range(reports):
                t += 0.05
                comparison.observe(report(t, version, cohort, device,
                                          speed * math.exp(rng.gauss(0, 0.2)), 5))
                rate = (failures or {}).get(cohort, 0.0) if candidate else 0.0
                failed = sum(rng.random() < rate for _ in range(5))
                if failed:
                    comparison.observe(report(t, version, cohort, device, 0.0, failed,
                                              FAILED_INFERENCES))


def new(settings: EdgeVerdictSettings | None = None) -> EdgeComparison:
    return EdgeComparison("digits", current=1, candidate=2, max_cohorts=10, settings=settings)


def test_null_rollouts_of_heterogeneous_devices_rarely_find_any_regression() -> None:
    rng = random.Random(7)
    rollouts, any_regression = 150, 0
    for _ in range(rollouts):
        comparison = new()
        fleet(comparison, rng, devices=60, slow={}, share=0.5)
        findings = comparison.evaluate(2000.0)
        assert findings and {f.verdict for f in findings} <= {OK, INCONCLUSIVE}
        any_regression += any(f.verdict == REGRESSION for f in findings)
    # alpha = 0.01 is a bound for all cohorts and metrics of a rollout together
    assert any_regression <= 2


def test_one_slow_cohort_is_found_and_named_while_the_others_stay_ok() -> None:
    comparison = new()
    slow = COHORTS[2]
    fleet(comparison, random.Random(1), devices=300, slow={slow: 2.0})
    findings = comparison.evaluate(2000.0)
    latency = {f.target: f for f in findings if f.detector == "edge_latency"}
    assert latency[slow].verdict == REGRESSION
    assert slow in latency[slow].reason and "inference time" in latency[slow].reason
    assert 1.6 < latency[slow].effect["median_ratio"] < 2.5
    assert latency[slow].evidence["log_e_value"] >= latency[slow].evidence["log_threshold"]
    assert latency[slow].evidence["tests"] == 11 * 4
    assert all(f.verdict == OK for c, f in latency.items() if c != slow)


def test_a_cohort_with_too_few_devices_is_inconclusive_and_says_so() -> None:
    comparison = new()
    fleet(comparison, random.Random(2), devices=40, slow={COHORTS[0]: 3.0}, share=0.2,
          cohorts=COHORTS[:1])
    [latency] = [f for f in comparison.evaluate(2000.0) if f.detector == "edge_latency"]
    assert latency.verdict == INCONCLUSIVE
    assert "need 20" in latency.reason and COHORTS[0] in latency.reason


def test_failures_on_the_candidate_are_an_error_regression_of_their_cohort() -> None:
    comparison = new()
    fleet(comparison, random.Random(3), devices=300, slow={}, failures={COHORTS[1]: 0.3})
    errors = {f.target: f for f in comparison.evaluate(2000.0) if f.detector == "edge_errors"}
    assert errors[COHORTS[1]].verdict == REGRESSION
    assert errors[COHORTS[1]].effect["excess"] > 0.1
    assert all(f.verdict == OK for c, f in errors.items() if c != COHORTS[1])


def test_a_slowdown_under_the_floor_is_ok_with_the_reason() -> None:
    comparison = new(EdgeVerdictSettings(latency_floor=0.5))
    fleet(comparison, random.Random(4), devices=400, slow={COHORTS[0]: 1.3}, share=0.5,
          cohorts=COHORTS[:1])
    [latency] = [f for f in comparison.evaluate(2000.0) if f.detector == "edge_latency"]
    assert latency.verdict == OK and "under the floor" in latency.reason


def test_each_device_counts_once_however_often_it_reports() -> None:
    comparison = new(EdgeVerdictSettings(min_inferences=10))
    for i in range(100):  # one device, many reports: 5 inferences each (the first a warm-up)
        comparison.observe(report(1000.0 + i, 2, COHORTS[0], "only-device", 50.0, 5))
    assert comparison.summary() == {COHORTS[0]: {"candidate": 1, "current": 0}}
    comparison.observe(report(2000.0, 2, COHORTS[0], "", 50.0, 50))  # no device id: not counted
    assert comparison.candidate_devices() == 1


def test_a_regression_stays_once_found() -> None:
    comparison = new()
    fleet(comparison, random.Random(5), devices=300, slow={COHORTS[0]: 2.0}, cohorts=COHORTS[:1])
    assert any(f.verdict == REGRESSION for f in comparison.evaluate(2000.0))
    fleet(comparison, random.Random(6), devices=300, slow={}, cohorts=COHORTS[:1])
    assert any(f.verdict == REGRESSION for f in comparison.evaluate(3000.0))


def test_load_time_is_judged_per_cohort_too() -> None:
    comparison = new()
    rng = random.Random(8)
    for i in range(400):
        version = 2 if i % 2 else 1
        device = f"d{i}"
        load = 100.0 * math.exp(rng.gauss(0, 0.3)) * (3.0 if version == 2 else 1.0)
        comparison.observe(report(1000.0 + i, version, COHORTS[0], device, load, 1, LOAD_MS))
        for _ in range(2):  # the first inference report is a warm-up, not counted
            comparison.observe(report(1000.0 + i, version, COHORTS[0], device, 5.0, 20))
    load = next(f for f in comparison.evaluate(2000.0) if f.detector == "edge_load")
    assert load.verdict == REGRESSION and "load time" in load.reason


def test_the_verdicts_follow_the_rollout_and_forget_it_when_it_ends() -> None:
    verdicts = EdgeVerdicts({"digits": (10, EdgeVerdictSettings())})
    verdicts.observe(report(1.0, 2, COHORTS[0], "d", 5.0))  # no rollout yet: ignored
    verdicts.rollout_changed("digits", 1, 2)
    verdicts.observe(report(2.0, 2, COHORTS[0], "d", 5.0))
    verdicts.observe(report(2.5, 2, COHORTS[0], "d", 5.0))
    assert verdicts.candidate_devices("digits") == 1
    verdicts.rollout_changed("digits", 1, 2)  # the same versions keep the evidence
    assert verdicts.candidate_devices("digits") == 1
    verdicts.rollout_changed("digits", 2, None)
    assert verdicts.findings("digits", 3.0) == [] and verdicts.candidate_devices("digits") == 0
    verdicts.rollout_changed("other", 1, 2)  # not configured for rollouts
    assert "other" not in verdicts.comparisons


def test_switching_devices_and_rate_dependent_arrival_are_no_regression() -> None:
    """The null that arrival order can fake: candidates all start at their switch (with a slow
    first report, the model warming up) while current devices have run for long; faster devices
    run more inferences, so they count sooner. Same versions: nothing may regress."""
    regressed = 0
    for seed in range(20):
        rng = random.Random(100 + seed)
        comparison = new()
        devices = []
        for cohort in COHORTS[:2]:
            for i in range(600):
                speed = 5.0 * math.exp(rng.gauss(0, 0.5))
                devices.append((cohort, f"{cohort}/{i}", rng.random() < 0.1, speed))
        for round_ in range(8):
            for cohort, device, candidate, speed in devices:
                t = 1000.0 + 60 * round_ + (30 if candidate else 0) + rng.random()
                if candidate and round_ == 0:
                    continue  # candidates switch half a minute into the rollout
                warm = 5.0 if candidate and round_ == 1 else 1.0
                inferences = max(1, round(20 * (5.0 / speed) ** 3))  # fast devices run more
                comparison.observe(report(t, 2 if candidate else 1, cohort, device,
                                          speed * warm * math.exp(rng.gauss(0, 0.2)), inferences))
        regressed += any(f.verdict == REGRESSION for f in comparison.evaluate(2000.0))
    assert regressed == 0
