from __future__ import annotations

from tfwarden.core.series import SeriesWindows
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
