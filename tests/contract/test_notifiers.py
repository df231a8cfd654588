"""The Notifier contract (``lifecycle.notifiers.base.Notifier``), run over Alertmanager, a webhook
and nop; ``httpx.MockTransport`` plays the receiving end."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import pytest

from tfwarden.lifecycle.notifiers.alertmanager import AlertmanagerNotifier, WebhookNotifier
from tfwarden.lifecycle.notifiers.base import Alert, NopNotifier, Notifier
from tfwarden.lifecycle.notifiers.dispatch import Dispatcher

FIRING = Alert(labels={"alertname": "TfwardenDecision", "model": "résnet", "version": "7",
                       "severity": "page", "action": "rollback"},
               annotations={"summary": "rollback résnet to 6", "description": "p99 ✗ 2.5x stable"},
               starts_at=1_764_000_000.0)
RESOLVED = Alert(labels={"alertname": "TfwardenCanaryStuck", "model": "m", "severity": "warning"},
                 annotations={"summary": "canary of m resolved"},
                 starts_at=1_764_000_000.25, ends_at=1_764_000_060.0)
RFC3339_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")

Answer = int | httpx.TransportError  # a status to answer with, or an error to raise


@dataclass
class Receiver:
    """A notifier and the far end it delivers to. ``answers`` are used up one per request
    (then 200); ``exchanges`` keeps each request with the status it got."""

    notifier: Notifier
    name: str
    path: str | None  # where it POSTs; None: it sends nothing over HTTP (nop)
    unwrap: Callable[[Any], list[dict[str, Any]]] = lambda body: list(body)
    answers: list[Answer] = field(default_factory=list)
    exchanges: list[tuple[httpx.Request, int]] = field(default_factory=list)

    def answer(self, request: httpx.Request) -> httpx.Response:
        answer = self.answers.pop(0) if self.answers else 200
        if isinstance(answer, httpx.TransportError):
            raise answer
        self.exchanges.append((request, answer))
        return httpx.Response(answer)

    def delivered(self) -> list[dict[str, Any]]:
        """The alerts that arrived (and were accepted), in Alertmanager's alert shape; for nop,
        the labels and annotations of the alerts it kept."""
        if self.path is None:
            assert isinstance(self.notifier, NopNotifier)
            return [{"labels": dict(a.labels), "annotations": dict(a.annotations)}
                    for a in self.notifier.sent]
        alerts: list[dict[str, Any]] = []
        for request, status in self.exchanges:
            assert (request.method, request.url.path) == ("POST", self.path)
            assert request.headers["content-type"] == "application/json"
            if status < 300:
                alerts += self.unwrap(json.loads(request.content))
        return alerts


@pytest.fixture(params=["alertmanager", "webhook", "nop"])
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    if request.param == "nop":
        yield Receiver(NopNotifier(), "nop", None)
        return
    holder: list[Receiver] = []
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: holder[0].answer(r)))
    if request.param == "alertmanager":
        holder.append(Receiver(AlertmanagerNotifier("http://127.0.0.1:9093/", client,
                                                    timeout_seconds=1.0),
                               "alertmanager", "/api/v2/alerts"))
    else:
        url = "http://127.0.0.1:8080/hooks/tfwarden"
        holder.append(Receiver(WebhookNotifier(url, client, timeout_seconds=1.0),
                               f"webhook:{url}", "/hooks/tfwarden",
                               unwrap=lambda body: list(body["alerts"])))
    yield holder[0]
    asyncio.run(client.aclose())


def send(receiver: Receiver, alerts: list[Alert]) -> None:
    asyncio.run(receiver.notifier.send(alerts))


def shown(alert: Alert) -> dict[str, Any]:
    return {"labels": dict(alert.labels), "annotations": dict(alert.annotations)}


def without_times(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in a.items() if k not in ("startsAt", "endsAt")} for a in alerts]


# -- the contract -------------------------------------------------------------------------------
def test_name_says_where_alerts_go(receiver: Receiver) -> None:
    assert receiver.notifier.name == receiver.name


def test_firing_and_resolved_alerts_are_delivered_once_each(receiver: Receiver) -> None:
    send(receiver, [FIRING])
    send(receiver, [RESOLVED])
    delivered = receiver.delivered()
    assert without_times(delivered) == [shown(FIRING), shown(RESOLVED)]
    if isinstance(receiver.notifier, NopNotifier):
        assert receiver.notifier.sent == [FIRING, RESOLVED]
        return
    assert len(receiver.exchanges) == 2
    firing, resolved = delivered
    assert firing["startsAt"] == "2025-11-24T16:00:00Z" and "endsAt" not in firing
    assert resolved["startsAt"] == "2025-11-24T16:00:00.250000Z"
    assert resolved["endsAt"] == "2025-11-24T16:01:00Z"
    for text, t in [(firing["startsAt"], FIRING.starts_at), (resolved["startsAt"], RESOLVED.starts_at),
                    (resolved["endsAt"], RESOLVED.ends_at)]:
        assert RFC3339_Z.fullmatch(text), text
        assert datetime.fromisoformat(text).timestamp() == t


def test_alerts_sent_together_arrive_together_in_order(receiver: Receiver) -> None:
    send(receiver, [RESOLVED, FIRING])
    assert without_times(receiver.delivered()) == [shown(RESOLVED), shown(FIRING)]
    if receiver.path is not None:
        assert len(receiver.exchanges) == 1


@pytest.mark.parametrize("status", [500, 503, 400])
def test_a_refusing_receiver_makes_send_raise(receiver: Receiver, status: int) -> None:
    receiver.answers = [status]
    if receiver.path is None:
        send(receiver, [FIRING])  # nop delivers nowhere, so nothing can refuse it
        assert receiver.delivered() == [shown(FIRING)]
        return
    with pytest.raises(httpx.HTTPStatusError, match=f"{status}"):
        send(receiver, [FIRING])
    assert [s for _, s in receiver.exchanges] == [status] and receiver.delivered() == []
    send(receiver, [FIRING])  # the next attempt goes through
    assert without_times(receiver.delivered()) == [shown(FIRING)]


def test_an_unreachable_receiver_makes_send_raise(receiver: Receiver) -> None:
    receiver.answers = [httpx.ConnectError("connection refused")]
    if receiver.path is None:
        send(receiver, [FIRING])
        assert receiver.delivered() == [shown(FIRING)]
        return
    with pytest.raises(httpx.ConnectError, match="connection refused"):
        send(receiver, [FIRING])
    assert receiver.delivered() == []


def test_the_dispatcher_retries_a_failed_delivery_then_delivers(receiver: Receiver) -> None:
    receiver.answers = [500]
    results: list[tuple[str, bool]] = []

    async def scenario() -> None:
        dispatcher = Dispatcher([receiver.notifier], first_backoff=0.01, max_backoff=0.02,
                                on_result=lambda name, ok: results.append((name, ok)))
        dispatcher.start()
        dispatcher.submit([FIRING])
        deadline = asyncio.get_running_loop().time() + 30  # a guard against a hang only
        while not results and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        await dispatcher.stop()

    asyncio.run(scenario())
    assert results == [(receiver.name, True)]
    assert without_times(receiver.delivered()) == [shown(FIRING)]
    if receiver.path is not None:
        assert [s for _, s in receiver.exchanges] == [500, 200]
