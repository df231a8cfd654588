"""Memory leak (and retention) detection that stays honest on real RSS curves.

RSS sampled every few seconds is strongly autocorrelated (allocator noise), carries periodic
components (GC and cache sawtooth, from a minute to most of an hour), warm-up plateaus, caches that
fill for tens of minutes, restarts, and steps when TF Serving loads or unloads a version. Naive
trend tests at 1 % fire on 30-45 % of leak-free series (reference/detection.md). So:

1. raw samples become ``point_seconds`` medians (spikes gone); ``warmup_seconds`` after a (re)start
   are ignored, and a drop of ``restart_drop`` of the level (or a new pid) is a restart that
   clears history (not when a version unload was just announced);
2. a version load or unload (``version_event``) re-bases the level: the ``settle_seconds`` after it
   are skipped and the fit gets a step at the event, estimated from all the data;
3. every ``bin_seconds`` the points of the judged window are fitted by least squares with a level,
   a slope, the lifecycle steps and, when the autocorrelation of the detrended points shows a
   period (2 min to ``max_period_seconds``), three harmonics of it (sawtooth of any shape); the
   slope's standard error is inflated for the residuals' autocorrelation (variance of block means,
   then the lag-1 autocorrelation of the blocks, taken conservatively);
4. a concave rise (significant negative curvature: a cache filling) moves the window's start
   forward instead of being judged: a rise that flattens is not a leak;
5. slow path: a leak needs ``slope_t`` above the one-sided ``alpha`` quantile and a slope of at
   least ``min_slope_bytes_per_hour``; fast path: a change of slope within the last
   ``fast_window_seconds`` (recent slope over the last 15 or 30 minutes, the history before it
   fitted with the same level/steps/harmonics) needs ``fast_alpha`` and ``fast_min_slope``;
6. guards against false findings (each one removed false findings on the benchmark traces): a
   finding must hold on ``persist_refits`` consecutive refits; the slow path needs a window of
   three ``max_period_seconds`` (an undetected slow sawtooth's climb is not a trend), a longest
   period of points after the latest step (a step can absorb a sawtooth drop hidden in the
   settle gap), and the window's recent half growing at ``half_share`` of the slope (a fill
   flattens, a leak does not); the fast path needs an hour of history before its knot (a fill's
   steep start) and no step, even one without points yet, near the knot;
7. severity comes from the projected time to the limit (page under ``page_seconds``, ticket under
   ``ticket_seconds``, info beyond; ticket when no limit is known).

``MemoryRetention`` judges what a version unload gave back: RSS that does not return toward the
level before that version's load within ``retention_seconds`` is a ``memory_retention`` finding
(TF Serving's known retention after version swaps).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

from pydantic import Field

from tfwarden.core.settings import Settings
from tfwarden.core.types import INCONCLUSIVE, OK, REGRESSION, Finding, Sample

MIB = 1024 * 1024
HARMONICS = 3
CONCAVITY_T = 2.5  # curvature t below -this: still settling (a cache filling)
# recent stretches the fast path tests; the hour covers an onset 30-60 min back, where a knot at
# 15 or 30 min misfits the ramp before it (residual autocorrelation inflated the SE 20-160x)
FAST_RECENT_SECONDS = (900.0, 1800.0, 3600.0)
LOADED, UNLOADED = "loaded", "unloaded"


class MemorySettings(Settings):
    """Memory leak detector (``detection.memory``; docs/detection.md)."""

    warmup_seconds: float = Field(600.0, ge=0, description="Ignored after a (re)start.")
    point_seconds: float = Field(60.0, ge=10, le=600,
                                 description="Raw samples become medians of this length.")
    bin_seconds: float = Field(120.0, ge=10, le=86400,
                               description="The trend is re-fitted when a bin closes.")
    window_seconds: float = Field(24 * 3600.0, ge=600, description="Longest judged window.")
    min_bins: int = Field(15, ge=3, description="Judged window needs this many bins.")
    alpha: float = Field(1e-3, gt=0, lt=0.5, description="One-sided level of the slow path.")
    min_slope_bytes_per_hour: float = Field(1.0 * MIB, ge=0)
    fast_alpha: float = Field(1e-6, gt=0, lt=0.5,
                              description="One-sided level of the fast (change of slope) path.")
    fast_min_slope_bytes_per_hour: float = Field(30.0 * MIB, ge=0)
    fast_window_seconds: float = Field(3 * 3600.0, ge=1800,
                                       description="History the fast path fits.")
    max_period_seconds: float = Field(3600.0, ge=120, le=4 * 3600.0,
                                      description="Longest periodic component looked for.")
    settle_seconds: float = Field(600.0, ge=0,
                                  description="Skipped after a version load or unload.")
    restart_drop: float = Field(0.3, gt=0, lt=1,
                                description="A drop by this share of RSS is a restart.")
    stale_seconds: float = Field(120.0, gt=0)
    page_seconds: float = Field(4 * 3600.0, gt=0, description="Time to the limit that pages.")
    ticket_seconds: float = Field(7 * 86400.0, gt=0,
                                  description="Time to the limit that opens a ticket.")
    retention_seconds: float = Field(2400.0, ge=600,
                                     description="After an unload, judge retention this late.")
    retention_min_bytes: float = Field(64.0 * MIB, ge=0)
    retention_share: float = Field(0.3, gt=0, le=1,
                                   description="Retained share of the version's load step.")
    persist_refits: int = Field(3, ge=1, le=60,
                                description="A leak must hold on this many consecutive refits.")
    half_share: float = Field(0.5, ge=0, le=1,
                              description="Slow path: the window's recent half must grow at "
                                          "least this share of the whole window's slope.")


def _t_to_p(t: float, dof: float) -> float:
    """One-sided upper p-value of Student's t via Hill's normal approximation."""
    if dof <= 0:
        return math.nan
    z = t * (1 - 1 / (4 * dof)) / math.sqrt(1 + t * t / (2 * dof))
    return 1 - NormalDist().cdf(z)


def _t_threshold(alpha: float, dof: float) -> float:
    """Critical t for a one-sided ``alpha`` (Cornish-Fisher from the normal quantile)."""
    z = NormalDist().inv_cdf(1 - alpha)
    dof = max(dof, 1.0)
    return z + (z ** 3 + z) / (4 * dof) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * dof * dof)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _solve(matrix: list[list[float]], rhs: list[float]) -> tuple[list[float], list[list[float]]] | None:
    """Solution and inverse of a small symmetric system (Gauss-Jordan, partial pivoting)."""
    size = len(rhs)
    work = [row[:] + [1.0 if i == j else 0.0 for j in range(size)] + [rhs[i]]
            for i, row in enumerate(matrix)]
    for col in range(size):
        pivot = max(range(col, size), key=lambda r: abs(work[r][col]))
        if abs(work[pivot][col]) < 1e-9 * (1 + abs(matrix[col][col])):
            return None
        work[col], work[pivot] = work[pivot], work[col]
        inv = 1.0 / work[col][col]
        work[col] = [v * inv for v in work[col]]
        for r in range(size):
            if r != col and work[r][col] != 0.0:
                f = work[r][col]
                work[r] = [a - f * b for a, b in zip(work[r], work[col], strict=True)]
    return [row[-1] for row in work], [row[size:2 * size] for row in work]


@dataclass(frozen=True)
class Fit:
    """One least-squares fit: the coefficient under test, its corrected SE and t."""

    slope: float  # bytes/hour (the recent slope on the fast path)
    se: float
    t: float
    dof: float
    inflation: float
    curvature_t: float
    change_t: float
    level: float  # fitted level at the window's end (bytes)
    points: int


def _inflation(residuals: list[float], block: int = 5) -> tuple[float, float]:
    """Variance inflation of the residuals' autocorrelation, and the effective sample size."""
    n = len(residuals)
    s2 = sum(r * r for r in residuals) / n or 1.0
    blocks = n // block
    if blocks < 4:
        return 10.0, n / 10.0
    means = [sum(residuals[i * block:(i + 1) * block]) / block for i in range(blocks)]
    within = max(1.0, block * sum(m * m for m in means) / blocks / s2)
    denom = sum(m * m for m in means) or 1.0
    r1 = sum(a * b for a, b in zip(means, means[1:], strict=False)) / denom
    # lag-1 r is biased low and noisy in short series: Kendall's correction plus one SE
    r1 = r1 + (1 + 4 * r1) / blocks + math.sqrt(max(1 - r1 * r1, 0.0) / blocks)
    r1 = min(max(r1, 0.0), 0.95)
    factor = within * (1 + r1) / (1 - r1)
    return factor, n / factor


