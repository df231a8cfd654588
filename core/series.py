"""Bounded in-memory series windows per (model, version, metric) or (target, metric).

Prometheus is the long-term store; these windows only hold what the daemon reads back (raw
samples, not histogram buckets, so quantiles stay exact): the baseline of a new stable version,
the status page's last hour, /debug/probes' last minute. Each window holds at most
``max_samples`` samples, and samples older than ``max_age_seconds`` are dropped on append.

A window is stored as columns, not as Sample objects: times and values in float arrays, the ok
flags in a bytearray, and one reference per sample to an interned (source, labels) pair (probe
labels take a handful of values). That is about 26 bytes a sample instead of about 85 for a
Sample with its labels dict (tracemalloc), an hour of 1,000 probed versions at 1 request/s (3.6
million samples) in about 95 MB; and none of it is an object the garbage collector walks (two
per Sample before: with millions held, every full collection stalled the event loop for
hundreds of milliseconds). Reads build Samples for what they return.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from threading import Lock

from tfwarden.core.types import Sample

SeriesKey = tuple[str, int | None, str, str]  # model, version, target, metric
OLD_RUN = 64  # samples in a row before a window's ``since``: everything further back is older
MAX_INTERNED = 4096  # distinct (source, labels) pairs shared between samples; more are kept as is
COMPACT_AT = 4096  # dropped samples at a window's head before the columns are shifted


def key_of(sample: Sample) -> SeriesKey:
    return (sample.model, sample.version, sample.target, sample.metric)


Meta = tuple[str, Mapping[str, str]]  # source, labels


class _Window:
    """One series as columns; ``head`` is the index of its oldest live sample."""

    __slots__ = ("times", "values", "oks", "metas", "head", "max_samples")

    def __init__(self, max_samples: int) -> None:
        self.times, self.values = array("d"), array("d")
        self.oks, self.metas = bytearray(), list[Meta]()
        self.head, self.max_samples = 0, max_samples

    def __len__(self) -> int:
        return len(self.times) - self.head

    def append(self, t: float, value: float, ok: bool, meta: Meta, horizon: float) -> None:
        self.times.append(t)
        self.values.append(value)
        self.oks.append(ok)
        self.metas.append(meta)
        times, head, end = self.times, self.head, len(self.times)
        head = max(head, end - self.max_samples)
        while head < end and times[head] < horizon:
            head += 1
        self.head = head
        if head >= COMPACT_AT and head * 2 >= end:
            for column in (self.times, self.values, self.oks, self.metas):
                del column[:head]
            self.head = 0

    def sample(self, index: int, key: SeriesKey) -> Sample:
        source, labels = self.metas[index]
        return Sample(t=self.times[index], source=source, metric=key[3], value=self.values[index],
                      model=key[0], version=key[1], target=key[2], ok=bool(self.oks[index]),
                      labels=labels)


class SeriesWindows:
    """All windows of a daemon; thread-safe, bounded in count and age."""

    def __init__(self, max_samples: int = 20_000, max_age_seconds: float = 6 * 3600,
                 max_series: int = 10_000) -> None:
        self.max_samples = max_samples
        self.max_age_seconds = max_age_seconds
        self.max_series = max_series
        self._series: dict[SeriesKey, _Window] = {}
        self._metas: dict[tuple[str, tuple[tuple[str, str], ...]], Meta] = {}
        self._lock = Lock()
        self.dropped_series = 0

    def _meta(self, sample: Sample) -> Meta:
        key = (sample.source, tuple(sample.labels.items()))
        meta = self._metas.get(key)
        if meta is None:
            meta = (sample.source, dict(sample.labels))
            if len(self._metas) < MAX_INTERNED:
                self._metas[key] = meta
        return meta

    def add(self, sample: Sample) -> None:
        key = key_of(sample)
        with self._lock:
            window = self._series.get(key)
            if window is None:
                if len(self._series) >= self.max_series:
                    self.dropped_series += 1
                    return
                window = self._series[key] = _Window(self.max_samples)
            window.append(sample.t, sample.value, sample.ok, self._meta(sample),
                          sample.t - self.max_age_seconds)

    def window(self, model: str, version: int | None, metric: str, target: str = "",
               since: float | None = None) -> list[Sample]:
        key = (model, version, target, metric)
        with self._lock:
            window = self._series.get(key)
            if window is None:
                return []
            return [window.sample(i, key) for i in range(window.head, len(window.times))
                    if since is None or window.times[i] >= since]

    def recent(self, model: str, version: int | None, metric: str, target: str, since: float,
               slack_seconds: float) -> list[Sample]:
        """The samples since ``since``, read from the newest back: samples are appended about
        in time order (a probe's sample comes when its answer does), so reading stops after
        ``OLD_RUN`` samples in a row older than ``since - slack_seconds``; the window is never
        copied whole."""
        horizon = since - slack_seconds
        key = (model, version, target, metric)
        tail: list[Sample] = []
        old = 0
        with self._lock:
            window = self._series.get(key)
            if window is None:
                return []
            times = window.times
            for index in range(len(times) - 1, window.head - 1, -1):
                t = times[index]
                if t < horizon:
                    old += 1
                    if old >= OLD_RUN:
                        break
                    continue
                old = 0
                if t >= since:
                    tail.append(window.sample(index, key))
        tail.reverse()
        return tail

    def sample_count(self) -> int:
        """Samples held in all windows."""
        with self._lock:
            return sum(len(window) for window in self._series.values())

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


class BucketHistory:
    """Per-version quantile buckets of one metric, aligned to multiples of ``bucket_seconds``.

    Every target of a version is pooled (version and label probes alike); empty buckets are left
    out; quantiles are nearest-rank over the bucket's successful samples. A bucket that ended
    ``settle_seconds`` ago is kept as it was computed, so a call reads only the samples of the
    last few buckets (the first call for a version reads its whole horizon). Thread-safe.
    """

    def __init__(self, windows: SeriesWindows, metric: str, bucket_seconds: float,
                 quantiles: tuple[float, ...], settle_seconds: float = 60.0) -> None:
        self.windows, self.metric = windows, metric
        self.bucket_seconds, self.quantiles, self.settle_seconds = \
            bucket_seconds, quantiles, settle_seconds
        self._settled: dict[tuple[str, int], dict[int, Bucket]] = {}
        self._settled_upto: dict[tuple[str, int], int] = {}  # first index not settled yet
        self._lock = Lock()

    def buckets(self, model: str, since: float, now: float) -> dict[int, list[Bucket]]:
        """The buckets of each version of ``model`` from the one holding ``since`` to ``now``,
        oldest first."""
        width = self.bucket_seconds
        first, settled_end = math.floor(since / width), math.floor((now - self.settle_seconds) / width)
        targets: dict[int, list[str]] = {}
        for key_model, version, target, key_metric in self.windows.keys():
            if key_model == model and key_metric == self.metric and version is not None:
                targets.setdefault(version, []).append(target)
        out: dict[int, list[Bucket]] = {}
        with self._lock:
            for key in [k for k in self._settled if k[0] == model and k[1] not in targets]:
                del self._settled[key], self._settled_upto[key]  # the version's windows are gone
            for version, names in sorted(targets.items()):
                key = (model, version)
                settled = self._settled.setdefault(key, {})
                for index in [i for i in settled if i < first]:
                    del settled[index]
                start = max(first, self._settled_upto.get(key, first))
                cut: dict[int, list[Sample]] = {}
                for target in names:
                    for sample in self.windows.recent(model, version, self.metric, target,
                                                      start * width, self.settle_seconds):
                        cut.setdefault(math.floor(sample.t / width), []).append(sample)
                fresh = {i: _bucket(i * width, cut[i], self.quantiles) for i in cut}
                settled.update({i: b for i, b in fresh.items() if i < settled_end})
                self._settled_upto[key] = max(start, settled_end)
                merged = {**settled, **{i: b for i, b in fresh.items() if i >= settled_end}}
                if merged:
                    out[version] = [merged[i] for i in sorted(merged)]
        return out


def _bucket(start: float, samples: list[Sample], quantiles: tuple[float, ...]) -> Bucket:
    ok = sorted(s.value for s in samples if s.ok)
    picked = tuple(ok[max(0, min(len(ok) - 1, math.ceil(q * len(ok)) - 1))] if ok else None
                   for q in quantiles)
    return Bucket(start, picked, len(samples), sum(1 for s in samples if not s.ok))
