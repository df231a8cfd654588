"""Latency regressions, judged on time-matched pairs so that load changes cancel out.

Canary vs stable (``CanaryLatency``): each successful canary probe sample is paired with the
stable sample nearest in arrival (within ``max_pair_gap_seconds``). With identical versions the
two members of a pair are exchangeable, so ``D = ln(canary) - ln(stable)`` is symmetric about 0
whatever the latency distribution (heavy tails, spikes, load swings included). The clipped score
``w = clip(D / scale)`` feeds a mixture e-CUSUM (``MixtureECusum``): an anytime-valid change
detector, checked after every pair, whose average run length to a false alarm is at least
``arl_pairs`` pairs. The verdict is ``regression`` only when the detector alarms *and* the
estimated median ratio is at least ``1 + effect_floor`` (default: ignore regressions under 10 %).

A tail test catches p99-only regressions on the same pairs: both members are compared with the
stable p99 estimated from earlier samples (``tail_reference`` of them); in pairs where exactly
one member exceeds it, the exceeding member is equally likely to be either under no change,
whatever the load, so a second e-CUSUM on those discordant pairs (``w = +1`` when the canary
exceeded) is valid too (average run length >= ``tail_arl`` discordant pairs).

Version vs its own baseline after a deploy (``BaselineLatency``): the new version's samples are
paired with samples drawn (seeded) from a frozen window of the previous version before the
deploy. Not load-controlled; a margin of two standard errors of the baseline median is
subtracted so that the finite baseline does not bias the test upward.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import deque
from collections.abc import Sequence
from typing import Any

from pydantic import Field

from tfwarden.core.settings import Settings
from tfwarden.core.types import INCONCLUSIVE, OK, REGRESSION, Finding, Sample
from tfwarden.detectors.base import MixtureECusum, median_ci, quantile

METRIC = "latency_ms"


class LatencySettings(Settings):
    """Latency regression detectors (``detection.latency``; docs/detection.md)."""

    min_pairs: int = Field(50, ge=10, le=100_000)
    effect_floor: float = Field(0.10, ge=0, le=10, description="Ignore regressions under this.")
    arl_pairs: float = Field(1e7, ge=100, description="Average run length to a false alarm.")
    max_pair_gap_seconds: float = Field(5.0, gt=0, le=600)
    stale_seconds: float = Field(30.0, gt=0, le=86400)
    effect_window: int = Field(2000, ge=100, le=100_000,
                               description="Recent pairs the effect size is estimated from.")
    tail_reference: int = Field(2000, ge=100, le=100_000,
                                description="Stable samples the p99 threshold comes from.")
    tail_min_reference: int = Field(500, ge=50, le=100_000)
    tail_arl: float = Field(1e5, ge=100)
    max_unreachable_ratio: float = Field(0.5, gt=0, le=1,
                                         description="More unreachable probes: inconclusive.")
    baseline_seconds: float = Field(600.0, gt=0, le=86400)
    min_baseline: int = Field(200, ge=20)


class _Arm:
    """Recent state of one version's probe samples."""

    def __init__(self, settings: LatencySettings) -> None:
        self.last_t: float | None = None
        self.outcomes: deque[bool] = deque(maxlen=200)  # True: target reachable
        self.ok_values: deque[tuple[float, float]] = deque(maxlen=settings.effect_window)

    def see(self, sample: Sample) -> None:
        self.last_t = sample.t
        reachable = sample.labels.get("outcome") != "unreachable"
        self.outcomes.append(reachable)
        if sample.ok:
            self.ok_values.append((sample.t, sample.value))

    def values_since(self, t: float, minimum: int = 100) -> list[float]:
        recent = [v for ts, v in self.ok_values if ts >= t]
        return recent if len(recent) >= minimum else [v for _, v in self.ok_values][-minimum:]

    def unreachable_ratio(self) -> float:
        return 0.0 if not self.outcomes else 1 - sum(self.outcomes) / len(self.outcomes)


