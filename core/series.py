"""Bounded in-memory series windows per (model, version, metric) or (target, metric).

Prometheus is the long-term store; these windows only hold what detectors need (raw samples, not
histogram buckets, so quantiles stay exact). Each window is a ring buffer of at most
``max_samples`` samples, and samples older than ``max_age_seconds`` are dropped on append.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from threading import Lock

from tfwarden.core.types import Sample

SeriesKey = tuple[str, int | None, str, str]  # model, version, target, metric


def key_of(sample: Sample) -> SeriesKey:
    return (sample.model, sample.version, sample.target, sample.metric)


class SeriesWindows:
    """All windows of a daemon; thread-safe, bounded in count and age."""

    def __init__(self, max_samples: int = 20_000, max_age_seconds: float = 6 * 3600,
                 max_series: int = 10_000) -> None:
        self.max_samples = max_samples
        self.max_age_seconds = max_age_seconds
        self.max_series = max_series
        self._series: dict[SeriesKey, deque[Sample]] = {}
        self._lock = Lock()
        self.dropped_series = 0

    def add(self, sample: Sample) -> None:
        key = key_of(sample)
        with self._lock:
            window = self._series.get(key)
            if window is None:
                if len(self._series) >= self.max_series:
                    self.dropped_series += 1
                    return
                window = self._series[key] = deque(maxlen=self.max_samples)
            window.append(sample)
            horizon = sample.t - self.max_age_seconds
            while window and window[0].t < horizon:
                window.popleft()

    def window(self, model: str, version: int | None, metric: str, target: str = "",
               since: float | None = None) -> list[Sample]:
        with self._lock:
            window = self._series.get((model, version, target, metric))
            samples = list(window) if window else []
        if since is not None:
            samples = [s for s in samples if s.t >= since]
        return samples

    def keys(self) -> list[SeriesKey]:
        with self._lock:
            return list(self._series)

    def forget(self, model: str, version: int | None) -> None:
        """Drop every window of one model version (it was unloaded for good)."""
        with self._lock:
            for key in [k for k in self._series if k[0] == model and k[1] == version]:
                del self._series[key]

    def __iter__(self) -> Iterator[SeriesKey]:
        return iter(self.keys())


@dataclass(frozen=True)
class Bucket:
    """The samples of one version in one time bucket: exact quantiles of the successful ones
    (None when none succeeded), and how many there were in all and how many failed."""

    start: float
    quantiles: tuple[float | None, ...]
    count: int
    failed: int


def version_buckets(windows: SeriesWindows, model: str, metric: str, since: float,
                    bucket_seconds: float, quantiles: tuple[float, ...]) -> dict[int, list[Bucket]]:
    """Per version of ``model``: its ``metric`` samples since ``since`` (every target pooled:
    version and label probes alike) cut into ``bucket_seconds`` buckets, oldest first; empty
    buckets (and versions without samples) are left out. Quantiles are nearest-rank over the
    bucket's successful samples."""
    pooled: dict[int, list[Sample]] = {}
    for key_model, version, target, key_metric in windows.keys():
        if key_model == model and key_metric == metric and version is not None:
            pooled.setdefault(version, []).extend(
                windows.window(model, version, metric, target, since=since))
    out: dict[int, list[Bucket]] = {}
    for version, samples in sorted(pooled.items()):
        if not samples:
            continue
        cut: dict[int, list[Sample]] = {}
        for sample in samples:
            cut.setdefault(int((sample.t - since) // bucket_seconds), []).append(sample)
        out[version] = [_bucket(since + index * bucket_seconds, cut[index], quantiles)
                        for index in sorted(cut)]
    return out


def _bucket(start: float, samples: list[Sample], quantiles: tuple[float, ...]) -> Bucket:
    ok = sorted(s.value for s in samples if s.ok)
    picked = tuple(ok[max(0, min(len(ok) - 1, math.ceil(q * len(ok)) - 1))] if ok else None
                   for q in quantiles)
    return Bucket(start, picked, len(samples), sum(1 for s in samples if not s.ok))
