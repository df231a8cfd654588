from __future__ import annotations

import math
import random

import pytest

from tfwarden.core.errors import TraceError
from tfwarden.core.types import INCONCLUSIVE, OK, REGRESSION, Sample
from tfwarden.detectors.memory import MemoryLeak, MemoryRetention, MemorySettings, detect_period
from tfwarden.detectors.trace import parse_line

MB = 1024 * 1024


def series(hours: float, *, leak_mb_h: float = 0.0, rho: float = 0.9, sigma: float = 5.0,
           saw_mb: float = 0.0, saw_s: float = 600.0, seed: int = 0):  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    noise = 0.0
    for i in range(int(hours * 360)):
        t = i * 10.0
        noise = rho * noise + rng.gauss(0, sigma * math.sqrt(1 - rho * rho))
        mb = 1000 + saw_mb * ((t % saw_s) / saw_s) + noise + leak_mb_h * t / 3600
        yield t, mb * MB


def feed(detector: MemoryLeak, points, limit: float | None = None):  # type: ignore[no-untyped-def]
    first = last = None
    for t, value in points:
        if limit is not None:
            detector.observe(Sample(t, "t", "limit_bytes", limit, target="x"))
        detector.observe(Sample(t, "t", "rss_bytes", value, target="x"))
        last = detector.evaluate(t)
        if last.verdict == REGRESSION and first is None:
            first = (t, last)
    return first, last


def test_steady_leak_is_found_with_explained_evidence() -> None:
    first, _ = feed(MemoryLeak("x"), series(6, leak_mb_h=40, seed=1), limit=8e9)
    assert first is not None
    t, finding = first
    assert t <= 4 * 3600
    assert {"statistic", "value", "threshold", "samples"} <= set(finding.evidence)
    assert isinstance(finding.evidence["samples"], int)  # policies compare it with min_samples
    assert finding.evidence["value"] > finding.evidence["threshold"]
    low, high = finding.effect["slope_mib_per_hour_ci"]
    assert low <= 40 * 1.05 <= high * 1.5
    assert finding.effect["time_to_limit_seconds"] > 0


@pytest.mark.parametrize("rho,saw_mb,saw_s,seed", [
    (0.9, 30.0, 180.0, 3), (0.98, 0.0, 600.0, 4), (0.95, 60.0, 1800.0, 5)])
def test_no_leak_on_autocorrelated_or_periodic_leak_free_series(
        rho: float, saw_mb: float, saw_s: float, seed: int) -> None:
    first, last = feed(MemoryLeak("x"), series(8, rho=rho, saw_mb=saw_mb, saw_s=saw_s,
                                               seed=seed))
    assert first is None, first[1].evidence if first else None
    assert last is not None and last.verdict == OK


def test_restart_resets_history_and_warmup_is_ignored() -> None:
    detector = MemoryLeak("x")
    for i in range(400):
        value = 1e9 + i * 1e6 if i < 200 else 5e8  # growth, then a restart (big drop)
        detector.observe(Sample(t=i * 10.0, source="t", metric="rss_bytes", value=value,
                                target="x"))
    assert detector.evaluate(3990.0).verdict == INCONCLUSIVE and detector.restarts == 1


def test_a_version_load_step_is_not_a_leak_and_an_unload_is_not_a_restart() -> None:
    detector = MemoryLeak("x")
    points = list(series(8, seed=6))
    first = None
    for t, value in points:
        if t == 3 * 3600:
            detector.version_event("m", 2, "loaded", t)
        if t == 5 * 3600:
            detector.version_event("m", 1, "unloaded", t)
        step = 400 * MB if 3 * 3600 <= t < 5 * 3600 else 0.0
        detector.observe(Sample(t, "t", "rss_bytes", value + step, target="x"))
        finding = detector.evaluate(t)
        first = first or (finding if finding.verdict == REGRESSION else None)
    assert first is None, first
    assert detector.restarts == 0


def test_retention_after_unload_is_its_own_finding() -> None:
    retention = MemoryRetention("x")
    for t, value in series(4, seed=7):
        if t == 3600:
            retention.version_event("m", 2, "loaded", t)
        if t == 2 * 3600:
            retention.version_event("m", 2, "unloaded", t)
        kept = 300 * MB if t >= 3600 else 0.0  # the unload gives nothing back
        retention.observe(Sample(t, "t", "rss_bytes", value + kept, target="x"))
    finding = retention.evaluate(4 * 3600)
    assert finding.verdict == REGRESSION and finding.version == 2
    assert finding.evidence["statistic"] == "retained_bytes"
    assert finding.evidence["value"] >= finding.evidence["threshold"]