class _PairedTest:
    """The e-CUSUM on clipped log-ratios of pairs, with an adaptive (predictable) scale."""

    def __init__(self, settings: LatencySettings, margin: float = 0.0) -> None:
        self.settings = settings
        self.detector = MixtureECusum(settings.arl_pairs)
        self.diffs: deque[tuple[int, float, float]] = deque(maxlen=settings.effect_window)
        self.recent: deque[float] = deque(maxlen=200)
        self.scale = 1.0
        self.margin = margin
        self.first_alarm_t: float | None = None

    def add(self, diff: float, t: float) -> None:
        self.diffs.append((self.detector.n, t, diff))
        self.detector.update((diff - self.margin) / self.scale)
        self.recent.append(diff)
        if self.detector.n % 25 == 0 and len(self.recent) >= 20:
            ordered = sorted(self.recent)
            centre = quantile(ordered, 0.5)
            mad = quantile(sorted(abs(d - centre) for d in ordered), 0.5)
            self.scale = max(0.05, 2.5 * 1.4826 * mad)  # clip at ~2.5 sigma
        if self.detector.alarmed and self.first_alarm_t is None:
            self.first_alarm_t = t

    def since_change(self, minimum: int = 30) -> list[tuple[int, float, float]]:
        """Pairs after the estimated change point (at least the last ``minimum``), so that
        effects describe the regression, not a mix with the time before it."""
        start = self.detector.change_index
        recent = [d for d in self.diffs if d[0] >= start]
        return recent if len(recent) >= minimum else list(self.diffs)[-minimum:]

    def median_ratio(self) -> tuple[float, tuple[float, float]]:
        ordered = sorted(d for _, _, d in self.since_change())
        low, high = median_ci(ordered)
        return math.exp(quantile(ordered, 0.5)), (math.exp(low), math.exp(high))


def _p99_ratio(canary: Sequence[float], stable: Sequence[float]) -> tuple[float, tuple[float, float]]:
    """Ratio of p99s with a seeded bootstrap 95 % interval."""
    if len(canary) < 100 or len(stable) < 100:
        return math.nan, (math.nan, math.nan)
    point = quantile(sorted(canary), 0.99) / quantile(sorted(stable), 0.99)
    rng = random.Random(1234)
    ratios = []
    for _ in range(200):
        c = sorted(rng.choices(canary, k=len(canary)))
        s = sorted(rng.choices(stable, k=len(stable)))
        ratios.append(quantile(c, 0.99) / quantile(s, 0.99))
    ratios.sort()
    return point, (quantile(ratios, 0.025), quantile(ratios, 0.975))


