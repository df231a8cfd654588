"""The notifier interface and the alert value it sends."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Alert:
    """One alert: ``labels`` identify it (alertname, model, version, severity, action);
    ``ends_at`` set means resolved."""

    labels: Mapping[str, str]
    annotations: Mapping[str, str] = field(default_factory=dict)
    starts_at: float = 0.0
    ends_at: float | None = None


class Notifier(Protocol):
    """Delivers alerts. ``send`` raises on a failed delivery (the caller retries with backoff)."""

    name: str
    url: str  # where it delivers ("" when nowhere)
    timeout_seconds: float

    async def send(self, alerts: list[Alert]) -> None: ...


class NopNotifier:
    """Keeps the last alerts in memory (tests) and sends nothing."""

    name = "nop"
    url = ""
    timeout_seconds = 0.0

    def __init__(self) -> None:
        self.sent: list[Alert] = []

    async def send(self, alerts: list[Alert]) -> None:
        self.sent.extend(alerts)
