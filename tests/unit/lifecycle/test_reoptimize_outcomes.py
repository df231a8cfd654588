"""Every reoptimization that starts gets exactly one outcome: a failure of any kind is one, and
a start that a stop or crash interrupted is settled at the next start (published or failed)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import FakeClock, MemoryStateStore
from tfwarden.daemon.recorder import Recorder
from tfwarden.daemon.state import EventJournal
from tfwarden.lifecycle import reoptimize
from tfwarden.lifecycle.reoptimize import Reoptimizer, pending_key
from tfwarden.optimizers.publish import PROVENANCE


class _Alerts:
    def __init__(self) -> None:
        self.failures: list[str] = []

    def failed(self, model: str, action: str, error: str, severity: str = "page") -> None:
        self.failures.append(error)


class _Server:
    def __init__(self, base: Path) -> None:
        self.base = base

    def base_path(self, model: str) -> Path:
        return self.base


def _reoptimizer(store: MemoryStateStore, alerts: _Alerts) -> Reoptimizer:
    return Reoptimizer({"m": object()}, Path("/nonexistent"),  # type: ignore[dict-item]
                       EventJournal(store, FakeClock(), Recorder()), alerts, store)


def _kinds(store: MemoryStateStore) -> list[str]:
    return [e.kind for e in store.entries(limit=100)]


def test_an_unexpected_error_is_an_outcome_and_clears_the_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, alerts = MemoryStateStore(), _Alerts()
    optimizer = _reoptimizer(store, alerts)
    monkeypatch.setattr(optimizer, "_request", lambda *args: object())

    async def disk_full(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(reoptimize, "optimize", disk_full)
    asyncio.run(optimizer.run("m", 1, _Server(tmp_path), {"method": "dynamic_range"}, "rule r"))
    assert _kinds(store) == ["reoptimize_started", "reoptimize_failed"]
    assert "No space left on device" in store.entries(kind="reoptimize_failed")[0].payload["error"]
    assert store.get(pending_key("m")) is None and len(alerts.failures) == 1


def test_a_stop_leaves_the_start_pending_and_the_next_start_fails_it_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, alerts = MemoryStateStore(), _Alerts()
    optimizer = _reoptimizer(store, alerts)
    monkeypatch.setattr(optimizer, "_request", lambda *args: object())

    async def stopped(*args: Any) -> None:
        raise asyncio.CancelledError

    monkeypatch.setattr(reoptimize, "optimize", stopped)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(optimizer.run("m", 1, _Server(tmp_path), {"method": "dynamic_range"}, "r"))
    assert _kinds(store) == ["reoptimize_started"] and store.get(pending_key("m")) is not None

    restarted = _reoptimizer(store, alerts)
    restarted.resume("m", _Server(tmp_path))
    restarted.resume("m", _Server(tmp_path))  # settled: nothing more
    assert _kinds(store) == ["reoptimize_started", "reoptimize_failed"]
    started, failed = store.entries(limit=100)
    assert failed.payload["intent_id"] == started.id and "run it again" in failed.payload["error"]


def test_a_variant_published_before_a_crash_is_the_outcome(tmp_path: Path) -> None:
    store, alerts = MemoryStateStore(), _Alerts()
    journal = EventJournal(store, FakeClock(), Recorder())
    with store.transaction():
        intent = journal.record(reoptimize.ReoptimizeStarted("m", "dynamic_range", 1, "r"))
        store.put(pending_key("m"), {"intent_id": intent, "method": "dynamic_range",
                                     "source_version": 1}, 0.0)
    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()  # the atomic rename happened; the outcome was not journaled
    (tmp_path / "2" / PROVENANCE).write_text(json.dumps({"source_version": 1,
                                                         "method": "dynamic_range"}))
    _reoptimizer(store, alerts).resume("m", _Server(tmp_path))
    done = store.entries(kind="reoptimized")
    assert len(done) == 1 and done[0].payload["intent_id"] == intent
    assert done[0].payload["version"] == 2 and alerts.failures == []
    assert store.get(pending_key("m")) is None
