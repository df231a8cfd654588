"""The capture reservoirs stay bounded and sample uniformly."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.fakes import FakeServingClient
from tfwarden.core.errors import CaptureRejected
from tfwarden.daemon.recorder import Recorder
from tfwarden.probes.capture import CapturedModel, CaptureService, CaptureSettings, Reservoir


def test_reservoir_is_bounded_and_uniform() -> None:
    reservoir = Reservoir(capacity=1000, seed=1)
    for start in range(0, 100_000, 1000):
        reservoir.add([[float(i)] for i in range(start, start + 1000)])
    assert len(reservoir.rows) == 1000 and reservoir.seen == 100_000
    mean = sum(float(r[0]) for r in reservoir.rows) / 1000
    assert abs(mean - 50_000) < 3 * 28_868 / 1000 ** 0.5  # uniform over everything seen


def service(**settings: int) -> tuple[CaptureService, Recorder, FakeServingClient]:
    client, metrics = FakeServingClient({1: "AVAILABLE", 2: "AVAILABLE"}), Recorder()
    return CaptureService(CaptureSettings(**settings), {"m": CapturedModel(client, drift=True)},
                          metrics), metrics, client


def samples(rows: int, version: int | None = None) -> bytes:
    body: dict[str, object] = {"features": ["x"], "rows": [[0.5]] * rows}
    if version is not None:
        body["version"] = version
    return json.dumps(body).encode()


def test_reservoirs_exist_only_for_versions_the_server_has() -> None:
    capture, _, client = service()

    async def scenario() -> None:
        assert (await capture.receive("m", samples(3, 2), "10.0.0.1", "samples"))[
            "accepted_rows"] == 3
        with pytest.raises(CaptureRejected, match=r"has no version 99 on its server \(it has "
                                                  r"\[1, 2\]\)") as refused:
            await capture.receive("m", samples(3, 99), "10.0.0.1", "samples")
        assert refused.value.status == 404
        await capture.receive("m", samples(1, 2), "10.0.0.1", "samples")
        # read once, read again for the unknown version, then cached for the known one
        assert [c for c in client.calls if c[0] == "model_status"] == [("model_status", "m")] * 2

    asyncio.run(scenario())
    assert sorted(v for (_, v) in capture.reservoirs) == [2]


def test_refusals_for_unknown_models_add_no_metric_series() -> None:
    capture, metrics, _ = service()
    for name in ("a", "b", "c"):
        with pytest.raises(CaptureRejected):
            asyncio.run(capture.receive(name, samples(1), "10.0.0.1", "samples"))
    assert metrics.registry.get_sample_value(
        "tfwarden_capture_rows_total", {"model": "", "outcome": "rejected", "status": "404"}) == 3
    assert metrics.registry.get_sample_value(
        "tfwarden_capture_rows_total", {"model": "a", "outcome": "rejected", "status": "404"}) \
        is None


def test_rate_buckets_of_idle_clients_are_forgotten() -> None:
    capture, _, _ = service(client_rows_per_second=10)
    now = [1000.0]
    capture.buckets.clock = lambda: now[0]
    for i in range(50):
        asyncio.run(capture.receive("m", samples(1), f"10.0.{i}.1", "samples"))
    assert len(capture.buckets) == 50
    now[0] += capture.buckets.idle_seconds + 1
    asyncio.run(capture.receive("m", samples(1), "10.9.9.9", "samples"))
    assert len(capture.buckets) == 1 and "10.9.9.9" in capture.buckets
    capture.buckets.max_clients = 5
    for i in range(20):
        asyncio.run(capture.receive("m", samples(1), f"10.1.{i}.1", "samples"))
    assert len(capture.buckets) <= 5
