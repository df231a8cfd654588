"""Error-rate regressions: canary vs stable, and SLO burn rates (SRE workbook, chapter 5).

``CanaryErrors`` pairs canary and stable probe outcomes in arrival order. Only discordant pairs
(one failed, the other not) carry information; with identical versions the failing member is
equally likely to be either (McNemar), so ``w = +1`` (canary failed) / ``-1`` (stable failed) is
symmetric and feeds a mixture e-CUSUM whose average run length to a false alarm is at least
``arl_discordant`` discordant pairs. ``unreachable`` outcomes (the server or the probe path is
down for both) are missing data, not errors.

``BurnRate`` applies the multiwindow, multi-burn-rate rules to a stream of outcomes: page at
14.4x over 1 h and 5 min, page at 6x over 6 h and 30 min, ticket at 1x over 3 d and 6 h, for an
availability objective.
"""

from __future__ import annotations

import bisect
from collections import deque
from typing import Any

from pydantic import Field

from tfwarden.core.settings import Settings
from tfwarden.core.types import INCONCLUSIVE, OK, REGRESSION, Finding, Sample
from tfwarden.detectors.base import MixtureECusum, wilson

# (severity, burn rate, long window s, short window s)
BURN_RULES = (("page", 14.4, 3600, 300), ("page", 6.0, 6 * 3600, 1800),
              ("ticket", 1.0, 3 * 86400, 6 * 3600))


class ErrorSettings(Settings):
    """Canary error-rate detector (``detection.errors``; docs/detection.md)."""

    min_pairs: int = Field(50, ge=10, le=100_000)
    arl_discordant: float = Field(1e5, ge=100)
    error_floor: float = Field(0.005, ge=0, lt=1)
    effect_window: int = Field(2000, ge=100, le=100_000)
    stale_seconds: float = Field(30.0, gt=0, le=86400)
    max_unreachable_ratio: float = Field(0.5, gt=0, le=1)


def _failed(sample: Sample) -> bool | None:
    """True/False for an error/success; None for missing data (target unreachable)."""
    outcome = sample.labels.get("outcome", "ok" if sample.ok else "error")
    if outcome == "unreachable":
        return None
    return not sample.ok


class CanaryErrors:
    name = "errors"

    def __init__(self, model: str, stable_version: int, canary_version: int,
                 settings: ErrorSettings | None = None) -> None:
        self.settings = settings or ErrorSettings()
        self.model, self.stable, self.canary = model, stable_version, canary_version
        self.detector = MixtureECusum(self.settings.arl_discordant)
        self.pairs = 0
        self.waiting: dict[int, deque[bool]] = {stable_version: deque(maxlen=1000),
                                                canary_version: deque(maxlen=1000)}
        self.recent: dict[int, deque[bool]] = {v: deque(maxlen=self.settings.effect_window)
                                               for v in (stable_version, canary_version)}
        self.reach: dict[int, deque[bool]] = {v: deque(maxlen=200)
                                              for v in (stable_version, canary_version)}
        self.last_t: dict[int, float] = {}

    def observe(self, sample: Sample) -> None:
        if (sample.metric != "latency_ms" or sample.model != self.model
                or sample.version not in self.waiting):
            return
        version = sample.version
        self.last_t[version] = sample.t
        failed = _failed(sample)
        self.reach[version].append(failed is not None)
        if failed is None:
            return
        self.recent[version].append(failed)
        other = self.canary if version == self.stable else self.stable
        if not self.waiting[other]:
            self.waiting[version].append(failed)
            return
        other_failed = self.waiting[other].popleft()
        canary_failed, stable_failed = ((failed, other_failed) if version == self.canary
                                        else (other_failed, failed))
        self.pairs += 1
        if canary_failed != stable_failed:
            self.detector.update(1.0 if canary_failed else -1.0)

    def _effect(self) -> dict[str, Any]:
        effect: dict[str, Any] = {}
        for role, version in (("canary", self.canary), ("stable", self.stable)):
            outcomes = self.recent[version]
            errors = sum(outcomes)
            low, high = wilson(errors, len(outcomes))
            effect[f"{role}_error_rate"] = round(errors / len(outcomes), 5) if outcomes else None
            effect[f"{role}_error_rate_ci"] = [round(low, 5), round(high, 5)]
        return effect

    def evaluate(self, now: float) -> Finding:
        base: dict[str, Any] = {"model": self.model, "version": self.canary, "target": f"v{self.stable}"}
        evidence = {"statistic": "log_e_value", "value": round(self.detector.log_e, 3),
                    "threshold": round(self.detector.log_threshold, 3), "samples": self.pairs,
                    "pairs": self.pairs, "discordant_pairs": self.detector.n,
                    "log_e_value": round(self.detector.log_e, 3),
                    "log_threshold": round(self.detector.log_threshold, 3)}
        for version in (self.stable, self.canary):
            last = self.last_t.get(version)
            if last is None or now - last > self.settings.stale_seconds:
                return Finding(self.name, INCONCLUSIVE, now, **base, evidence=evidence,
                               reason=f"no recent probe results for version {version}")
            reach = self.reach[version]
            if reach and 1 - sum(reach) / len(reach) > self.settings.max_unreachable_ratio:
                return Finding(self.name, INCONCLUSIVE, now, **base, evidence=evidence,
                               reason=f"probes of version {version} mostly fail to reach the server")
        if self.pairs < self.settings.min_pairs:
            return Finding(self.name, INCONCLUSIVE, now, **base, evidence=evidence,
                           reason=f"{self.pairs} pairs, need {self.settings.min_pairs}")
        if not self.detector.alarmed:
            return Finding(self.name, OK, now, **base, evidence=evidence)
        effect = self._effect()
        excess = (effect["canary_error_rate"] or 0) - (effect["stable_error_rate"] or 0)
        if excess < self.settings.error_floor:
            return Finding(self.name, OK, now, **base, effect=effect, evidence=evidence,
                           reason=f"excess error rate {excess:.2%} below the floor")
        return Finding(self.name, REGRESSION, now, **base, effect=effect, evidence=evidence,
                       reason=f"canary errors {effect['canary_error_rate']:.2%} vs stable "
                              f"{effect['stable_error_rate']:.2%}")


