"""SQLite-only behaviour of the state store; the StateStore contract is in tests/contract."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tfwarden.core.errors import StateError
from tfwarden.daemon.state import DB_NAME, SCHEMA_VERSION, SQLiteStateStore


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
