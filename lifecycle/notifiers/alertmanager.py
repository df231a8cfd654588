"""Alertmanager API v2 (``POST /api/v2/alerts``) and a generic JSON webhook."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx

from tfwarden.core.settings import default
from tfwarden.lifecycle.notifiers.base import Alert
from tfwarden.lifecycle.settings import AlertmanagerSettings, WebhookSettings


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def alertmanager_body(alerts: list[Alert]) -> list[dict[str, object]]:
    body = []
    for alert in alerts:
        item: dict[str, object] = {"labels": dict(alert.labels),
                                   "annotations": dict(alert.annotations),
                                   "startsAt": _iso(alert.starts_at)}
        if alert.ends_at is not None:
            item["endsAt"] = _iso(alert.ends_at)
        body.append(item)
    return body


class AlertmanagerNotifier:
    def __init__(self, url: str, client: httpx.AsyncClient,
                 timeout_seconds: float = default(AlertmanagerSettings, "timeout_seconds")) -> None:
        self.name = "alertmanager"
        self.url = url.rstrip("/") + "/api/v2/alerts"
        self._client, self.timeout_seconds = client, timeout_seconds

    async def send(self, alerts: list[Alert]) -> None:
        response = await self._client.post(self.url, json=alertmanager_body(alerts),
                                           timeout=self.timeout_seconds)
        response.raise_for_status()


class WebhookNotifier:
    """POSTs ``{"alerts": [...]}`` in Alertmanager's alert shape to any URL."""

    def __init__(self, url: str, client: httpx.AsyncClient,
                 timeout_seconds: float = default(WebhookSettings, "timeout_seconds")) -> None:
        self.url = url
        self.name = f"webhook:{url}"
        self._client, self.timeout_seconds = client, timeout_seconds

    async def send(self, alerts: list[Alert]) -> None:
        response = await self._client.post(self.url, json={"alerts": alertmanager_body(alerts)},
                                           timeout=self.timeout_seconds)
        response.raise_for_status()
