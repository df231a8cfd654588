"""tfwarden's own alerts link their runbook and the model's part of the status page."""

from __future__ import annotations

from pathlib import Path

from tests.fakes import FakeClock, MemoryStateStore
from tests.helpers import REPO
from tfwarden.core.types import Decision
from tfwarden.daemon.build import page_url
from tfwarden.daemon.config import Config
from tfwarden.daemon.recorder import Recorder
from tfwarden.daemon.state import EventJournal
from tfwarden.lifecycle.alerts import AlertBook
from tfwarden.lifecycle.notifiers.base import Alert


class Sent:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def submit(self, alerts: list[Alert]) -> None:
        self.alerts += alerts


def book(page: str | None) -> tuple[AlertBook, Sent]:
    clock, sent = FakeClock(), Sent()
    return AlertBook(sent, EventJournal(MemoryStateStore(), clock, Recorder()), clock,
                     page_url=page), sent


def test_decision_and_failure_alerts_link_their_runbook_pages() -> None:
    alerts, sent = book("https://tfwarden.example.internal/")
    alerts.decided(Decision(1.0, "rollback-canary-on-regression", "m/x", "rollback",
                            {"from_version": 2}, "latency regression", alert="page"), canary=2)
    alerts.failed("m/x", "rollback", "boom")
    decision, failure = (a.annotations for a in sent.alerts)
    assert decision["runbook_url"] == "https://tfwarden.example.internal/runbooks/TfwardenDecision"
    assert decision["status_url"].startswith("https://tfwarden.example.internal/?model=m%2Fx#")
    assert failure["runbook_url"].endswith("/runbooks/TfwardenActionFailed")
    for name in ("TfwardenDecision", "TfwardenActionFailed"):  # the pages exist
        assert (REPO / "docs" / "runbooks" / f"{name}.md").is_file()
    quiet, sent = book(None)
    quiet.failed("m", "promote", "boom")
    assert "runbook_url" not in sent.alerts[0].annotations


def test_the_page_url_defaults_to_the_daemons_address(tmp_path: Path) -> None:
    def config(**server: object) -> Config:
        return Config.model_validate({"state_dir": str(tmp_path), "server": server})

    assert page_url(config()) == "http://127.0.0.1:9321"
    assert page_url(config(listen="0.0.0.0:8080")) == "http://127.0.0.1:8080"
    assert page_url(config(listen="[::1]:9000")) == "http://[::1]:9000"
    explicit = Config.model_validate({"state_dir": str(tmp_path), "alerting": {
        "page_url": "https://ops.example/tfwarden"}})
    assert page_url(explicit) == "https://ops.example/tfwarden"
