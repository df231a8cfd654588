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


def test_entries_kept_by_retention_stay_append_only(tmp_path: Path) -> None:
    store = SQLiteStateStore(tmp_path)
    ids = [store.append(float(t), "tick", {}) for t in range(6)]
    assert store.prune(now=6.0, max_age_seconds=3.5, max_bytes=10**9) == 3
    db = sqlite3.connect(tmp_path / DB_NAME)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM journal WHERE id = ?", (ids[3],))
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE journal SET kind = 'y' WHERE id = ?", (ids[4],))
    with pytest.raises(sqlite3.IntegrityError, match="never moves down"):
        db.execute("UPDATE journal_floor SET floor_id = 0")
    with pytest.raises(sqlite3.IntegrityError, match="stays"):
        db.execute("DELETE FROM journal_floor")
    db.close()
    assert [e.id for e in store.entries()] == ids[3:]


def test_a_version_1_database_migrates_and_keeps_its_journal(tmp_path: Path) -> None:
    from tfwarden.daemon.state import MIGRATIONS
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.executescript(f"BEGIN; {MIGRATIONS[0]} PRAGMA user_version = 1; COMMIT;")
    db.execute("INSERT INTO journal (t, kind, model, payload) VALUES (1.0, 'x', NULL, '{}')")
    db.commit()
    db.close()
    store = SQLiteStateStore(tmp_path)
    assert store.schema_version == SCHEMA_VERSION
    assert [e.kind for e in store.entries()] == ["x"]
    assert store.prune(now=100.0, max_age_seconds=1.0, max_bytes=10**9) == 1


def test_a_full_disk_inside_a_transaction_keeps_nothing(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    store = SQLiteStateStore(tmp_path)
    real_run = store._run

    def full_on_put(sql: str, args: object) -> object:
        if sql.startswith("INSERT INTO kv"):
            raise StateError(f"{store.path}: database or disk is full")
        return real_run(sql, args)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "_run", full_on_put)
    with pytest.raises(StateError, match="disk is full"), store.transaction():
        store.append(1.0, "action_intended", {})
        store.put("pending", {"x": 1}, 1.0)
    monkeypatch.undo()
    assert store.entries() == [] and store.get("pending") is None
