from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import httpx
import pytest

from tests.unit import virtual_time
from tfwarden.core.errors import ConfigError
from tfwarden.probes.golden import GoldenRequest, load_golden, matches
from tfwarden.probes.predict import RestPredictProbe, open_loop

GOLDEN = (GoldenRequest(request={"instances": [2.0]}, expected={"predictions": [3.0]},
                        tolerance=1e-3),)


def probe_with(handler, **kwargs) -> tuple[RestPredictProbe, httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return RestPredictProbe(client, "http://tfs:8501", "m", golden=GOLDEN, **kwargs), client


def send(probe: RestPredictProbe, client: httpx.AsyncClient):  # type: ignore[no-untyped-def]
    async def go():  # type: ignore[no-untyped-def]
        try:
            return await probe.send()
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_correct_response_is_ok_and_addresses_the_version() -> None:
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), json.loads(request.content)))
        return httpx.Response(200, json={"predictions": [3.0004]})

    probe, client = probe_with(handler, version=7)
    sample = send(probe, client)
    assert sample.ok and sample.labels == {"outcome": "ok", "status": "200"}
    assert sample.model == "m" and sample.version == 7 and sample.metric == "latency_ms"
    assert sample.value > 0
    assert seen == [("http://tfs:8501/v1/models/m/versions/7:predict", {"instances": [2.0]})]


@pytest.mark.parametrize("handler,outcome", [
    (lambda r: httpx.Response(503, json={"error": "down"}), "error"),
    (lambda r: httpx.Response(200, json={"predictions": [4.0]}), "incorrect"),
    (lambda r: httpx.Response(200, text="not json"), "unreachable"),
])
def test_failures_are_samples(handler, outcome: str) -> None:  # type: ignore[no-untyped-def]
    probe, client = probe_with(handler, label="canary")
    sample = send(probe, client)
    assert not sample.ok and sample.labels["outcome"] == outcome
    assert probe.url == "http://tfs:8501/v1/models/m/labels/canary:predict"
    assert sample.target == "canary"


def test_timeout_and_connection_errors_do_not_raise() -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    probe, client = probe_with(timeout)
    assert send(probe, client).labels["outcome"] == "timeout"
    probe, client = probe_with(refused)
    assert send(probe, client).labels["outcome"] == "unreachable"


def test_open_loop_keeps_its_rate_when_responses_are_slow() -> None:
    starts: list[float] = []
    skipped: list[int] = []

    async def slow_send() -> None:
        starts.append(asyncio.get_running_loop().time())
        await asyncio.sleep(0.35)  # 7x the interval: a closed loop would send 3 in 1 s

    async def scenario() -> None:
        task = asyncio.create_task(open_loop(20, 100, slow_send, skipped.append))
        await asyncio.sleep(1.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    virtual_time.run(scenario())
    assert len(starts) == 21  # t = 0, 0.05, ..., 1.0: every slot, none waiting for an answer
    assert [round(b - a, 9) for a, b in itertools.pairwise(starts)] == [0.05] * 20
    assert sum(skipped) == 0


def test_open_loop_skips_slots_beyond_max_in_flight() -> None:
    skipped: list[int] = []
    started = 0

    async def stuck() -> None:
        nonlocal started
        started += 1
        await asyncio.sleep(10)

    async def scenario() -> None:
        task = asyncio.create_task(open_loop(50, 3, stuck, skipped.append))
        await asyncio.sleep(0.51)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    virtual_time.run(scenario())
    assert started == 3
    assert sum(skipped) == 26 - 3  # the slots at t = 0, 0.02, ..., 0.5 the stuck calls held


def test_golden_file_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "golden.jsonl"
    path.write_text('{"request": {"instances": [1]}}\n\n{"request": 5}\n{nope\n')
    with pytest.raises(ConfigError) as caught:
        load_golden(path)
    problems = [str(p) for p in caught.value.problems]
    assert problems[0].startswith("request (line 3): ")
    assert problems[1].startswith("line 4: invalid JSON")


def test_golden_file_round_trip_and_matching(tmp_path: Path) -> None:
    path = tmp_path / "golden.jsonl"
    path.write_text('{"request": {"inputs": [0.0]}, "expected": {"outputs": [2.0]}, '
                    '"tolerance": 0.01}\n')
    (golden,) = load_golden(path)
    assert matches(golden.expected, {"outputs": [2.005]}, golden.tolerance)
    assert not matches(golden.expected, {"outputs": [2.5]}, golden.tolerance)
    assert not matches(golden.expected, {"outputs": [2.0], "extra": 1}, golden.tolerance)
    assert not matches({"a": True}, {"a": 1}, 0.1)
