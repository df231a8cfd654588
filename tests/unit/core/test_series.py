from __future__ import annotations

from tfwarden.core.series import SeriesWindows, version_buckets
from tfwarden.core.types import Sample


def latency(t: float, value: float, version: int = 1) -> Sample:
    return Sample(t=t, source="predict", metric="latency_ms", value=value, model="m",
                  version=version)


def test_windows_are_bounded_by_count_and_age() -> None:
    windows = SeriesWindows(max_samples=5, max_age_seconds=100)
    for i in range(10):
        windows.add(latency(float(i), float(i)))
    assert [s.value for s in windows.window("m", 1, "latency_ms")] == [5, 6, 7, 8, 9]
    windows.add(latency(200.0, 1.0))
    assert [s.t for s in windows.window("m", 1, "latency_ms")] == [200.0]


def test_windows_are_per_version_and_filterable_by_time() -> None:
    windows = SeriesWindows()
    windows.add(latency(1.0, 10.0, version=1))
    windows.add(latency(2.0, 20.0, version=2))
    windows.add(latency(3.0, 30.0, version=2))
    assert [s.value for s in windows.window("m", 2, "latency_ms", since=2.5)] == [30.0]
    windows.forget("m", 2)
    assert windows.window("m", 2, "latency_ms") == []
    assert len(windows.keys()) == 1


def test_series_count_is_bounded() -> None:
    windows = SeriesWindows(max_series=2)
    for version in range(5):
        windows.add(latency(1.0, 1.0, version=version))
    assert len(windows.keys()) == 2 and windows.dropped_series == 3


def test_version_buckets_pool_targets_and_give_exact_quantiles() -> None:
    windows = SeriesWindows()
    for i in range(100):  # version 1 through its label and its version address, minute 0
        windows.add(Sample(t=1000.0 + i * 0.5, source="predict", metric="latency_ms",
                           value=float(i + 1), model="m", version=1,
                           target="stable" if i % 2 else ""))
    windows.add(Sample(t=1070.0, source="predict", metric="latency_ms", value=500.0, model="m",
                       version=1, ok=False))  # minute 1: one failure, no success
    windows.add(Sample(t=1010.0, source="predict", metric="latency_ms", value=7.0, model="m",
                       version=2))
    windows.add(Sample(t=1010.0, source="predict", metric="latency_ms", value=9.0, model="other",
                       version=1))
    windows.add(Sample(t=900.0, source="predict", metric="latency_ms", value=9.0, model="m",
                       version=3))  # before the horizon
    buckets = version_buckets(windows, "m", "latency_ms", 1000.0, 60.0, (0.5, 0.99))
    assert sorted(buckets) == [1, 2]
    first, second = buckets[1]
    assert (first.start, first.quantiles, first.count, first.failed) == (1000.0, (50.0, 99.0), 100, 0)
    assert (second.start, second.quantiles, second.count, second.failed) == (1060.0, (None, None), 1, 1)
    assert buckets[2][0].quantiles == (7.0, 7.0)
