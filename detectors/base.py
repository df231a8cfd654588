"""The detector interface and the sequential-test building blocks the detectors share."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

from tfwarden.core.types import Finding, Sample


class Detector(Protocol):
    """Judges one model version (or memory target) from the samples it is fed.

    ``observe`` takes samples in time order; ``evaluate(now)`` returns the current Finding and
    is cheap enough to call after every sample. Same samples in, same findings out.
    """

    name: str

    def observe(self, sample: Sample) -> None: ...

    def evaluate(self, now: float) -> Finding: ...


DEFAULT_BETS = (0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.9)


class MixtureECusum:
    """A mixture of e-CUSUM detectors over bets ``lambda`` (Shin, Ramdas & Rinaldo, e-detectors).

    Feed ``w`` in [-1, 1] with conditional mean <= 0 while nothing changed (e.g. a symmetric
    score of an exchangeable pair). Each component keeps ``max(M, 1) * (1 + lambda * w)``; the
    average of components is an e-detector, so alarming when it reaches ``threshold`` gives an
    average run length to a false alarm of at least ``threshold`` observations, however often it
    is checked. After a change with E[w] = mu > 0 it grows at about mu^2 / (2 E[w^2]) nats per
    observation, close to the Lorden bound.

    With ``restart=False`` the components never restart at 1: each is then a test
    supermartingale (a betting martingale), and so is their average, so by Ville's inequality
    the chance that it *ever* reaches ``threshold`` under no change is at most
    ``1 / threshold``: a bound on false alarms over the whole run rather than a run length,
    for comparisons with a start (an edge rollout), where a change is there from the start.
    """

    def __init__(self, threshold: float, bets: Sequence[float] = DEFAULT_BETS,
                 restart: bool = True) -> None:
        self.log_threshold = math.log(threshold)
        self.restart = restart
        self.bets = tuple(bets)
        self.log_m = [0.0] * len(self.bets)
        self.starts = [0] * len(self.bets)
        self.n = 0

    def update(self, w: float) -> None:
        w = max(-1.0, min(1.0, w))
        for i, bet in enumerate(self.bets):
            if self.restart and self.log_m[i] <= 0.0:
                self.log_m[i], self.starts[i] = 0.0, self.n
            self.log_m[i] += math.log1p(bet * w)
        self.n += 1

    @property
    def change_index(self) -> int:
        """Index of the first observation after the estimated change (the CUSUM restart of
        the leading component)."""
        best = max(range(len(self.bets)), key=lambda i: self.log_m[i])
        return self.starts[best]

    @property
    def log_e(self) -> float:
        """log of the mixture e-detector (average over bets)."""
        top = max(self.log_m)
        return top + math.log(sum(math.exp(v - top) for v in self.log_m) / len(self.log_m))

    @property
    def alarmed(self) -> bool:
        return self.log_e >= self.log_threshold


def quantile(ordered: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of already sorted values."""
    if not ordered:
        return math.nan
    pos = q * (len(ordered) - 1)
    low = int(math.floor(pos))
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median_ci(ordered: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of a median from order statistics (normal
    approximation to the binomial)."""
    n = len(ordered)
    if n < 6:
        return (math.nan, math.nan)
    z = _z(1 - (1 - confidence) / 2)
    half = z * math.sqrt(n) / 2
    low = max(0, int(math.floor(n / 2 - half)) - 1)
    high = min(n - 1, int(math.ceil(n / 2 + half)))
    return (ordered[low], ordered[high])


def _z(p: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(p)


def wilson(events: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion."""
    if n == 0:
        return (math.nan, math.nan)
    z = _z(1 - (1 - confidence) / 2)
    p = events / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))
