"""Memory leak detection that stays honest on autocorrelated RSS.

RSS sampled every few seconds is strongly autocorrelated (GC sawtooth, allocator noise): naive
Mann-Kendall/OLS trend tests at 1 % fire on 30-45 % of leak-free series (see
reference/detection.md). So:

1. samples before ``warmup_seconds`` after a (re)start are ignored (warm-up plateau);
2. a drop of more than ``restart_drop`` of the level, or a new pid, is a restart: history resets;
3. samples are aggregated into ``bin_seconds`` medians (kills sawtooth and spikes);
4. OLS slope over the binned medians of the last ``window_seconds``, with its standard error
   inflated for the lag-1 autocorrelation of the residuals (effective sample size
   n (1 - r) / (1 + r));
5. a leak needs a one-sided p-value below ``alpha`` *and* a slope of at least
   ``min_slope_bytes_per_hour``; severity comes from the projected time to the limit
   (page under 4 h, ticket under 7 days, info beyond; ticket when no limit is known).
"""

from __future__ import annotations

import math
from collections import deque
from statistics import NormalDist
from typing import Any

from pydantic import Field

from tfwarden.core.settings import Settings
from tfwarden.core.types import INCONCLUSIVE, OK, REGRESSION, Finding, Sample

MIB = 1024 * 1024


class MemorySettings(Settings):
    """Memory leak detector (``detection.memory``; docs/detection.md)."""

    warmup_seconds: float = Field(600.0, ge=0)
    bin_seconds: float = Field(300.0, ge=10, le=86400)
    window_seconds: float = Field(24 * 3600.0, ge=600)
    min_bins: int = Field(6, ge=3)
    alpha: float = Field(1e-3, gt=0, lt=0.5)
    min_slope_bytes_per_hour: float = Field(1.0 * MIB, ge=0)
    restart_drop: float = Field(0.3, gt=0, lt=1,
                                description="A drop by this share of RSS is a restart.")
    stale_seconds: float = Field(120.0, gt=0)
    page_seconds: float = Field(4 * 3600.0, gt=0, description="Time to the limit that pages.")
    ticket_seconds: float = Field(7 * 86400.0, gt=0,
                                  description="Time to the limit that opens a ticket.")


def _t_to_p(t: float, dof: float) -> float:
    """One-sided upper p-value of Student's t via Hill's normal approximation."""
    if dof <= 0:
        return math.nan
    z = t * (1 - 1 / (4 * dof)) / math.sqrt(1 + t * t / (2 * dof))
    return 1 - NormalDist().cdf(z)