class BurnRate:
    """Multiwindow multi-burn-rate SLO alerting on one stream of request outcomes."""

    name = "burn"

    def __init__(self, model: str, version: int | None, availability: float,
                 bucket_seconds: float = 60.0, min_short_window_requests: int = 10) -> None:
        self.model, self.version = model, version
        self.budget = 1 - availability
        self.bucket_seconds = bucket_seconds
        self.min_requests = min_short_window_requests
        # Bucket starts and cumulative (requests, errors) up to and including each bucket, so a
        # window's totals are one subtraction and a bisect: evaluating stays O(log n).
        self.starts: list[float] = []
        self.cum_requests: list[float] = []
        self.cum_errors: list[float] = []
        self.base = (0.0, 0.0)  # cumulative (requests, errors) before starts[0]
        self.horizon = max(long for _, _, long, _ in BURN_RULES)

    def observe(self, sample: Sample) -> None:
        """Probe outcomes of this version (``version`` None: fed through ``add`` instead)."""
        if (self.version is None or sample.metric != "latency_ms" or sample.model != self.model
                or sample.version != self.version):
            return
        failed = _failed(sample)
        if failed is None:
            return
        self.add(sample.t, 1, int(failed))

    def add(self, t: float, requests: float, errors: float) -> None:
        """Count requests (e.g. from Serving's request counter deltas) at time ``t``."""
        start = t - t % self.bucket_seconds
        if not self.starts or self.starts[-1] != start:
            self.starts.append(start)
            self.cum_requests.append(self.cum_requests[-1] if self.cum_requests else 0.0)
            self.cum_errors.append(self.cum_errors[-1] if self.cum_errors else 0.0)
        self.cum_requests[-1] += requests
        self.cum_errors[-1] += errors
        expired = bisect.bisect_left(self.starts, t - self.horizon - self.bucket_seconds)
        if expired > 1000:  # trim in chunks; cumulative sums stay valid as differences
            self.base = (self.cum_requests[expired - 1], self.cum_errors[expired - 1])
            del self.starts[:expired], self.cum_requests[:expired], self.cum_errors[:expired]

    def _ratio(self, now: float, window: float) -> tuple[float | None, float]:
        if not self.starts:
            return None, 0.0
        first = bisect.bisect_left(self.starts, now - window)
        if first >= len(self.starts):
            return None, 0.0
        before_requests, before_errors = ((self.cum_requests[first - 1], self.cum_errors[first - 1])
                                          if first > 0 else self.base)
        requests = self.cum_requests[-1] - before_requests
        errors = self.cum_errors[-1] - before_errors
        return (None if requests == 0 else errors / requests), requests

    def _basis(self, burns: dict[str, float | None], now: float,
               fired: tuple[str, float, int, int] | None = None) -> dict[str, Any]:
        """The rule nearest to firing (or the one that fired): its burn rate (the smaller of
        its long and short windows), the rate it needs, and the requests in its long window."""
        best: tuple[float, float, int] | None = None
        for _, rate, long, short in BURN_RULES if fired is None else (fired,):
            a, b = burns.get(f"burn_{long}s"), burns.get(f"burn_{short}s")
            if a is None or b is None:
                continue
            if best is None or min(a, b) / rate > best[0] / best[1]:
                best = (min(a, b), rate, long)
        if best is None:
            return {"statistic": "burn_rate", "value": None, "threshold": None, "samples": 0}
        return {"statistic": f"burn_rate_{best[2]}s", "value": best[0], "threshold": best[1],
                "samples": int(self._ratio(now, best[2])[1])}

    def evaluate(self, now: float) -> Finding:
        base: dict[str, Any] = {"model": self.model, "version": self.version,
                                "target": "slo" if self.version is not None else "slo:serving"}
        short_ratio, short_requests = self._ratio(now, 300)
        if short_ratio is None or short_requests < self.min_requests:
            return Finding(self.name, INCONCLUSIVE, now, **base,
                           evidence={"requests_5m": short_requests},
                           reason="too few requests in the last 5 minutes")
        burns: dict[str, float | None] = {}
        fired: tuple[str, float, int, int] | None = None
        for severity, rate, long, short in BURN_RULES:
            long_ratio, _ = self._ratio(now, long)
            short_r, _ = self._ratio(now, short)
            burn_long = None if long_ratio is None else long_ratio / self.budget
            burn_short = None if short_r is None else short_r / self.budget
            burns[f"burn_{long}s"] = None if burn_long is None else round(burn_long, 3)
            burns[f"burn_{short}s"] = None if burn_short is None else round(burn_short, 3)
            if fired is None and burn_long is not None and burn_short is not None and \
                    burn_long >= rate and burn_short >= rate:
                fired = (severity, rate, long, short)
        if fired is None:
            return Finding(self.name, OK, now, **base, effect=burns,
                           evidence={**self._basis(burns, now), "requests_5m": short_requests})
        severity, rate, long, short = fired
        return Finding(self.name, REGRESSION, now, **base, effect=burns, severity=severity,
                       evidence={**self._basis(burns, now, fired), "requests_5m": short_requests,
                                 "rule": f"{rate}x over {long}s and {short}s"},
                       reason=f"error budget burning at >= {rate}x over {long // 60} min and "
                              f"{short // 60} min")
