from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.unit import virtual_time
from tfwarden.lifecycle.notifiers.alertmanager import AlertmanagerNotifier, WebhookNotifier
from tfwarden.lifecycle.notifiers.base import Alert, NopNotifier
from tfwarden.lifecycle.notifiers.dispatch import Dispatcher

ALERT = Alert(labels={"alertname": "TfwardenDecision", "model": "m", "severity": "page"},
              annotations={"summary": "rollback m"}, starts_at=1764000000.0)


def test_alertmanager_v2_body_with_resolution() -> None:
    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append((request.url.path, json.loads(request.content)))
        return httpx.Response(200)

    async def scenario() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            await AlertmanagerNotifier("http://am:9093/", client).send([ALERT])
            resolved = Alert(ALERT.labels, ALERT.annotations, ALERT.starts_at, 1764000060.0)
            await WebhookNotifier("http://hook/x", client).send([resolved])

    asyncio.run(scenario())
    (path, body), (hook_path, hook_body) = bodies
    assert path == "/api/v2/alerts"
    assert body == [{"labels": dict(ALERT.labels), "annotations": {"summary": "rollback m"},
                     "startsAt": "2025-11-24T16:00:00Z"}]
    assert hook_path == "/x" and hook_body["alerts"][0]["endsAt"] == "2025-11-24T16:01:00Z"


class Flaky:
    name, url, timeout_seconds = "flaky", "", 1.0

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempted_at: list[float] = []  # the loop's time of each attempt
        self.delivered: list[Alert] = []

    @property
    def attempts(self) -> int:
        return len(self.attempted_at)

    async def send(self, alerts: list[Alert]) -> None:
        self.attempted_at.append(asyncio.get_running_loop().time())
        if self.attempts <= self.failures:
            raise httpx.ConnectError("down")
        self.delivered.extend(alerts)


def test_failed_deliveries_are_retried_with_backoff_without_blocking() -> None:
    flaky, nop = Flaky(failures=3), NopNotifier()
    results: list[tuple[str, bool]] = []

    async def scenario() -> tuple[int, int]:
        dispatcher = Dispatcher([flaky, nop], first_backoff=0.01, max_backoff=0.03,
                                on_result=lambda name, ok: results.append((name, ok)))
        dispatcher.start()
        dispatcher.submit([ALERT])  # only queues: nothing is sent from the caller
        attempts_during_submit = flaky.attempts
        await virtual_time.until(lambda: nop.sent)
        attempts_when_nop_delivered = flaky.attempts
        await virtual_time.until(lambda: flaky.delivered)
        await dispatcher.stop()
        return attempts_during_submit, attempts_when_nop_delivered

    # submit returned before any attempt; the healthy notifier did not wait for the retries
    assert virtual_time.run(scenario()) == (0, 1)
    # backoff 0.01 s, doubled, capped at 0.03 s
    assert flaky.attempted_at == pytest.approx([0.0, 0.01, 0.03, 0.06])
    assert flaky.delivered == [ALERT] and nop.sent == [ALERT]
    assert ("flaky", True) in results and ("nop", True) in results


def test_gives_up_after_max_attempts() -> None:
    flaky = Flaky(failures=100)
    results: list[tuple[str, bool]] = []

    async def scenario() -> None:
        dispatcher = Dispatcher([flaky], max_attempts=3, first_backoff=0.001,
                                on_result=lambda name, ok: results.append((name, ok)))
        dispatcher.start()
        dispatcher.submit([ALERT])
        await virtual_time.until(lambda: results)
        await asyncio.sleep(1)  # no further attempt once it gave up
        await dispatcher.stop()

    virtual_time.run(scenario())
    assert flaky.attempts == 3 and results == [("flaky", False)]
