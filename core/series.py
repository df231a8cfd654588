"""Bounded in-memory series windows per (model, version, metric) or (target, metric).

Prometheus is the long-term store; these windows only hold what detectors need (raw samples, not
histogram buckets, so quantiles stay exact). Each window is a ring buffer of at most
``max_samples`` samples, and samples older than ``max_age_seconds`` are dropped on append.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
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
