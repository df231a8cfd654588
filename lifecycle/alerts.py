"""tfwarden's own alerts: fired by decisions and failed actions, resolved when the matter is
settled, kept in one book that survives reloads.

- A decision of a rule with ``alert`` fires ``TfwardenDecision`` (labels: rule, model, version,
  action, severity); a later decision of another rule for the same model resolves it, and so do
  a completed rollback or promotion.
- A failed action or reoptimization fires ``TfwardenActionFailed``.
Every alert is journaled and handed to the dispatcher (which never blocks the caller). With a
``page_url`` each links its runbook (``runbook_url``: ``/runbooks/<alertname>``) and the model's
part of the status page (``status_url``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Protocol
from urllib.parse import quote

from tfwarden.core.clock import Clock
from tfwarden.core.events import AlertFired, AlertResolved
from tfwarden.core.ports import Journal
from tfwarden.core.types import Decision
from tfwarden.lifecycle.notifiers.base import Alert


class AlertSink(Protocol):
    def submit(self, alerts: list[Alert]) -> None: ...


class AlertBook:
    def __init__(self, sink: AlertSink, journal: Journal, clock: Clock,
                 labels: Mapping[str, str] | None = None, page_url: str | None = None) -> None:
        self.sink, self.journal, self.clock = sink, journal, clock
        self.labels = dict(labels or {})  # added to every alert (``alerting.labels``)
        self.page_url = page_url.rstrip("/") if page_url else None
        self.active: dict[tuple[str, str], Alert] = {}  # (model, rule) -> firing decision alert

    def reconfigure(self, labels: Mapping[str, str], page_url: str | None = None) -> None:
        self.labels = dict(labels)
        self.page_url = page_url.rstrip("/") if page_url else None

    def _links(self, alertname: str, model: str) -> dict[str, str]:
        if self.page_url is None:
            return {}
        return {"runbook_url": f"{self.page_url}/runbooks/{alertname}",
                "status_url": f"{self.page_url}/?model={quote(model, safe='')}#model-{quote(model)}"}

    def decided(self, decision: Decision, canary: int | None) -> None:
        """A rule with ``alert`` decided; its alert replaces the model's other rules' alerts."""
        version = decision.params.get("from_version", decision.params.get("version", canary))
        alert = Alert(labels={**self.labels, "alertname": "TfwardenDecision",
                              "rule": decision.rule, "model": decision.model,
                              "version": str(version or ""),
                              "severity": decision.alert or "info", "action": decision.action},
                      annotations={"summary": f"{decision.action} {decision.model}: "
                                              f"{decision.reason}"[:500],
                                   "description": str([f.get("effect")
                                                       for f in decision.findings])[:1000],
                                   **self._links("TfwardenDecision", decision.model)},
                      starts_at=decision.t)
        for key in [k for k in self.active if k[0] == decision.model and k[1] != decision.rule]:
            self._resolve(self.active.pop(key))
        self.active[(decision.model, decision.rule)] = alert
        self._fire(alert)

    def failed(self, model: str, action: str, error: str, severity: str = "page") -> None:
        """An action (or a reoptimization) failed."""
        self._fire(Alert(labels={**self.labels, "alertname": "TfwardenActionFailed",
                                 "model": model, "action": action, "severity": severity},
                         annotations={"summary": f"{action} of {model} failed: {error}"[:500],
                                      **self._links("TfwardenActionFailed", model)},
                         starts_at=self.clock.now()))

    def settled(self, model: str, action: str) -> None:
        """A completed rollback or promotion resolves the model's decision alerts."""
        if action not in ("rollback", "promote"):
            return
        for key in [k for k in self.active if k[0] == model]:
            self._resolve(self.active.pop(key))

    def _fire(self, alert: Alert) -> None:
        self.sink.submit([alert])  # first: a page goes out even when the journal cannot grow
        self.journal.record(AlertFired(alert.labels, alert.annotations.get("summary", "")))

    def _resolve(self, alert: Alert) -> None:
        self.journal.record(AlertResolved(alert.labels))
        self.sink.submit([replace(alert, ends_at=self.clock.now())])
