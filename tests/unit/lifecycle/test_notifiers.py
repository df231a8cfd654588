from __future__ import annotations

import asyncio
import json

import httpx

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
        self.failures, self.attempts, self.delivered = failures, 0, []

    async def send(self, alerts: list[Alert]) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise httpx.ConnectError("down")
        self.delivered.extend(alerts)


def test_failed_deliveries_are_retried_with_backoff_without_blocking() -> None:
    flaky, nop = Flaky(failures=2), NopNotifier()
    results: list[tuple[str, bool]] = []

    async def scenario() -> float:
        dispatcher = Dispatcher([flaky, nop], first_backoff=0.01, max_backoff=0.05,
                                on_result=lambda name, ok: results.append((name, ok)))
        dispatcher.start()
        started = asyncio.get_running_loop().time()
        dispatcher.submit([ALERT])  # returns at once
        submit_seconds = asyncio.get_running_loop().time() - started
        for _ in range(100):
            if flaky.delivered:
                break
            await asyncio.sleep(0.01)
        await dispatcher.stop()
        return submit_seconds

    assert asyncio.run(scenario()) < 0.01
    assert flaky.attempts == 3 and flaky.delivered == [ALERT] and nop.sent == [ALERT]
    assert ("flaky", True) in results and ("nop", True) in results


def test_gives_up_after_max_attempts() -> None:
    flaky = Flaky(failures=100)
    results: list[tuple[str, bool]] = []

    async def scenario() -> None:
        dispatcher = Dispatcher([flaky], max_attempts=3, first_backoff=0.001,
                                on_result=lambda name, ok: results.append((name, ok)))
        dispatcher.start()
        dispatcher.submit([ALERT])
        for _ in range(100):
            if results:
                break
            await asyncio.sleep(0.01)
        await dispatcher.stop()

    asyncio.run(scenario())
    assert flaky.attempts == 3 and results == [("flaky", False)]
