"""Per-cohort verdicts of an edge rollout: the candidate version against the current one, inside
each cohort (e.g. delegate x device model), on what the devices report.

The unit of evidence is a **device**, not an inference: inferences of one device share its
hardware, thermal state and app, so counting them as independent would make any device that is
slow for its own reasons look like a regression. Each device counts once: when its reports
(``edge_inference_ms`` means of histogram deltas with their counts, failed inferences, error
logs, load time, memory: the Samples ``tfwarden.probes.edge.receiver`` emits) add up to
``min_inferences`` inferences, it contributes one observation per metric (its mean inference
time, its failure rate, its first load time, its newest memory). Devices are assigned to the
candidate by a hash of their id, at random with respect to anything they report, so within a
cohort a candidate device and a current device are exchangeable while the versions do not
differ.

A device's first inference report on a version is not counted (the warm-up after an app start
or a model switch: candidates have all just switched, current devices have not). Observations
are paired as they arrive (a candidate device with a waiting current device of the cohort, at
most ``max_pair_gap_seconds`` apart, the one whose time to count was nearest: both arms then
hold devices of the same inference rate, which can go with speed), as the server-side detectors
pair probe samples: ``D = ln(candidate) - ln(current)`` (latency, load, memory) or ``candidate rate -
current rate`` (errors) is symmetric about 0 under no difference, and its clipped score feeds a
:class:`MixtureECusum` without restarts, a test supermartingale. Every cohort and metric gets
one such test, and the threshold is ``tests / alpha`` with ``tests`` = (max cohorts + 1) x 4
metrics, fixed before the rollout: by Ville's inequality and a union bound the chance that *any*
cohort of the rollout is ever found regressing while none is stays below ``alpha``, however
often the verdicts are read (multiplicity across cohorts controlled, anytime-valid).

A verdict is ``regression`` when the test rejects *and* the effect reaches its floor (median
ratio >= 1 + ``latency_floor`` and so on); ``inconclusive`` while fewer than ``min_devices``
pairs exist (a thin cohort holds, it never rolls back); ``ok`` otherwise. A rejection stays (the
guarantee is for ever reaching the threshold).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from tfwarden.core.settings import Settings
from tfwarden.core.types import (
    EDGE_ERROR_LOGS,
    EDGE_FAILED_INFERENCES,
    EDGE_INFERENCE_MS,
    EDGE_LOAD_MS,
    EDGE_MEMORY_BYTES,
    INCONCLUSIVE,
    OK,
    REGRESSION,
    Finding,
    Sample,
)
from tfwarden.detectors.base import MixtureECusum, median_ci, quantile

INFERENCE_MS, FAILED_INFERENCES = EDGE_INFERENCE_MS, EDGE_FAILED_INFERENCES
LOAD_MS, MEMORY_BYTES, ERROR_LOGS = EDGE_LOAD_MS, EDGE_MEMORY_BYTES, EDGE_ERROR_LOGS
METRICS = ("latency", "errors", "load", "memory")  # one test each per cohort
DETECTOR = {m: f"edge_{m}" for m in METRICS}
MAX_WAITING = 5000  # device records waiting for enough inferences, per comparison and version
MAX_COUNTED = 2_000_000  # devices remembered as counted, per comparison (beyond: not counted)


class EdgeVerdictSettings(Settings):
    """Per-cohort verdicts of edge rollouts (``edge.models[].verdicts``; docs/edge.md)."""

    alpha: float = Field(0.01, gt=0, lt=0.5, description=(
        "Chance that any cohort of a rollout is ever found regressing while none is."))
    min_devices: int = Field(20, ge=5, le=100_000,
                             description="Paired candidate devices before a cohort's verdict.")
    min_inferences: int = Field(10, ge=1, le=100_000,
                                description="Inferences a device reports before it counts.")
    latency_floor: float = Field(0.10, ge=0, le=10, description="Ignore slowdowns under this.")
    load_floor: float = Field(0.25, ge=0, le=10)
    memory_floor: float = Field(0.10, ge=0, le=10)
    error_floor: float = Field(0.01, ge=0, lt=1,
                               description="Ignore failure-rate increases under this (absolute).")
    max_pair_gap_seconds: float = Field(600.0, gt=0, le=86400)


@dataclass
class _Device:
    """What one device reported of one version until it counts."""

    inferences: int = 0  # successful
    total_ms: float = 0.0
    failed: int = 0
    error_logs: int = 0
    load_ms: float | None = None
    memory_bytes: float | None = None
    first_t: float | None = None  # its first inference report (not counted: a warm-up)


class _PairedMetric:
    """One cohort's test of one metric: pairs in arrival order, an adaptive clipping scale from
    earlier pairs only (predictable), a never-restarting mixture e-CUSUM."""

    def __init__(self, threshold: float, max_gap: float, ratio: bool) -> None:
        self.test = MixtureECusum(threshold, restart=False)
        self.max_gap, self.ratio = max_gap, ratio
        self.waiting: dict[bool, deque[tuple[float, float, float]]] = {
            True: deque(maxlen=1000), False: deque(maxlen=1000)}  # (t, delay, value)
        self.diffs: deque[float] = deque(maxlen=2000)
        self.sums = [0.0, 0.0]  # candidate, current (error rates)
        self.scale = 1.0

    def add(self, candidate: bool, t: float, value: float, delay: float = 0.0) -> None:
        """An observation of one arm at ``t``; ``delay``: how long its device took from its
        first counted report to count (a proxy of its inference rate, which can go with its
        speed): it is paired with the waiting observation of the other arm of the nearest delay,
        so the arms' different start times (current devices count from the rollout's start,
        candidates from their switch) cannot make fast devices of one arm meet slow ones."""
        if self.ratio and value <= 0:
            return
        other = self.waiting[not candidate]
        while other and other[0][0] < t - self.max_gap:
            other.popleft()
        if not other:
            self.waiting[candidate].append((t, delay, value))
            return
        nearest = min(range(len(other)), key=lambda i: abs(other[i][1] - delay))
        _, _, other_value = other[nearest]
        del other[nearest]
        mine, theirs = (value, other_value) if candidate else (other_value, value)
        diff = math.log(mine) - math.log(theirs) if self.ratio else mine - theirs
        self.test.update(diff / self.scale)
        self.diffs.append(diff)
        self.sums[0] += mine
        self.sums[1] += theirs
        if self.test.n % 10 == 0 and len(self.diffs) >= 10:
            self.scale = self._scale()

    def _scale(self) -> float:
        """Clip at about 2.5 sigma of the pairs so far (log ratios: from their MAD; rate
        differences, mostly 0: from their root mean square). It depends on earlier pairs only,
        so the next score stays symmetric under no difference."""
        if not self.ratio:
            return max(0.02, 2.5 * math.sqrt(sum(d * d for d in self.diffs) / len(self.diffs)))
        ordered = sorted(self.diffs)
        centre = quantile(ordered, 0.5)
        mad = quantile(sorted(abs(d - centre) for d in ordered), 0.5)
        return max(0.05, 2.5 * 1.4826 * mad)

    @property
    def pairs(self) -> int:
        return self.test.n

    def effect(self) -> dict[str, Any]:
        if not self.diffs:
            return {}
        if not self.ratio:
            n = self.test.n
            return {"candidate_rate": round(self.sums[0] / n, 5),
                    "current_rate": round(self.sums[1] / n, 5),
                    "excess": round((self.sums[0] - self.sums[1]) / n, 5)}
        ordered = sorted(self.diffs)
        low, high = median_ci(ordered)
        return {"median_ratio": round(math.exp(quantile(ordered, 0.5)), 4),
                "median_ratio_ci": [round(math.exp(low), 4) if not math.isnan(low) else None,
                                    round(math.exp(high), 4) if not math.isnan(high) else None]}


@dataclass
class _Cohort:
    metrics: dict[str, _PairedMetric]
    devices: dict[bool, int] = field(default_factory=lambda: {True: 0, False: 0})
    last_t: float = 0.0
    regressed: dict[str, Finding] = field(default_factory=dict)  # a rejection stays


class EdgeComparison:
    """Candidate vs current version of one edge model, per cohort (see the module docstring).
    ``max_cohorts`` is the model's cohort limit: the number of tests is fixed by it."""

    def __init__(self, model: str, current: int, candidate: int, max_cohorts: int,
                 settings: EdgeVerdictSettings | None = None) -> None:
        self.settings = settings or EdgeVerdictSettings()
        self.model, self.current, self.candidate = model, current, candidate
        self.tests = (max_cohorts + 1) * len(METRICS)
        self.threshold = self.tests / self.settings.alpha
        self.cohorts: dict[str, _Cohort] = {}
        self._waiting: dict[bool, dict[tuple[str, str], _Device]] = {True: {}, False: {}}
        self._counted: set[tuple[bool, str]] = set()  # (candidate, device) already counted

    def observe(self, sample: Sample) -> None:
        if sample.model != self.model or sample.version not in (self.current, self.candidate):
            return
        device, cohort = sample.labels.get("device", ""), sample.labels.get("cohort", "")
        candidate = sample.version == self.candidate
        if not device or (candidate, device) in self._counted or \
                len(self._counted) >= MAX_COUNTED:
            return  # devices without an id cannot be counted once; counted ones are done
        waiting = self._waiting[candidate]
        record = waiting.get((cohort, device))
        if record is None:
            if len(waiting) >= MAX_WAITING:
                waiting.pop(next(iter(waiting)))  # the oldest waiting device gives way
            record = waiting[(cohort, device)] = _Device()
        _add(record, sample)
        if record.inferences + record.failed >= self.settings.min_inferences:
            del waiting[(cohort, device)]
            self._counted.add((candidate, device))
            self._count(cohort, candidate, sample.t, record)

    def _count(self, name: str, candidate: bool, t: float, device: _Device) -> None:
        cohort = self.cohorts.get(name)
        if cohort is None:
            gap = self.settings.max_pair_gap_seconds
            cohort = self.cohorts[name] = _Cohort({
                m: _PairedMetric(self.threshold, gap, ratio=m != "errors") for m in METRICS})
        cohort.devices[candidate] += 1
        cohort.last_t = max(cohort.last_t, t)
        delay = t - (device.first_t if device.first_t is not None else t)
        if device.inferences:
            cohort.metrics["latency"].add(candidate, t, device.total_ms / device.inferences, delay)
        total = device.inferences + device.failed
        cohort.metrics["errors"].add(candidate, t, (device.failed + device.error_logs)
                                     / (total + device.error_logs), delay)
        if device.load_ms is not None:
            cohort.metrics["load"].add(candidate, t, device.load_ms, delay)
        if device.memory_bytes is not None:
            cohort.metrics["memory"].add(candidate, t, device.memory_bytes, delay)

    # -- verdicts ----------------------------------------------------------------------------
    def evaluate(self, now: float) -> list[Finding]:
        """One finding per cohort that has counted candidate devices, and metric."""
        out = []
        for name, cohort in sorted(self.cohorts.items()):
            if not cohort.devices[True]:
                continue
            for metric in METRICS:
                out.append(cohort.regressed.get(metric) or self._judge(name, cohort, metric, now))
        return out

    def _judge(self, name: str, cohort: _Cohort, metric: str, now: float) -> Finding:
        paired = cohort.metrics[metric]
        test = paired.test
        evidence = {"statistic": "log_e_value", "value": round(test.log_e, 3),
                    "threshold": round(test.log_threshold, 3), "samples": test.n,
                    "cohort": name, "pairs": test.n, "log_e_value": round(test.log_e, 3),
                    "log_threshold": round(test.log_threshold, 3), "tests": self.tests,
                    "alpha": self.settings.alpha, "candidate_devices": cohort.devices[True],
                    "current_devices": cohort.devices[False]}
        base: dict[str, Any] = {"model": self.model, "version": self.candidate, "target": name,
                                "evidence": evidence}
        if test.n < self.settings.min_devices:
            return Finding(DETECTOR[metric], INCONCLUSIVE, now, **base,
                           reason=f"cohort {name}: {test.n} device pairs, need "
                                  f"{self.settings.min_devices}")
        effect = paired.effect()
        if not test.alarmed:
            return Finding(DETECTOR[metric], OK, now, **base, effect=effect)
        size, floor, text = self._size(metric, effect)
        if size < floor:
            return Finding(DETECTOR[metric], OK, now, **base, effect=effect,
                           reason=f"cohort {name}: {text}, under the floor")
        finding = Finding(DETECTOR[metric], REGRESSION, now, **base, effect=effect,
                          reason=f"cohort {name}: {text} (v{self.candidate} vs v{self.current}, "
                                 f"{test.n} device pairs)")
        cohort.regressed[metric] = finding
        return finding

    def _size(self, metric: str, effect: dict[str, Any]) -> tuple[float, float, str]:
        s = self.settings
        if metric == "errors":
            return (effect["excess"], s.error_floor,
                    f"failure rate {effect['candidate_rate']:.2%} vs {effect['current_rate']:.2%}")
        floor = {"latency": s.latency_floor, "load": s.load_floor, "memory": s.memory_floor}[metric]
        ratio = effect["median_ratio"]
        what = {"latency": "inference time", "load": "load time", "memory": "memory"}[metric]
        return ratio - 1, floor, f"{what} {ratio:.2f}x"

    def summary(self) -> dict[str, dict[str, int]]:
        """Counted devices per cohort: {cohort: {"candidate": n, "current": n}}."""
        return {name: {"candidate": c.devices[True], "current": c.devices[False]}
                for name, c in sorted(self.cohorts.items())}

    def candidate_devices(self) -> int:
        return sum(c.devices[True] for c in self.cohorts.values())


