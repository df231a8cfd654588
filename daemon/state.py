"""The state store: an append-only journal of events plus a small key-value table.

:class:`SQLiteStateStore` (WAL mode, versioned schema migrations, ``state.db`` under
``state_dir``) implements ``core.ports.StateStore`` (``tests/fakes.MemoryStateStore`` is the
in-memory one); :class:`EventJournal` is the journal port the stages record typed events through.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tfwarden.core.clock import Clock
from tfwarden.core.errors import StateError
from tfwarden.core.events import Event
from tfwarden.core.ports import JournalEntry, StateStore
from tfwarden.daemon.recorder import Recorder

DB_NAME = "state.db"

# Each entry moves the schema from version i to i+1; never edit a shipped entry, append one.
MIGRATIONS: Sequence[str] = (
    """
    CREATE TABLE journal (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        t       REAL    NOT NULL,
        kind    TEXT    NOT NULL,
        model   TEXT,
        payload TEXT    NOT NULL
    );
    CREATE INDEX journal_kind ON journal(kind, id);
    CREATE INDEX journal_model ON journal(model, id);
    CREATE TRIGGER journal_no_update BEFORE UPDATE ON journal
        BEGIN SELECT RAISE(ABORT, 'journal is append-only'); END;
    CREATE TRIGGER journal_no_delete BEFORE DELETE ON journal
        BEGIN SELECT RAISE(ABORT, 'journal is append-only'); END;
    CREATE TABLE kv (
        key        TEXT PRIMARY KEY,
        value      TEXT NOT NULL,
        updated_t  REAL NOT NULL
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)



class EventJournal:
    """``core.ports.Journal`` over a state store: typed events, timed by the clock, counted."""

    def __init__(self, store: StateStore, clock: Clock, recorder: Recorder) -> None:
        self.store, self.clock, self.recorder = store, clock, recorder

    def record(self, event: Event) -> int:
        entry_id = self.store.append(self.clock.now(), event.kind, event.payload(),
                                     model=event.subject)
        self.recorder.journaled(event.kind)
        return entry_id


class SQLiteStateStore:
    """StateStore in ``<state_dir>/state.db`` (SQLite, WAL mode)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / DB_NAME
        self._lock = threading.Lock()
        _check_state_dir(Path(state_dir))
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StateError(_explain(self.path, exc)) from exc

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        current = self.schema_version
        if current > SCHEMA_VERSION:
            raise StateError(
                f"{self.path}: schema version {current} is newer than this tfwarden supports "
                f"({SCHEMA_VERSION}); upgrade tfwarden or point state_dir elsewhere"
            )
        for version in range(current, SCHEMA_VERSION):
            self._db.executescript(
                f"BEGIN; {MIGRATIONS[version]} PRAGMA user_version = {version + 1}; COMMIT;"
            )

    def append(self, t: float, kind: str, payload: dict[str, Any], model: str | None = None) -> int:
        with self._lock:
            cursor = self._run(
                "INSERT INTO journal (t, kind, model, payload) VALUES (?, ?, ?, ?)",
                (t, kind, model, json.dumps(payload, sort_keys=True)),
            )
            return int(cursor.lastrowid or 0)

    def entries(
        self, after_id: int = 0, limit: int = 100, kind: str | None = None,
        model: str | None = None,
    ) -> list[JournalEntry]:
        sql = "SELECT id, t, kind, model, payload FROM journal WHERE id > ?"
        args: list[Any] = [after_id]
        if kind is not None:
            sql += " AND kind = ?"
            args.append(kind)
        if model is not None:
            sql += " AND model = ?"
            args.append(model)
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._run(sql, args).fetchall()
        return [JournalEntry(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]

    def put(self, key: str, value: Any, t: float) -> None:
        with self._lock:
            self._run(
                "INSERT INTO kv (key, value, updated_t) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_t = excluded.updated_t",
                (key, json.dumps(value, sort_keys=True), t),
            )

    def get(self, key: str) -> Any:
        with self._lock:
            row = self._run("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def checkpoint(self) -> None:
        """Fold the WAL back into the database file so it does not grow without bound."""
        with self._lock:
            self._run("PRAGMA wal_checkpoint(TRUNCATE)", ())

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _run(self, sql: str, args: Sequence[Any]) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, args)
        except sqlite3.Error as exc:
            raise StateError(_explain(self.path, exc)) from exc


def _check_state_dir(state_dir: Path) -> None:
    if state_dir.exists() and not state_dir.is_dir():
        raise StateError(f"state_dir {state_dir} is not a directory")
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    except OSError as exc:
        raise StateError(f"state_dir {state_dir} cannot be created: {exc.strerror}") from exc
    if not os.access(state_dir, os.W_OK | os.X_OK):
        raise StateError(f"state_dir {state_dir} is not writable by this user")
    probe = state_dir / ".tfwarden-write-test"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StateError(f"state_dir {state_dir} is not writable: {exc.strerror}") from exc


def _explain(path: Path, exc: sqlite3.Error) -> str:
    text = str(exc)
    if "file is not a database" in text or "malformed" in text:
        return (f"{path} is corrupt or not a tfwarden state database ({text}); "
                "move it aside to start with empty state")
    if "readonly" in text or "unable to open" in text:
        return f"{path} cannot be written ({text}); check the permissions of state_dir"
    return f"{path}: {text}"
