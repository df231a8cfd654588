"""Predict probe over REST: golden requests to one model version or label, open-loop.

``RestPredictProbe.send`` makes one request and returns a latency Sample (client-side, monotonic
clock) whose ``ok`` says whether the call succeeded with the expected outputs; it never raises.
``open_loop`` calls a sender at a fixed rate without waiting for earlier calls (a slow response
never delays the next send: no coordinated omission), with a bound on calls in flight.

The requests go through ``PredictHttp``, one aiohttp session with a bounded pool shared by every
REST predict probe. It was chosen by measurement (bench/http_clients.py, BENCHMARKS.md): httpx
spent about 1.8 ms of CPU per request in its pool's bookkeeping, aiohttp about 0.4 ms, and the
probe path is the daemon's hot path (one request per target per interval). The daemon's other,
rarer HTTP calls (alerts, scrapes, PromQL) stay on httpx.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
import orjson

from tfwarden.core.clock import Clock, SystemClock
from tfwarden.core.errors import ProbeTransportError
from tfwarden.core.settings import default
from tfwarden.core.types import Sample
from tfwarden.probes.golden import DEFAULT_GOLDEN, GoldenRequest, matches
from tfwarden.probes.settings import PredictProbeSettings

SOURCE = "predict"
JSON_HEADERS = {"Content-Type": "application/json"}


class JsonPoster(Protocol):
    """POSTs a JSON body; returns (HTTP status, body) or raises ProbeTransportError."""

    async def post(self, url: str, body: bytes, timeout: float) -> tuple[int, bytes]: ...


class PredictHttp:
    """The REST predict probes' HTTP client: one aiohttp session (opened on first use, in the
    running loop) with at most ``max_connections`` keep-alive connections; a request beyond them
    waits for one (inside its timeout)."""

    def __init__(self, max_connections: int = 200) -> None:
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0),
                cookie_jar=aiohttp.DummyCookieJar(), raise_for_status=False)
        return self._session

    async def post(self, url: str, body: bytes, timeout: float) -> tuple[int, bytes]:
        limit = self._timeouts.get(timeout)
        if limit is None:
            limit = self._timeouts[timeout] = aiohttp.ClientTimeout(total=timeout)
        try:
            async with self._open().post(url, data=body, headers=JSON_HEADERS,
                                         timeout=limit) as response:
                return response.status, await response.read()
        except TimeoutError as exc:
            raise ProbeTransportError("timeout", f"no answer in {timeout:g} s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ProbeTransportError("unreachable", str(exc) or type(exc).__name__) from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class RestPredictProbe:
    """Golden requests to ``/v1/models/M[/versions/V|/labels/L]:predict``."""

    def __init__(self, client: JsonPoster, rest_url: str, model: str, *,
                 version: int | None = None, label: str | None = None,
                 golden: tuple[GoldenRequest, ...] = DEFAULT_GOLDEN,
                 timeout_seconds: float = default(PredictProbeSettings, "timeout_seconds"),
                 clock: Clock | None = None) -> None:
        address = (f"/versions/{version}" if version is not None
                   else f"/labels/{quote(label, safe='')}" if label else "")
        self.url = f"{rest_url.rstrip('/')}/v1/models/{quote(model, safe='')}{address}:predict"
        self.model, self.version, self.label = model, version, label
        self.target = f"{model}/{'v' + str(version) if version is not None else label or 'latest'}"
        self._client = client
        self._golden = golden
        self._bodies = [orjson.dumps(g.request) for g in golden]  # encoded once, sent often
        self._timeout = timeout_seconds
        self._clock = clock or SystemClock()
        self._next = 0

    async def send(self) -> Sample:
        index = self._next % len(self._golden)
        golden = self._golden[index]
        self._next += 1
        t = self._clock.now()
        started = time.monotonic()
        outcome, status = "ok", ""
        try:
            code, body = await self._client.post(self.url, self._bodies[index], self._timeout)
            status = str(code)
            if code != 200:
                outcome = "error"
            elif golden.expected is not None and not matches(golden.expected, orjson.loads(body),
                                                              golden.tolerance):
                outcome = "incorrect"
        except ProbeTransportError as exc:
            outcome = exc.kind
        except ValueError:  # not JSON: whatever answered is not a TF Serving
            outcome = "unreachable"
        elapsed_ms = (time.monotonic() - started) * 1000
        return Sample(t=t, source=SOURCE, metric="latency_ms", value=elapsed_ms, model=self.model,
                      version=self.version, target=self.label or "", ok=outcome == "ok",
                      labels={"outcome": outcome, "status": status})


async def open_loop(rate_per_second: float, max_in_flight: int,
                    send: Callable[[], Coroutine[Any, Any, None]],
                    on_skipped: Callable[[int], None] = lambda n: None,
                    on_late: Callable[[float], None] = lambda seconds: None,
                    phase: float = 0.0) -> None:
    """Start ``send()`` every 1/rate seconds until cancelled, at most ``max_in_flight`` at once.

    A send slot that finds ``max_in_flight`` calls still running is skipped and reported through
    ``on_skipped`` (the target is slower than the schedule: that is data, not back-pressure).
    Slots missed because the event loop itself was late are skipped too, not replayed in a burst.
    ``on_late`` gets each send's schedule error: how long after its slot it began to run (a busy
    event loop delays both the wake-up and the new task's first step).
    Slots lie on a grid of the loop's clock: ``(k + phase) * interval``. Loops with one rate and
    one phase send at the same instants whenever each was started (the targets of one model:
    stable and canary are sent together, so a server that answers one request at a time makes
    either one wait as often as the other; fixed offsets made the canary always queue behind
    stable and read as a 1.5x regression); loops with different phases spread their sends over
    the interval instead of all waking at once.
    """
    loop = asyncio.get_running_loop()
    interval = 1.0 / rate_per_second
    in_flight: set[asyncio.Task[None]] = set()
    offset = (phase % 1.0) * interval
    next_at = math.ceil((loop.time() - offset) / interval) * interval + offset
    try:
        while True:
            now = loop.time()
            if next_at > now:
                await asyncio.sleep(next_at - now)
            elif now - next_at > interval:
                missed = int((now - next_at) / interval)
                on_skipped(missed)
                next_at += missed * interval
            if len(in_flight) >= max_in_flight:
                on_skipped(1)
            else:
                task = asyncio.create_task(_timed(send, next_at, on_late))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            next_at += interval
    finally:
        for task in in_flight:
            task.cancel()


async def _timed(send: Callable[[], Coroutine[Any, Any, None]], slot: float,
                 on_late: Callable[[float], None]) -> None:
    on_late(max(0.0, asyncio.get_running_loop().time() - slot))
    await send()