class CanaryLatency:
    """Canary vs stable latency, same time window."""

    name = "latency"

    def __init__(self, model: str, stable_version: int, canary_version: int,
                 settings: LatencySettings | None = None) -> None:
        self.settings = settings or LatencySettings()
        self.model, self.stable, self.canary = model, stable_version, canary_version
        self.arms = {stable_version: _Arm(self.settings), canary_version: _Arm(self.settings)}
        self.waiting: dict[int, deque[tuple[float, float]]] = {
            stable_version: deque(maxlen=1000), canary_version: deque(maxlen=1000)}
        self.test = _PairedTest(self.settings)
        self.reference: deque[float] = deque(maxlen=self.settings.tail_reference)
        self._p99: float | None = None
        self._reference_seen = 0
        self.tail = MixtureECusum(self.settings.tail_arl)
        self.tail_canary_exceeded = 0
        self._tail_times: deque[tuple[int, float]] = deque(maxlen=5000)  # (tail index, t)
        self._points: tuple[int, dict[str, float]] | None = None
        self._last_verdict = ""
        self._judging_at = math.nan
        self._intervals: tuple[float, tuple[float, tuple[float, float]]] | None = None

    def observe(self, sample: Sample) -> None:
        if sample.metric != METRIC or sample.model != self.model or sample.version not in self.arms:
            return
        version = sample.version
        self.arms[version].see(sample)
        if not sample.ok or sample.value <= 0:
            return
        self._pair(version, sample.t, math.log(sample.value))
        if version == self.stable:
            self._add_reference(sample.value)

    def _add_reference(self, value: float) -> None:
        self.reference.append(value)
        self._reference_seen += 1
        if len(self.reference) >= self.settings.tail_min_reference and (
                self._p99 is None or self._reference_seen % 100 == 0):
            self._p99 = quantile(sorted(self.reference), 0.99)

    def _pair(self, version: int, t: float, log_value: float) -> None:
        other = self.canary if version == self.stable else self.stable
        queue = self.waiting[other]
        while queue and queue[0][0] < t - self.settings.max_pair_gap_seconds:
            queue.popleft()
        if not queue:
            self.waiting[version].append((t, log_value))
            return
        _, other_log = queue.popleft()
        canary_log, stable_log = ((log_value, other_log) if version == self.canary
                                  else (other_log, log_value))
        self.test.add(canary_log - stable_log, t)
        if self._p99 is not None:  # estimated from samples before this pair: predictable
            threshold = math.log(self._p99)
            canary_over, stable_over = canary_log > threshold, stable_log > threshold
            if canary_over != stable_over:
                self._tail_times.append((self.tail.n, t))
                self.tail.update(1.0 if canary_over else -1.0)
                self.tail_canary_exceeded += canary_over

    def _point_effect(self) -> dict[str, float]:
        """Median and p99 ratios, recomputed every 50 pairs (cheap enough to call per sample)."""
        bucket = self.test.detector.n // 25
        if self._points is None or self._points[0] != bucket:
            diffs = sorted(d for _, _, d in self.test.since_change())
            points = {"median_ratio": math.exp(quantile(diffs, 0.5))}
            canary, stable = self._tail_samples()
            if len(canary) >= 100 and len(stable) >= 100:
                points["p99_ratio"] = quantile(sorted(canary), 0.99) / quantile(sorted(stable), 0.99)
            self._points = (bucket, points)
        return self._points[1]

    def _tail_samples(self) -> tuple[list[float], list[float]]:
        """Canary and stable samples since the tail test's estimated change."""
        start = self.tail.change_index
        since = next((t for index, t in self._tail_times if index >= start), -math.inf)
        return (self.arms[self.canary].values_since(since),
                self.arms[self.stable].values_since(since))

    def _effect(self) -> dict[str, Any]:
        """Effect sizes with confidence intervals (for reported findings)."""
        effect: dict[str, Any] = {}
        if self.test.diffs:
            ratio, ci = self.test.median_ratio()
            effect.update(median_ratio=round(ratio, 4),
                          median_ratio_ci=[round(ci[0], 4), round(ci[1], 4)])
        prepared = self._intervals
        self._intervals = None
        p99, p99_ci = prepared[1] if prepared is not None and prepared[0] == self._judging_at \
            else _p99_ratio(*self._tail_samples())
        if not math.isnan(p99):
            effect.update(p99_ratio=round(p99, 4),
                          p99_ratio_ci=[round(p99_ci[0], 4), round(p99_ci[1], 4)])
        return effect

    def _evidence(self) -> dict[str, Any]:
        median, tail = self.test.detector, self.tail
        lead = median if median.log_e - median.log_threshold >= tail.log_e - tail.log_threshold \
            else tail
        return {
            "statistic": "log_e_value" if lead is median else "tail_log_e_value",
            "value": round(lead.log_e, 3), "threshold": round(lead.log_threshold, 3),
            "samples": median.n,
            "pairs": self.test.detector.n,
            "log_e_value": round(self.test.detector.log_e, 3),
            "log_threshold": round(self.test.detector.log_threshold, 3),
            "tail_discordant_pairs": self.tail.n, "tail_canary_exceeded": self.tail_canary_exceeded,
            "tail_log_e_value": round(self.tail.log_e, 3),
            "stable_p99_ms": None if self._p99 is None else round(self._p99, 3),
        }

    async def prepare(self, now: float) -> None:
        """Run the p99 bootstrap that ``evaluate(now)`` is about to need in a thread (a few
        hundred ms of Python on a full window: not on the daemon's event loop); ``evaluate``
        without it computes the same interval itself (backtests, replays)."""
        if self._data_problem(now) or not (self.test.detector.alarmed or self.tail.alarmed) \
                or self._verdict_of(self._point_effect())[0] == self._last_verdict:
            return
        canary, stable = self._tail_samples()  # copies, taken on the loop
        self._intervals = (now, await asyncio.to_thread(_p99_ratio, canary, stable))

    def evaluate(self, now: float) -> Finding:
        self._judging_at = now
        finding = self._judge(now)
        self._last_verdict = finding.verdict
        return finding

    def _verdict_of(self, points: dict[str, float]) -> tuple[str, bool, bool]:
        """(verdict, median hit, tail hit) of an alarmed detector with these point effects."""
        floor = 1 + self.settings.effect_floor
        median_hit = self.test.detector.alarmed and points["median_ratio"] >= floor
        tail_hit = self.tail.alarmed and points.get("p99_ratio", 0) >= floor
        return (REGRESSION if (median_hit or tail_hit) else OK), median_hit, tail_hit

    def _judge(self, now: float) -> Finding:
        problem = self._data_problem(now)
        base: dict[str, Any] = {"model": self.model, "version": self.canary, "target": f"v{self.stable}"}
        if problem:
            return Finding(self.name, INCONCLUSIVE, now, **base, evidence=self._evidence(),
                           reason=problem)
        median_alarm = self.test.detector.alarmed
        tail_alarm = self.tail.alarmed
        if not (median_alarm or tail_alarm):
            return Finding(self.name, OK, now, **base, evidence=self._evidence())
        points = self._point_effect()
        verdict, median_hit, tail_hit = self._verdict_of(points)
        # confidence intervals (bootstrap) only when the verdict changes
        effect: dict[str, Any] = (self._effect() if verdict != self._last_verdict
                                  else {k: round(v, 4) for k, v in points.items()})
        if verdict == OK:
            return Finding(self.name, OK, now, **base, effect=effect, evidence=self._evidence(),
                           reason=f"change below the {self.settings.effect_floor:.0%} effect floor")
        reasons = []
        if median_hit:
            reasons.append(f"median {points['median_ratio']:.2f}x stable")
        if tail_hit:
            reasons.append(f"p99 {points['p99_ratio']:.2f}x stable ({self.tail_canary_exceeded} of "
                           f"{self.tail.n} one-sided exceedances of the stable p99 by the canary)")
        return Finding(self.name, REGRESSION, now, **base, effect=effect,
                       evidence=self._evidence(), reason="; ".join(reasons))

    def _data_problem(self, now: float) -> str:
        for version, arm in self.arms.items():
            if arm.last_t is None or now - arm.last_t > self.settings.stale_seconds:
                return f"no recent latency samples for version {version}"
            if arm.unreachable_ratio() > self.settings.max_unreachable_ratio:
                return f"probes of version {version} mostly fail to reach the server"
        if self.test.detector.n < self.settings.min_pairs:
            return f"{self.test.detector.n} pairs, need {self.settings.min_pairs}"
        return ""