def fit_trend(times: list[float], values: list[float], steps: list[float], period: float | None,
              *, quadratic: bool = False, change_at: float | None = None) -> Fit | None:
    """Least squares of ``values`` on level, slope (per hour, time 0 at the last point),
    lifecycle steps, harmonics of ``period`` and, optionally, a curvature or a change of slope
    at ``change_at`` (then the tested slope is the one after it)."""
    end = times[-1]
    columns: list[list[float]] = [[1.0] * len(times), [(t - end) / 3600 for t in times]]
    if quadratic:
        columns.append([x * x for x in columns[1]])
    if change_at is not None:
        columns.append([max(0.0, t - change_at) / 3600 for t in times])
    columns += [[1.0 if t >= s else 0.0 for t in times] for s in steps]
    if period:
        for k in range(1, HARMONICS + 1):
            w = 2 * math.pi * k / period
            columns.append([math.cos(w * t) for t in times])
            columns.append([math.sin(w * t) for t in times])
    p, n = len(columns), len(times)
    if n < p + 10:
        return None
    mean = sum(values) / n
    ys = [v - mean for v in values]
    gram = [[sum(a * b for a, b in zip(columns[i], columns[j], strict=True)) for j in range(p)]
            for i in range(p)]
    solved = _solve(gram, [sum(a * b for a, b in zip(c, ys, strict=True)) for c in columns])
    if solved is None:
        return None
    beta, inverse = solved
    fitted = [sum(beta[j] * columns[j][i] for j in range(p)) for i in range(n)]
    residuals = [y - f for y, f in zip(ys, fitted, strict=True)]
    s2 = sum(r * r for r in residuals) / (n - p)
    factor, _ = _inflation(residuals)
    # the level, steps and harmonics are estimated from all n points: p is subtracted from n
    # before the autocorrelation shrinks it (n_eff - p, with n_eff = n / factor, dropped below
    # one degree of freedom on long misfit windows and put the 1e-6 threshold above 100)
    n_eff = (n - p) / factor + p

    def t_of(index: int, combo: int | None = None) -> tuple[float, float]:
        var = inverse[index][index]
        coef = beta[index]
        if combo is not None:
            var += inverse[combo][combo] + 2 * inverse[index][combo]
            coef += beta[combo]
        se = math.sqrt(max(var, 0.0) * s2 * factor)
        return coef, (coef / se if se > 0 else math.inf)

    change_index = 3 if quadratic else 2
    slope, t_stat = t_of(1, change_index if change_at is not None else None)
    curvature_t = t_of(2)[1] if quadratic else 0.0
    change_t = t_of(change_index)[1] if change_at is not None else 0.0
    se = slope / t_stat if t_stat not in (0.0, math.inf) else 0.0
    return Fit(slope, abs(se), t_stat, max(n_eff - p, 1.0), factor, curvature_t, change_t,
               mean + fitted[-1], n)