def _add(record: _Device, sample: Sample) -> None:
    count = int(sample.labels.get("count", "1") or 1)
    if sample.metric == INFERENCE_MS:
        if record.first_t is None:  # the first report after a start or a switch: warm-up
            record.first_t = sample.t
            return
        record.inferences += count
        record.total_ms += sample.value * count
    elif sample.metric == FAILED_INFERENCES:
        record.failed += int(sample.value)
    elif sample.metric == ERROR_LOGS:
        record.error_logs += int(sample.value)
    elif sample.metric == LOAD_MS and record.load_ms is None:
        record.load_ms = sample.value
    elif sample.metric == MEMORY_BYTES:
        record.memory_bytes = sample.value


class EdgeVerdicts:
    """The comparisons of every edge model with a rollout in progress: fed the receiver's
    Samples, told each rollout's versions, asked for findings."""

    def __init__(self, settings: dict[str, tuple[int, EdgeVerdictSettings]]) -> None:
        self.settings = settings  # model -> (max_cohorts, verdict settings)
        self.comparisons: dict[str, EdgeComparison] = {}

    def reconfigure(self, settings: dict[str, tuple[int, EdgeVerdictSettings]]) -> list[str]:
        """New settings; comparisons of models whose settings changed are dropped (returned:
        the rollout announces their versions again, and they start afresh)."""
        dropped = [model for model in self.comparisons
                   if settings.get(model) != self.settings.get(model)]
        for model in dropped:
            del self.comparisons[model]
        self.settings = settings
        return dropped

    def rollout_changed(self, model: str, current: int | None, candidate: int | None) -> None:
        """A rollout's versions: a comparison while there is a candidate (kept while the
        versions stay: its evidence spans the rollout's steps)."""
        known = self.comparisons.get(model)
        if candidate is None or current is None or model not in self.settings:
            self.comparisons.pop(model, None)
            return
        if known is None or (known.current, known.candidate) != (current, candidate):
            max_cohorts, settings = self.settings[model]
            self.comparisons[model] = EdgeComparison(model, current, candidate, max_cohorts,
                                                     settings)

    def observe(self, sample: Sample) -> None:
        comparison = self.comparisons.get(sample.model)
        if comparison is not None:
            comparison.observe(sample)

    def findings(self, model: str, now: float) -> list[Finding]:
        comparison = self.comparisons.get(model)
        return comparison.evaluate(now) if comparison is not None else []

    def all_findings(self, now: float) -> Iterable[Finding]:
        for model in sorted(self.comparisons):
            yield from self.findings(model, now)

    def candidate_devices(self, model: str) -> int:
        comparison = self.comparisons.get(model)
        return comparison.candidate_devices() if comparison is not None else 0

    def summary(self, model: str) -> dict[str, dict[str, int]]:
        comparison = self.comparisons.get(model)
        return comparison.summary() if comparison is not None else {}