def test_clean_unload_is_not_retention() -> None:
    retention = MemoryRetention("x")
    for t, value in series(4, seed=8):
        if t == 3600:
            retention.version_event("m", 2, "loaded", t)
        if t == 2 * 3600:
            retention.version_event("m", 2, "unloaded", t)
        kept = 300 * MB if 3600 <= t < 2 * 3600 else 0.0
        retention.observe(Sample(t, "t", "rss_bytes", value + kept, target="x"))
    assert retention.evaluate(4 * 3600).verdict == OK


def test_fast_leak_is_found_within_20_minutes_of_its_onset() -> None:
    points = [(t, v + (max(0.0, t - 3 * 3600) / 3600 * 100 * MB)) for t, v in
              series(4.5, sigma=4.0, rho=0.9, seed=9)]
    first, _ = feed(MemoryLeak("x"), points, limit=1000 * MB + 1024 * MB)
    assert first is not None and first[0] - 3 * 3600 <= 20 * 60, first


def test_period_of_a_sawtooth_is_found_and_none_for_ar_noise() -> None:
    saw = [(i % 15) * 2.0 + random.Random(i).gauss(0, 0.3) for i in range(180)]
    period = detect_period(saw, 60)
    assert period is not None and abs(period - 15) < 1
    rng, x, ar = random.Random(1), 0.0, []
    for _ in range(180):
        x = 0.88 * x + rng.gauss(0, 1)
        ar.append(x)
    assert detect_period(ar, 60) is None


def test_stale_samples_are_inconclusive() -> None:
    detector = MemoryLeak("x")
    detector.observe(Sample(t=0.0, source="t", metric="rss_bytes", value=1e9, target="x"))
    assert detector.evaluate(1000.0).verdict == INCONCLUSIVE


@pytest.mark.parametrize("line,message", [
    ('{"t": 1, "type": "version", "model": "m", "version": 1, "state": "loaded"}',
     "'target' must"),
    ('{"t": 1, "type": "version", "target": "s", "model": "m", "version": 1, "state": "gone"}',
     "'state' must be 'loaded' or 'unloaded'"),
    ('{"t": 1, "type": "version", "target": "s", "model": "m", "version": -2, '
     '"state": "loaded"}', "'version' must be"),
])
def test_bad_version_events_name_the_line_and_field(line: str, message: str) -> None:
    with pytest.raises(TraceError, match=message) as caught:
        parse_line(line, 4)
    assert str(caught.value).startswith("line 4: ")


def test_version_event_parses() -> None:
    event = parse_line('{"t": 5, "type": "version", "target": "serving-0", "model": "m", '
                       '"version": 2, "state": "unloaded"}', 1)
    assert event is not None and (event.target, event.model, event.version, event.state) == (
        "serving-0", "m", 2, "unloaded")


def test_unload_soon_after_the_next_load_is_not_retention() -> None:
    # v2 loads (+300 MB) 8 min before v1's unload gives back its 200 MB: the level before the
    # unload must not reach back before v2's load (it would read 300 MB low: "retained")
    retention = MemoryRetention("x")
    load2, unload1 = 2 * 3600, 2 * 3600 + 480
    for t, value in series(4, seed=10):
        if t == 1800:
            retention.version_event("m", 1, "loaded", t)
        if t == load2:
            retention.version_event("m", 2, "loaded", t)
        if t == unload1:
            retention.version_event("m", 1, "unloaded", t)
        extra = (200 * MB if 1800 <= t < unload1 else 0.0) + (300 * MB if t >= load2 else 0.0)
        retention.observe(Sample(t, "t", "rss_bytes", value + extra, target="x"))
    assert retention.evaluate(4 * 3600).verdict != REGRESSION


def test_a_leak_must_hold_on_consecutive_refits() -> None:
    def first_t(persist: int) -> float:
        settings = MemorySettings(persist_refits=persist)
        first, _ = feed(MemoryLeak("x", settings), series(6, leak_mb_h=40, seed=1), limit=8e9)
        assert first is not None
        return first[0]

    assert first_t(3) - first_t(1) >= 2 * MemorySettings().bin_seconds