class MemoryLeak:
    name = "memory"

    def __init__(self, target: str, settings: MemorySettings | None = None,
                 metric: str = "rss_bytes") -> None:
        self.settings = settings or MemorySettings()
        self.target, self.metric = target, metric
        self.started_t: float | None = None
        self.last: Sample | None = None
        self.limit: float | None = None
        self.current_bin: list[float] = []
        self.current_bin_start: float | None = None
        self.bins: deque[tuple[float, float]] = deque()  # (bin centre t, median bytes)
        self.restarts = 0
        self._trend: tuple[int, dict[str, float] | None] | None = None  # (bins closed, result)
        self._closed = 0

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
        if sample.t - self.started_t < self.settings.warmup_seconds:
            return
        start = sample.t - sample.t % self.settings.bin_seconds
        if self.current_bin_start is not None and start != self.current_bin_start:
            self._close_bin()
        self.current_bin_start = start
        self.current_bin.append(sample.value)

    def _restarted(self, sample: Sample) -> bool:
        assert self.last is not None
        if sample.labels.get("pid") and sample.labels.get("pid") != self.last.labels.get("pid"):
            return True
        return sample.value < self.last.value * (1 - self.settings.restart_drop)

    def _reset(self) -> None:
        self._closed += 1  # invalidates the cached trend
        self.started_t = None
        self.current_bin, self.current_bin_start = [], None
        self.bins.clear()

    def _close_bin(self) -> None:
        if self.current_bin and self.current_bin_start is not None:
            ordered = sorted(self.current_bin)
            middle = len(ordered) // 2
            median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
            self.bins.append((self.current_bin_start + self.settings.bin_seconds / 2, median))
            self._closed += 1
            while self.bins and self.bins[0][0] < self.bins[-1][0] - self.settings.window_seconds:
                self.bins.popleft()
        self.current_bin = []

    def trend(self) -> dict[str, float] | None:
        """Slope (bytes/hour), its autocorrelation-corrected SE, t, p and n_eff (recomputed
        only when a bin closes)."""
        if self._trend is None or self._trend[0] != self._closed:
            self._trend = (self._closed, self._compute_trend())
        return self._trend[1]

    def _compute_trend(self) -> dict[str, float] | None:
        n = len(self.bins)
        if n < 3:
            return None
        hours = [t / 3600 for t, _ in self.bins]
        values = [v for _, v in self.bins]
        mean_x, mean_y = sum(hours) / n, sum(values) / n
        sxx = sum((x - mean_x) ** 2 for x in hours)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(hours, values, strict=True)) / sxx
        residuals = [y - mean_y - slope * (x - mean_x) for x, y in zip(hours, values, strict=True)]
        rss = sum(r * r for r in residuals)
        denom = sum(r * r for r in residuals) or 1.0
        r1 = sum(a * b for a, b in zip(residuals, residuals[1:], strict=False)) / denom
        # lag-1 r is biased low and noisy in short series: use Kendall's bias correction plus
        # one standard error, so the effective sample size errs on the small side
        r1 = r1 + (1 + 4 * r1) / n + 1.0 / math.sqrt(n)
        r1 = min(max(r1, 0.0), 0.99)
        n_eff = max(2.5, n * (1 - r1) / (1 + r1))
        se = math.sqrt(rss / max(n - 2, 1) / sxx) * math.sqrt((n - 2) / max(n_eff - 2, 0.5))
        t_stat = slope / se if se > 0 else math.inf
        return {"slope_bytes_per_hour": slope, "slope_se": se, "t": t_stat,
                "p_value": _t_to_p(t_stat, n_eff - 2), "n_bins": n, "n_eff": n_eff,
                "lag1_autocorrelation": r1, "level_bytes": values[-1]}

    def evaluate(self, now: float) -> Finding:
        base: dict[str, Any] = {"target": self.target}
        if self.last is None or now - self.last.t > self.settings.stale_seconds:
            return Finding(self.name, INCONCLUSIVE, now, **base, reason="no recent memory samples")
        stats = self.trend()
        if stats is None or stats["n_bins"] < self.settings.min_bins:
            have = 0 if stats is None else int(stats["n_bins"])
            return Finding(self.name, INCONCLUSIVE, now, **base,
                           evidence={"bins": have, "restarts": self.restarts},
                           reason=f"{have} bins after warm-up, need {self.settings.min_bins}")
        slope, se = stats["slope_bytes_per_hour"], stats["slope_se"]
        z = NormalDist().inv_cdf(0.975)
        effect = {"slope_mib_per_hour": round(slope / MIB, 3),
                  "slope_mib_per_hour_ci": [round((slope - z * se) / MIB, 3),
                                            round((slope + z * se) / MIB, 3)]}
        evidence = {"bins": int(stats["n_bins"]), "n_eff": round(stats["n_eff"], 1),
                    "lag1_autocorrelation": round(stats["lag1_autocorrelation"], 3),
                    "t": round(stats["t"], 3), "p_value": stats["p_value"],
                    "restarts": self.restarts}
        if stats["p_value"] > self.settings.alpha or slope < self.settings.min_slope_bytes_per_hour:
            return Finding(self.name, OK, now, **base, effect=effect, evidence=evidence)
        severity, reason = "ticket", f"growing {slope / MIB:.1f} MiB/h"
        if self.limit is not None:
            seconds = max(0.0, (self.limit - stats["level_bytes"]) / slope * 3600)
            effect["time_to_limit_seconds"] = round(seconds)
            severity = ("page" if seconds < self.settings.page_seconds else
                        "ticket" if seconds < self.settings.ticket_seconds else "info")
            reason += f", limit in {seconds / 3600:.1f} h"
        return Finding(self.name, REGRESSION, now, **base, effect=effect, evidence=evidence,
                       severity=severity, reason=reason)
