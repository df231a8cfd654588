"""Predict probe over REST: golden requests to one model version or label, open-loop.

``RestPredictProbe.send`` makes one request and returns a latency Sample (client-side, monotonic
clock) whose ``ok`` says whether the call succeeded with the expected outputs; it never raises.
``open_loop`` calls a sender at a fixed rate without waiting for earlier calls (a slow response
never delays the next send: no coordinated omission), with a bound on calls in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import quote

import httpx

from tfwarden.core.clock import Clock, SystemClock
from tfwarden.core.settings import default
from tfwarden.core.types import Sample
from tfwarden.probes.golden import DEFAULT_GOLDEN, GoldenRequest, matches
from tfwarden.probes.settings import PredictProbeSettings

SOURCE = "predict"


class RestPredictProbe:
    """Golden requests to ``/v1/models/M[/versions/V|/labels/L]:predict``."""

    def __init__(self, client: httpx.AsyncClient, rest_url: str, model: str, *,
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
        self._timeout = timeout_seconds
        self._clock = clock or SystemClock()
        self._next = 0

    async def send(self) -> Sample:
        golden = self._golden[self._next % len(self._golden)]
        self._next += 1
        t = self._clock.now()
        started = time.monotonic()
        outcome, status = "ok", ""
        try:
            response = await self._client.post(self.url, json=golden.request, timeout=self._timeout)
            status = str(response.status_code)
            if response.status_code != 200:
                outcome = "error"
            elif golden.expected is not None and not matches(golden.expected, response.json(),
                                                              golden.tolerance):
                outcome = "incorrect"
        except httpx.TimeoutException:
            outcome = "timeout"
        except (httpx.TransportError, ValueError):
            outcome = "unreachable"
        elapsed_ms = (time.monotonic() - started) * 1000
        return Sample(t=t, source=SOURCE, metric="latency_ms", value=elapsed_ms, model=self.model,
                      version=self.version, target=self.label or "", ok=outcome == "ok",
                      labels={"outcome": outcome, "status": status})


async def open_loop(rate_per_second: float, max_in_flight: int,
                    send: Callable[[], Coroutine[Any, Any, None]],
                    on_skipped: Callable[[int], None] = lambda n: None) -> None:
    """Start ``send()`` every 1/rate seconds until cancelled, at most ``max_in_flight`` at once.

    A send slot that finds ``max_in_flight`` calls still running is skipped and reported through
    ``on_skipped`` (the target is slower than the schedule: that is data, not back-pressure).
    Slots missed because the event loop itself was late are skipped too, not replayed in a burst.
    """
    loop = asyncio.get_running_loop()
    interval = 1.0 / rate_per_second
    in_flight: set[asyncio.Task[None]] = set()
    next_at = loop.time()
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
                task = asyncio.create_task(send())
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            next_at += interval
    finally:
        for task in in_flight:
            task.cancel()