class BaselineLatency:
    """A version against the previous version's latency before the deploy (frozen baseline)."""

    name = "latency"

    def __init__(self, model: str, version: int, baseline: Sequence[float],
                 settings: LatencySettings | None = None, seed: int = 0) -> None:
        self.settings = settings or LatencySettings()
        self.model, self.version = model, version
        self.baseline = [math.log(v) for v in baseline if v > 0]
        n = len(self.baseline)
        spread = _robust_sigma(self.baseline) if n >= 2 else 0.0
        # two standard errors of a median (1.25 sigma / sqrt(n)) for pairs with one side fixed
        self.test = _PairedTest(self.settings, margin=2 * 1.25 * spread / math.sqrt(max(n, 1)))
        self.arm = _Arm(self.settings)
        self._rng = random.Random(seed)

    def observe(self, sample: Sample) -> None:
        if (sample.metric != METRIC or sample.model != self.model or sample.version != self.version):
            return
        self.arm.see(sample)
        if sample.ok and sample.value > 0 and self.baseline:
            self.test.add(math.log(sample.value) - self._rng.choice(self.baseline), sample.t)

    def evaluate(self, now: float) -> Finding:
        base: dict[str, Any] = {"model": self.model, "version": self.version, "target": "baseline"}
        evidence = {"statistic": "log_e_value", "value": round(self.test.detector.log_e, 3),
                    "threshold": round(self.test.detector.log_threshold, 3),
                    "samples": self.test.detector.n,
                    "pairs": self.test.detector.n, "baseline_samples": len(self.baseline),
                    "log_e_value": round(self.test.detector.log_e, 3),
                    "log_threshold": round(self.test.detector.log_threshold, 3)}
        if len(self.baseline) < self.settings.min_baseline:
            return Finding(self.name, INCONCLUSIVE, now, **base, evidence=evidence,
                           reason=f"baseline has {len(self.baseline)} samples, need "
                                  f"{self.settings.min_baseline}")
        if self.arm.last_t is None or now - self.arm.last_t > self.settings.stale_seconds:
            return Finding(self.name, INCONCLUSIVE, now, **base, evidence=evidence,
                           reason=f"no recent latency samples for version {self.version}")
        if self.test.detector.n < self.settings.min_pairs:
            return Finding(self.name, INCONCLUSIVE, now, **base, evidence=evidence,
                           reason=f"{self.test.detector.n} samples, need {self.settings.min_pairs}")
        if not self.test.detector.alarmed:
            return Finding(self.name, OK, now, **base, evidence=evidence)
        ratio, ci = self.test.median_ratio()
        effect = {"median_ratio": round(ratio, 4), "median_ratio_ci": [round(ci[0], 4), round(ci[1], 4)]}
        if ratio < 1 + self.settings.effect_floor:
            return Finding(self.name, OK, now, **base, effect=effect, evidence=evidence,
                           reason=f"change below the {self.settings.effect_floor:.0%} effect floor")
        return Finding(self.name, REGRESSION, now, **base, effect=effect, evidence=evidence,
                       reason=f"median {ratio:.2f}x the pre-deploy baseline")


