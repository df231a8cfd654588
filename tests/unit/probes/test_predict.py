from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web

from tests.fakes import FakePoster
from tests.helpers import free_port
from tests.unit import virtual_time
from tfwarden.core.errors import ConfigError, ProbeTransportError
from tfwarden.core.types import Sample
from tfwarden.probes.golden import GoldenRequest, load_golden, matches
from tfwarden.probes.predict import PredictHttp, RestPredictProbe, open_loop

GOLDEN = (GoldenRequest(request={"instances": [2.0]}, expected={"predictions": [3.0]},
                        tolerance=1e-3),)


def probe_with(handler, **kwargs) -> RestPredictProbe:  # type: ignore[no-untyped-def]
    return RestPredictProbe(FakePoster(handler), "http://tfs:8501", "m", golden=GOLDEN, **kwargs)


def send(probe: RestPredictProbe) -> Sample:
    return asyncio.run(probe.send())


def test_correct_response_is_ok_and_addresses_the_version() -> None:
    seen = []

    def handler(url: str, body: Any) -> tuple[int, Any]:
        seen.append((url, body))
        return 200, {"predictions": [3.0004]}

    sample = send(probe_with(handler, version=7))
    assert sample.ok and sample.labels == {"outcome": "ok", "status": "200"}
    assert sample.model == "m" and sample.version == 7 and sample.metric == "latency_ms"
    assert sample.value > 0
    assert seen == [("http://tfs:8501/v1/models/m/versions/7:predict", {"instances": [2.0]})]


def fail(kind: str) -> Callable[[str, Any], tuple[int, Any]]:
    def handler(url: str, body: Any) -> tuple[int, Any]:
        raise ProbeTransportError(kind, "no answer")
    return handler


@pytest.mark.parametrize("handler,outcome", [
    (lambda u, b: (503, {"error": "down"}), "error"),
    (lambda u, b: (200, {"predictions": [4.0]}), "incorrect"),
    (lambda u, b: (200, b"not json"), "unreachable"),
    (fail("timeout"), "timeout"),
    (fail("unreachable"), "unreachable"),
])
def test_failures_are_samples(handler, outcome: str) -> None:  # type: ignore[no-untyped-def]
    probe = probe_with(handler, label="canary")
    sample = send(probe)
    assert not sample.ok and sample.labels["outcome"] == outcome
    assert probe.url == "http://tfs:8501/v1/models/m/labels/canary:predict"
    assert sample.target == "canary"


class Answers:
    """A real HTTP server on 127.0.0.1 for PredictHttp: /ok, /down (503), /slow (1 s)."""

    async def __aenter__(self) -> str:
        async def handle(request: web.Request) -> web.StreamResponse:
            assert await request.json() == {"instances": [2.0]}
            if request.path == "/slow":
                await asyncio.sleep(1)
            if request.path == "/down":
                return web.json_response({"error": "down"}, status=503)
            return web.json_response({"predictions": [3.0]})

        app = web.Application()
        app.router.add_post("/{name}", handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


def test_predict_http_answers_statuses_timeouts_and_refusals() -> None:
    async def scenario() -> list[Any]:
        client = PredictHttp(max_connections=2)
        body = json.dumps({"instances": [2.0]}).encode()
        out: list[Any] = []
        try:
            async with Answers() as base:
                out.append(await client.post(f"{base}/ok", body, 2))
                out.append((await client.post(f"{base}/down", body, 2))[0])
                for path in ("/slow", "/refused"):
                    url = f"{base}/slow" if path == "/slow" else f"http://127.0.0.1:{free_port()}/"
                    try:
                        await client.post(url, body, 0.2)
                    except ProbeTransportError as exc:
                        out.append(exc.kind)
                many = [client.post(f"{base}/ok", body, 2) for _ in range(6)]  # 3x the pool
                out.append(sorted(status for status, _ in await asyncio.gather(*many)))
        finally:
            await client.close()
        return out

    ok, down, slow, refused, many = asyncio.run(scenario())
    assert ok[0] == 200 and json.loads(ok[1]) == {"predictions": [3.0]}
    assert (down, slow, refused) == (503, "timeout", "unreachable")
    assert many == [200] * 6


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


def test_open_loop_reports_how_late_each_send_began() -> None:
    late: list[float] = []

    async def send() -> None:
        pass

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        hog = cast(virtual_time.VirtualTimeLoop, loop)

        def block_the_loop() -> None:  # a 30 ms blocking call just before the 0.15 s slot
            hog.now += 0.03

        loop.call_at(0.14, block_the_loop)
        task = asyncio.create_task(open_loop(20, 100, send, on_late=late.append))
        await asyncio.sleep(0.31)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    virtual_time.run(scenario())
    assert len(late) == 7  # slots 0 ... 0.30
    assert [round(x, 9) for x in late] == [0, 0, 0, 0.02, 0, 0, 0]


def test_loops_of_one_phase_share_their_slots_whenever_they_start() -> None:
    starts: dict[str, list[float]] = {"a": [], "b": [], "other": []}

    def sender(name: str) -> Callable[[], Coroutine[Any, Any, None]]:
        async def send() -> None:
            starts[name].append(round(asyncio.get_running_loop().time(), 9))
        return send

    async def scenario() -> None:
        a = asyncio.create_task(open_loop(10, 8, sender("a"), phase=0.25))
        await asyncio.sleep(0.33)  # b starts later (a canary's version appears), same phase
        b = asyncio.create_task(open_loop(10, 8, sender("b"), phase=0.25))
        other = asyncio.create_task(open_loop(10, 8, sender("other"), phase=0.75))
        await asyncio.sleep(0.3)
        for task in (a, b, other):
            task.cancel()
        await asyncio.gather(a, b, other, return_exceptions=True)

    virtual_time.run(scenario())
    assert starts["a"][:4] == [0.025, 0.125, 0.225, 0.325]
    assert starts["b"] == [t for t in starts["a"] if t > 0.33]  # the same instants as a
    assert starts["other"][0] == 0.375 and starts["b"][0] == 0.425


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