def detect_period(values: list[float], longest: int) -> float | None:
    """Period (in points) of the strongest periodic component of the detrended ``values``:
    the first clear peak of their autocorrelation (2 to ``longest`` points), or None."""
    n = len(values)
    longest = min(longest, n // 3)
    if longest < 3:
        return None
    mid = (n - 1) / 2
    sxx = sum((i - mid) ** 2 for i in range(n))
    mean = sum(values) / n
    slope = sum((i - mid) * (v - mean) for i, v in enumerate(values)) / sxx
    xs = [v - mean - slope * (i - mid) for i, v in enumerate(values)]
    var = sum(x * x for x in xs) or 1.0
    acf = [1.0] + [sum(xs[i] * xs[i + k] for i in range(n - k)) / var for k in range(1, longest + 2)]
    lowest = 1.0
    for k in range(2, longest + 1):
        lowest = min(lowest, acf[k - 1])
        if acf[k] >= acf[k - 1] and acf[k] >= acf[k + 1] and acf[k] > 0.2 and \
                acf[k] - lowest > 0.3:
            a, b, c = acf[k - 1], acf[k], acf[k + 1]
            bend = a - 2 * b + c
            return k + (0.5 * (a - c) / bend if bend < 0 else 0.0)
    return None


class MemoryLeak:
    name = "memory"

    def __init__(self, target: str, settings: MemorySettings | None = None,
                 metric: str = "rss_bytes") -> None:
        self.settings = settings or MemorySettings()
        self.target, self.metric = target, metric
        self.started_t: float | None = None
        self.last: Sample | None = None
        self.limit: float | None = None
        self.raw: list[float] = []
        self.raw_start: float | None = None
        self.times: deque[float] = deque()
        self.values: deque[float] = deque()
        self.steps: list[float] = []
        self.window_start = -math.inf
        self.settle_until = -math.inf
        self.unload_until = -math.inf
        self.restarts = 0
        self.samples_seen = 0
        self.period_seconds: float | None = None
        self.judged_bin: float | None = None
        self.judgement: Finding | None = None
        self.streak = 0  # consecutive refits that met a leak condition

    # -- samples and lifecycle ---------------------------------------------------------------
    def observe(self, sample: Sample) -> None:
        if sample.target != self.target:
            return
        if sample.metric == "limit_bytes":
            self.limit = sample.value
            return
        if sample.metric != self.metric:
            return
        if self.last is not None and self._restarted(sample):
            self.restarts += 1
            self._reset()
        if self.started_t is None:
            self.started_t = sample.t
        self.last = sample
        self.samples_seen += 1
        if sample.t - self.started_t < self.settings.warmup_seconds or sample.t < self.settle_until:
            return
        start = sample.t - sample.t % self.settings.point_seconds
        if self.raw_start is not None and start != self.raw_start:
            self._close_point()
        self.raw_start = start
        self.raw.append(sample.value)

    def version_event(self, model: str, version: int, state: str, t: float) -> None:
        """A version of a model on this target was loaded or unloaded at ``t``: re-base."""
        self._close_point()
        self.raw_start = None
        self.settle_until = t + self.settings.settle_seconds
        if state == UNLOADED:
            self.unload_until = self.settle_until
        if self.times:
            self.steps.append(self.settle_until)

    def _restarted(self, sample: Sample) -> bool:
        assert self.last is not None
        if sample.labels.get("pid") and sample.labels.get("pid") != self.last.labels.get("pid"):
            return True
        if sample.t < self.unload_until:
            return False  # an announced unload gives memory back
        return sample.value < self.last.value * (1 - self.settings.restart_drop)

    def _reset(self) -> None:
        self.started_t = None
        self.raw, self.raw_start = [], None
        self.times.clear()
        self.values.clear()
        self.steps.clear()
        self.window_start = -math.inf
        self.period_seconds = None
        self.streak = 0

    def _close_point(self) -> None:
        if self.raw and self.raw_start is not None:
            self.times.append(self.raw_start + self.settings.point_seconds / 2)
            self.values.append(_median(self.raw))
            oldest = self.times[-1] - self.settings.window_seconds
            while self.times and self.times[0] < oldest:
                self.times.popleft()
                self.values.popleft()
            self.steps = [s for s in self.steps if s > self.times[0]]
        self.raw = []

    # -- judging -----------------------------------------------------------------------------
    def _window(self, since: float) -> tuple[list[float], list[float], list[float]]:
        start = max(since, self.window_start)
        pairs = [(t, v) for t, v in zip(self.times, self.values, strict=True) if t >= start]
        times, values = [t for t, _ in pairs], [v for _, v in pairs]
        steps = [s for s in self.steps if times and times[0] < s <= times[-1]]
        return times, values, steps

    def _update_period(self, times: list[float]) -> None:
        recent = int(3 * self.settings.max_period_seconds / self.settings.point_seconds)
        values = list(self.values)[-recent:]
        cut = len(values) - len(times) if len(times) < len(values) else 0
        longest = int(self.settings.max_period_seconds / self.settings.point_seconds)
        found = detect_period(values[cut:], longest) if not self.steps else None
        if found is not None and found * self.settings.point_seconds >= 120:
            self.period_seconds = found * self.settings.point_seconds
        elif not self.steps:
            self.period_seconds = None

    def judge(self, now: float) -> dict[str, Any] | None:
        """The slow and fast fits at ``now`` (None: not enough points)."""
        times, values, steps = self._window(-math.inf)
        need = self.settings.min_bins * self.settings.bin_seconds
        if not times or times[-1] - times[0] < need:
            return None
        self._update_period(times)
        period = self.period_seconds
        curved = fit_trend(times, values, steps, period, quadratic=True)
        if curved is not None and curved.curvature_t < -CONCAVITY_T:
            self.window_start = times[0] + (times[-1] - times[0]) / 4
            return {"settling": True, "curvature_t": curved.curvature_t, "points": len(times)}
        slow = fit_trend(times, values, steps, period)
        if slow is None:
            return None
        fast = None
        f_times, f_values, f_steps = self._window(now - self.settings.fast_window_seconds)
        for recent in FAST_RECENT_SECONDS:
            change_at = now - recent
            # all known steps, also one with no point after it yet (f_steps omits those, and
            # the first points after a load would then read as a steep recent slope)
            if any(step > change_at - 900 for step in self.steps):
                continue  # a step this recent is confounded with a change of slope
            # the history before the knot must outlast a cache fill (95 % within an hour of a
            # (re)start): a fill's own early, steep part read as a recent change of slope
            if f_times and f_times[-1] - f_times[0] >= recent + max(900.0, 2 * need):
                candidate = fit_trend(f_times, f_values, f_steps, period,
                                      change_at=change_at)
                if candidate is not None and (fast is None or candidate.t > fast.t):
                    fast = candidate
        # the recent half of the window, fitted alone: a leak grows at the same rate there, a
        # rise that flattens (a cache filling slower than the concavity test can tell) does not
        middle = times[0] + (times[-1] - times[0]) / 2
        h_times, h_values, h_steps = self._window(middle)
        half = fit_trend(h_times, h_values, h_steps, period) if h_times else None
        return {"settling": False, "slow": slow, "fast": fast, "half": half, "points": len(times),
                "span_seconds": times[-1] - times[0]}

    def evaluate(self, now: float) -> Finding:
        base: dict[str, Any] = {"target": self.target}
        if self.last is None or now - self.last.t > self.settings.stale_seconds:
            return Finding(self.name, INCONCLUSIVE, now, **base, reason="no recent memory samples")
        bin_start = now - now % self.settings.bin_seconds
        if self.judgement is None or self.judged_bin != bin_start:
            self.judged_bin = bin_start
            self.judgement = self._judge_finding(now)
        return self.judgement

    def _judge_finding(self, now: float) -> Finding:
        base: dict[str, Any] = {"target": self.target}
        stats = self.judge(now)
        # evidence.samples is a count (policies compare it with min_samples); the detail beside it
        detail = {"samples": self.samples_seen, "samples_detail": {
            "raw": self.samples_seen, "points": len(self.times),
            "point_seconds": self.settings.point_seconds}}
        if stats is None or stats["settling"]:
            self.streak = 0
        if stats is None:
            return Finding(self.name, INCONCLUSIVE, now, **base,
                           evidence={**detail, "restarts": self.restarts},
                           reason="not enough memory history after warm-up")
        if stats["settling"]:
            return Finding(self.name, OK, now, **base, evidence={
                "statistic": "curvature_t", "value": round(stats["curvature_t"], 3),
                "threshold": -CONCAVITY_T, **detail, "restarts": self.restarts},
                reason="memory still settling (concave rise)")
        need = self.settings.min_bins * self.settings.bin_seconds
        slow: Fit = stats["slow"]
        fast: Fit | None = stats["fast"]
        s = self.settings
        slow_threshold = _t_threshold(s.alpha, slow.dof)
        leak, path, fit, threshold = False, "slow", slow, slow_threshold
        half: Fit | None = stats["half"]
        # a step's size is estimated from the points after it, and it can absorb the drop of a
        # sawtooth (a GC or cache cycle hidden in the settle gap): until a longest period of
        # points follows it, a slope fitted across a recent load is confounded with both
        young = any(step > now - max(need, s.max_period_seconds) for step in self.steps)
        # a window shorter than three longest periods cannot tell an undetected slow sawtooth's
        # climb (periods up to ``max_period_seconds``) from a trend
        short = stats["span_seconds"] < max(2 * need, 3 * s.max_period_seconds)
        if not young and not short and slow.t > slow_threshold and \
                slow.slope >= s.min_slope_bytes_per_hour and \
                half is not None and half.t > 1.0 and half.slope >= s.half_share * slow.slope:
            leak = True
        elif fast is not None:
            fast_threshold = _t_threshold(s.fast_alpha, fast.dof)
            if fast.t > fast_threshold and fast.slope >= s.fast_min_slope_bytes_per_hour and \
                    fast.change_t > 0:
                leak, path, fit, threshold = True, "fast", fast, fast_threshold
        # refits two minutes apart share almost all their points, so a single crossing is
        # often one excursion of autocorrelated noise (or the tail of a ramp); a leak only
        # grows more significant, so it must hold on ``persist_refits`` consecutive refits
        self.streak = self.streak + 1 if leak else 0
        leak = leak and self.streak >= s.persist_refits
        return self._finding(now, leak, path, fit, threshold, detail, stats)

    def _finding(self, now: float, leak: bool, path: str, fit: Fit, threshold: float,
                 detail: dict[str, Any], stats: dict[str, Any]) -> Finding:
        z = NormalDist().inv_cdf(0.975)
        detail = {**detail, "samples_detail": {**detail["samples_detail"],
                                               "window_points": fit.points}}
        effect: dict[str, Any] = {
            "slope_mib_per_hour": round(fit.slope / MIB, 3),
            "slope_mib_per_hour_ci": [round((fit.slope - z * fit.se) / MIB, 3),
                                      round((fit.slope + z * fit.se) / MIB, 3)]}
        evidence: dict[str, Any] = {
            "statistic": "slope_t" if path == "slow" else "recent_slope_t",
            "value": round(fit.t, 3), "threshold": round(threshold, 3), "path": path,
            **detail, "window_seconds": round(stats["span_seconds"]),
            "variance_inflation": round(fit.inflation, 2), "dof": round(fit.dof, 1),
            "period_seconds": None if self.period_seconds is None else round(self.period_seconds),
            "steps": len(self.steps), "restarts": self.restarts,
            "p_value": _t_to_p(fit.t, fit.dof)}
        seconds = None
        if self.limit is not None and fit.slope > 0:
            seconds = max(0.0, (self.limit - fit.level) / fit.slope * 3600)
            effect["time_to_limit_seconds"] = round(seconds)
        if not leak:
            return Finding(self.name, OK, now, target=self.target, effect=effect,
                           evidence=evidence)
        severity, reason = "ticket", f"growing {fit.slope / MIB:.1f} MiB/h ({path} path)"
        if seconds is not None:
            severity = ("page" if seconds < self.settings.page_seconds else
                        "ticket" if seconds < self.settings.ticket_seconds else "info")
            reason += f", limit in {seconds / 3600:.1f} h"
        return Finding(self.name, REGRESSION, now, target=self.target, effect=effect,
                       evidence=evidence, severity=severity, reason=reason)


@dataclass
class _Load:
    model: str
    version: int
    t: float
    before: float | None  # level before the load
    step: float | None = None


class MemoryRetention:
    """Memory a version unload did not give back (see the module docstring)."""

    name = "memory_retention"

    def __init__(self, target: str, settings: MemorySettings | None = None,
                 metric: str = "rss_bytes") -> None:
        self.settings = settings or MemorySettings()
        self.target, self.metric = target, metric
        self.recent: deque[tuple[float, float]] = deque()
        self.loads: dict[tuple[str, int], _Load] = {}
        self.pending: list[tuple[_Load, float, float]] = []  # (load, unload t, level before)
        self.last_t: float | None = None
        self.last_event_t = -math.inf
        self.finding: Finding | None = None

    def _level(self, start: float, end: float) -> float | None:
        values = [v for t, v in self.recent if start <= t < end]
        return _median(values) if len(values) >= 5 else None

    def observe(self, sample: Sample) -> None:
        if sample.target != self.target or sample.metric != self.metric:
            return
        self.last_t = sample.t
        self.recent.append((sample.t, sample.value))
        keep = 2 * self.settings.retention_seconds + self.settings.settle_seconds
        while self.recent and self.recent[0][0] < sample.t - keep:
            self.recent.popleft()
        half = self.settings.retention_seconds / 2
        for load in self.loads.values():
            if load.step is None and load.before is not None and \
                    sample.t >= load.t + self.settings.settle_seconds + half:
                after = self._level(load.t + self.settings.settle_seconds, sample.t)
                if after is not None:
                    load.step = after - load.before
        due = [p for p in self.pending if sample.t >= p[1] + self.settings.retention_seconds]
        for pending in due:
            self.pending.remove(pending)
            self._judge(*pending, now=sample.t)

    def version_event(self, model: str, version: int, state: str, t: float) -> None:
        # the level before an event counts only from the settle after the previous event: a
        # swap unloads the old version 10-40 min after loading the new one, and a window that
        # reached back into that load's ramp would read low, so returned memory as retained
        since = max(t - self.settings.retention_seconds / 2,
                    self.last_event_t + self.settings.settle_seconds)
        self.last_event_t = t
        before = self._level(since, t)
        if state == LOADED:
            self.loads[(model, version)] = _Load(model, version, t, before)
        elif state == UNLOADED:
            load = self.loads.pop((model, version), None)
            if load is not None and load.step is not None and before is not None:
                self.pending.append((load, t, before))

    def _judge(self, load: _Load, unloaded_t: float, before: float, now: float) -> None:
        assert load.step is not None
        after = self._level(unloaded_t + self.settings.settle_seconds, now)
        if after is None:
            return
        returned = before - after
        retained = load.step - returned
        threshold = max(self.settings.retention_min_bytes, self.settings.retention_share * load.step)
        found = load.step > 0 and retained >= threshold
        effect = {"retained_bytes": round(retained), "retained_mib": round(retained / MIB, 1),
                  "load_step_bytes": round(load.step)}
        evidence = {"statistic": "retained_bytes", "value": round(retained),
                    "threshold": round(threshold), "model": load.model, "version": load.version,
                    "loaded_t": load.t, "unloaded_t": unloaded_t,
                    "level_before_unload_bytes": round(before),
                    "level_after_unload_bytes": round(after),
                    "samples": sum(1 for t, _ in self.recent if t >= unloaded_t)}
        if found:
            self.finding = Finding(self.name, REGRESSION, now, model=load.model,
                                   version=load.version, target=self.target, effect=effect,
                                   evidence=evidence, severity="ticket",
                                   reason=f"v{load.version} unload kept {retained / MIB:.0f} MiB "
                                          f"of its {load.step / MIB:.0f} MiB")
        else:
            self.finding = Finding(self.name, OK, now, model=load.model, version=load.version,
                                   target=self.target, effect=effect, evidence=evidence)

    def evaluate(self, now: float) -> Finding:
        if self.finding is not None:
            return self.finding
        return Finding(self.name, INCONCLUSIVE, now, target=self.target,
                       reason="no version unload judged yet")
