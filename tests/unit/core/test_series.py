from __future__ import annotations

import tracemalloc

from tfwarden.core.series import COMPACT_AT, BucketHistory, SeriesWindows
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


def test_windows_keep_order_and_labels_across_compaction() -> None:
    windows = SeriesWindows(max_samples=3 * COMPACT_AT)
    outcomes = ("ok", "error", "timeout")
    for i in range(10 * COMPACT_AT):  # the head is compacted away several times
        outcome = outcomes[i % 3]
        windows.add(Sample(t=float(i), source="predict", metric="latency_ms", value=i * 0.5,
                           model="m", version=1, ok=outcome == "ok",
                           labels={"outcome": outcome, "status": str(i % 3)}))
    kept = windows.window("m", 1, "latency_ms")
    assert len(kept) == 3 * COMPACT_AT == windows.sample_count()
    first = 7 * COMPACT_AT
    assert [s.t for s in kept] == [float(i) for i in range(first, 10 * COMPACT_AT)]
    assert all(s.value == s.t * 0.5 for s in kept)
    assert [(s.ok, dict(s.labels)) for s in kept[:3]] == [
        (outcomes[(first + j) % 3] == "ok",
         {"outcome": outcomes[(first + j) % 3], "status": str((first + j) % 3)}) for j in range(3)]
    assert windows.recent("m", 1, "latency_ms", "", since=kept[-5].t, slack_seconds=1) == kept[-5:]


def test_a_held_sample_costs_tens_of_bytes_not_a_sample_object() -> None:
    windows = SeriesWindows()
    models = [f"m{i}" for i in range(50)]
    count = 50 * 2000
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(count):  # as a probe makes them: a new Sample and labels dict each time
        windows.add(Sample(t=1e9 + i, source="predict", metric="latency_ms", value=1.0 + i % 7,
                           model=models[i % 50], version=1, ok=i % 10 != 0,
                           labels={"outcome": "ok" if i % 10 else "error", "status": "200"}))
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert held / count < 40  # kept as Sample objects, each with its labels dict: ~85


def test_series_count_is_bounded() -> None:
    windows = SeriesWindows(max_series=2)
    for version in range(5):
        windows.add(latency(1.0, 1.0, version=version))
    assert len(windows.keys()) == 2 and windows.dropped_series == 3


def test_buckets_pool_targets_and_give_exact_quantiles() -> None:
    windows = SeriesWindows()
    for i in range(100):  # version 1 through its label and its version address, minute 0
        windows.add(Sample(t=1020.0 + i * 0.5, source="predict", metric="latency_ms",
                           value=float(i + 1), model="m", version=1,
                           target="stable" if i % 2 else ""))
    windows.add(Sample(t=1090.0, source="predict", metric="latency_ms", value=500.0, model="m",
                       version=1, ok=False))  # minute 1: one failure, no success
    windows.add(Sample(t=1030.0, source="predict", metric="latency_ms", value=7.0, model="m",
                       version=2))
    windows.add(Sample(t=1030.0, source="predict", metric="latency_ms", value=9.0, model="other",
                       version=1))
    windows.add(Sample(t=900.0, source="predict", metric="latency_ms", value=9.0, model="m",
                       version=3))  # before the horizon
    buckets = BucketHistory(windows, "latency_ms", 60.0, (0.5, 0.99)).buckets("m", 1021.0, 1200.0)
    assert sorted(buckets) == [1, 2]
    first, second = buckets[1]
    assert (first.start, first.quantiles, first.count, first.failed) == (1020.0, (50.0, 99.0), 100, 0)
    assert (second.start, second.quantiles, second.count, second.failed) == (1080.0, (None, None), 1, 1)
    assert buckets[2][0].quantiles == (7.0, 7.0)


def test_buckets_read_only_what_is_new_and_match_a_fresh_computation() -> None:
    windows = SeriesWindows()
    history = BucketHistory(windows, "latency_ms", 60.0, (0.5, 0.9, 0.99))
    t, value = 0.0, 1.0
    for step in range(20):  # 20 renders, 30 s apart, samples arriving in between
        for _ in range(60):
            t += 0.5
            value = (value * 7.3) % 97
            windows.add(latency(t, value, version=1 + step % 2))
        now = t + 0.2
        assert history.buckets("m", now - 600, now) == \
            BucketHistory(windows, "latency_ms", 60.0, (0.5, 0.9, 0.99)).buckets("m", now - 600, now)
    reads: list[float] = []
    recent = windows.recent

    def counting(*args: object) -> list[Sample]:
        found = recent(*args)  # type: ignore[arg-type]
        reads.append(len(found))
        return found

    windows.recent = counting  # type: ignore[method-assign]
    history.buckets("m", now - 600, now)
    assert sum(reads) < 200  # the last buckets only, not the 1,200 samples of 10 minutes


def test_recent_reads_from_the_newest_back() -> None:
    windows = SeriesWindows()
    for i in range(1000):
        windows.add(latency(float(i), float(i)))
    windows.add(latency(900.5, -1.0))  # an answer that came late, or a clock stepped back
    assert [s.value for s in windows.recent("m", 1, "latency_ms", "", 995.0, 10.0)] == \
        [995.0, 996.0, 997.0, 998.0, 999.0]
    assert [s.value for s in windows.recent("m", 1, "latency_ms", "", 900.0, 10.0)][:2] == \
        [900.0, 901.0]
    assert -1.0 in [s.value for s in windows.recent("m", 1, "latency_ms", "", 900.0, 200.0)]
    assert windows.recent("m", 7, "latency_ms", "", 0.0, 1.0) == []
