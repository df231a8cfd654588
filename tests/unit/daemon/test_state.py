from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.fakes import MemoryStateStore
from tfwarden.core.errors import StateError
from tfwarden.core.ports import StateStore
from tfwarden.daemon.state import DB_NAME, SCHEMA_VERSION, SQLiteStateStore


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> StateStore:
    if request.param == "sqlite":
        return SQLiteStateStore(tmp_path / "state")
    return MemoryStateStore()


def test_journal_appends_in_order_and_filters(store: StateStore) -> None:
    a = store.append(1.0, "config_loaded", {"generation": 1})
    b = store.append(2.0, "decision", {"action": "hold"}, model="m")
    c = store.append(3.0, "decision", {"action": "rollback"}, model="other")
    assert a < b < c
    assert [e.id for e in store.entries()] == [a, b, c]
    assert [e.payload["action"] for e in store.entries(kind="decision")] == ["hold", "rollback"]
    assert [e.id for e in store.entries(model="m")] == [b]
    assert [e.id for e in store.entries(after_id=a, limit=1)] == [b]
    assert store.entries()[1].t == 2.0


def test_key_value_round_trip(store: StateStore) -> None:
    assert store.get("lifecycle/m") is None
    store.put("lifecycle/m", {"phase": "stable", "versions": [1, 2]}, 1.0)
    store.put("lifecycle/m", {"phase": "canary_live", "versions": [1, 2]}, 2.0)
    assert store.get("lifecycle/m") == {"phase": "canary_live", "versions": [1, 2]}


def test_sqlite_persists_across_reopen_and_uses_wal(tmp_path: Path) -> None:
    first = SQLiteStateStore(tmp_path)
    first.append(1.0, "daemon_started", {"pid": 1})
    first.put("k", [1, 2, 3], 1.0)
    first.close()
    second = SQLiteStateStore(tmp_path)
    assert second.entries()[0].kind == "daemon_started"
    assert second.get("k") == [1, 2, 3]
    assert second.schema_version == SCHEMA_VERSION
    mode = sqlite3.connect(tmp_path / DB_NAME).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    second.checkpoint()
    second.close()


def test_journal_is_append_only(tmp_path: Path) -> None:
    SQLiteStateStore(tmp_path).append(1.0, "x", {})
    db = sqlite3.connect(tmp_path / DB_NAME)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE journal SET kind = 'y'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM journal")


def test_corrupt_database_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError, match="corrupt or not a tfwarden state database"):
        SQLiteStateStore(tmp_path)


def test_state_dir_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("")
    with pytest.raises(StateError, match="is not a directory"):
        SQLiteStateStore(target)


def test_state_dir_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StateError, match="cannot be created"):
        SQLiteStateStore(tmp_path / "file" / "state")


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    SQLiteStateStore(tmp_path).close()
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    db.close()
    with pytest.raises(StateError, match="newer than this tfwarden supports"):
        SQLiteStateStore(tmp_path)