def _robust_sigma(values: Sequence[float]) -> float:
    ordered = sorted(values)
    centre = quantile(ordered, 0.5)
    return 1.4826 * quantile(sorted(abs(v - centre) for v in ordered), 0.5)


class LatencySLO:
    """A version's probe latency against its latency objective (``slo.latency_p99_ms``).

    Keeps the last ``window`` successful probe latencies no older than ``max_age_seconds``. The
    p-quantile's 95 % confidence interval comes from order statistics (the binomial count of
    samples below the quantile): ``regression`` when even the lower bound is above the
    objective, ``ok`` when the upper bound is at or below it, ``inconclusive`` in between or with
    fewer than ``min_samples`` samples.
    """

    def __init__(self, model: str, version: int, objective_ms: float, q: float = 0.99,
                 window: int = 1000, min_samples: int = 200,
                 max_age_seconds: float = 600.0) -> None:
        self.model, self.version, self.objective_ms, self.q = model, version, objective_ms, q
        self.min_samples, self.max_age_seconds = min_samples, max_age_seconds
        self.samples: deque[tuple[float, float]] = deque(maxlen=window)

    def observe(self, sample: Sample) -> None:
        if sample.metric == "latency_ms" and sample.model == self.model and \
                sample.version == self.version and sample.ok:
            self.samples.append((sample.t, sample.value))

    def evaluate(self, now: float) -> Finding:
        recent = sorted(v for t, v in self.samples if now - t <= self.max_age_seconds)
        n = len(recent)
        label = f"p{round(self.q * 100)}"
        if n < self.min_samples:
            return Finding("latency", INCONCLUSIVE, now, model=self.model, version=self.version,
                           target="slo", reason=f"{n} of {self.min_samples} recent samples",
                           evidence={"samples": n})
        spread = 1.96 * math.sqrt(n * self.q * (1 - self.q))
        low = recent[max(0, math.floor(n * self.q - spread) - 1)]
        high = recent[min(n - 1, math.ceil(n * self.q + spread))]
        value = quantile(recent, self.q)
        if low > self.objective_ms:
            verdict, reason = REGRESSION, (f"{label} {value:.1f} ms (95% CI {low:.1f}-{high:.1f}) "
                                           f"above the {self.objective_ms:g} ms objective")
        elif high <= self.objective_ms:
            verdict, reason = OK, f"{label} {value:.1f} ms within {self.objective_ms:g} ms"
        else:
            verdict, reason = INCONCLUSIVE, (f"{label} {value:.1f} ms, CI {low:.1f}-{high:.1f} "
                                             f"around {self.objective_ms:g} ms")
        return Finding("latency", verdict, now, model=self.model, version=self.version,
                       target="slo", reason=reason,
                       effect={f"{label}_ms": round(value, 3), "objective_ms": self.objective_ms,
                               "ratio": round(value / self.objective_ms, 3)},
                       evidence={"samples": n, "ci_ms": [round(low, 3), round(high, 3)]})
