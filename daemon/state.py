"""The state store: an append-only journal of events plus a small key-value table.

:class:`SQLiteStateStore` (WAL mode, versioned schema migrations, ``state.db`` under
``state_dir``) and ``daemon.pgstate.PostgresStateStore`` (shared by replicas) implement
``core.ports.StateStore`` (``tests/fakes.MemoryStateStore`` is the
in-memory one); :class:`EventJournal` is the journal port the stages record typed events through.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tfwarden.core.clock import Clock
from tfwarden.core.errors import StateError
from tfwarden.core.events import Event
from tfwarden.core.ports import JournalEntry, StateStore
from tfwarden.daemon.recorder import Recorder

if TYPE_CHECKING:
    from tfwarden.daemon.config import Config

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
    # Retention: rows below ``floor_id`` may be deleted (oldest first); every row at or above it
    # stays append-only, and the floor never moves down.
    """
    CREATE TABLE journal_floor (
        one      INTEGER PRIMARY KEY CHECK (one = 1),
        floor_id INTEGER NOT NULL
    );
    INSERT INTO journal_floor (one, floor_id) VALUES (1, 0);
    CREATE TRIGGER journal_floor_no_lowering BEFORE UPDATE ON journal_floor
        WHEN NEW.floor_id < OLD.floor_id
        BEGIN SELECT RAISE(ABORT, 'the journal floor never moves down'); END;
    CREATE TRIGGER journal_floor_no_delete BEFORE DELETE ON journal_floor
        BEGIN SELECT RAISE(ABORT, 'the journal floor stays'); END;
    DROP TRIGGER journal_no_delete;
    CREATE TRIGGER journal_no_delete BEFORE DELETE ON journal
        WHEN OLD.id >= (SELECT floor_id FROM journal_floor)
        BEGIN SELECT RAISE(ABORT, 'journal is append-only'); END;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
# A row's share of the database file beyond its payload (ids, time, kind, model, indexes).
ROW_OVERHEAD_BYTES = 96
PRUNE_BATCH = 2000  # rows deleted per transaction



def open_state_store(config: Config) -> StateStore:
    """The store ``config.state`` names: SQLite under ``state_dir``, or PostgreSQL (psycopg is
    imported only then). Raises StateError with one readable line."""
    settings = config.state
    if settings.kind == "sqlite":
        return SQLiteStateStore(config.state_dir)
    from tfwarden.daemon.pgstate import PostgresStateStore

    assert settings.dsn_file is not None  # the configuration's validator requires it
    try:
        dsn = settings.dsn_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise StateError(f"state.dsn_file {settings.dsn_file}: {exc.strerror}") from exc
    return PostgresStateStore(dsn, max_connections=settings.max_connections,
                              connect_timeout=settings.connect_timeout_seconds)


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
        self._lock = threading.RLock()
        self._depth = 0
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
        model: str | None = None, newest_first: bool = False,
    ) -> list[JournalEntry]:
        sql = "SELECT id, t, kind, model, payload FROM journal WHERE id > ?"
        args: list[Any] = [after_id]
        if kind is not None:
            sql += " AND kind = ?"
            args.append(kind)
        if model is not None:
            sql += " AND model = ?"
            args.append(model)
        sql += " ORDER BY id DESC LIMIT ?" if newest_first else " ORDER BY id LIMIT ?"
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

    def put_new(self, key: str, value: Any, t: float) -> Any:
        with self._lock, self.transaction():
            self._run("INSERT INTO kv (key, value, updated_t) VALUES (?, ?, ?) ON CONFLICT(key) "
                      "DO UPDATE SET value = excluded.value, updated_t = excluded.updated_t "
                      "WHERE kv.value = 'null'", (key, json.dumps(value, sort_keys=True), t))
            return self.get(key)

    def get(self, key: str) -> Any:
        with self._lock:
            row = self._run("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything written inside commits together or not at all (nests; the outermost
        commits). Other threads wait for it to end."""
        with self._lock:
            self._depth += 1
            try:
                if self._depth == 1:
                    self._run("BEGIN IMMEDIATE", ())
                yield
            except BaseException:
                if self._depth == 1 and self._db.in_transaction:
                    self._db.rollback()
                raise
            else:
                if self._depth == 1:
                    self._run("COMMIT", ())
            finally:
                self._depth -= 1

    def prune(self, now: float, max_age_seconds: float, max_bytes: int) -> int:
        """Journal retention: delete the oldest entries that are older than ``max_age_seconds``
        or beyond the newest ``max_bytes`` (payloads plus a fixed row overhead), by raising the
        floor below which deletion is allowed. The floor is found on a reading connection of
        its own and the rows go in short transactions of ``PRUNE_BATCH``, so writers wait for
        milliseconds, not for the whole pruning. Returns how many entries went."""
        target = self._retention_floor(now, max_age_seconds, max_bytes)
        pruned = 0
        while True:
            with self.transaction():
                current = int(self._run("SELECT floor_id FROM journal_floor", ()).fetchone()[0])
                if current >= target:
                    return pruned
                floor = min(target, max(current, self._oldest_id()) + PRUNE_BATCH)
                self._run("UPDATE journal_floor SET floor_id = ?", (floor,))
                pruned += int(self._run("DELETE FROM journal WHERE id < ?", (floor,)).rowcount)

    def _oldest_id(self) -> int:
        return int(self._run("SELECT COALESCE(MIN(id), 0) FROM journal", ()).fetchone()[0])

    def _retention_floor(self, now: float, max_age_seconds: float, max_bytes: int) -> int:
        """The lowest id retention keeps (read without holding the writers' lock)."""
        try:
            reader = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        except sqlite3.Error as exc:
            raise StateError(_explain(self.path, exc)) from exc
        try:
            by_age = reader.execute(
                "SELECT COALESCE(MIN(id), (SELECT COALESCE(MAX(id), 0) + 1 FROM journal)) "
                "FROM journal WHERE t >= ?", (now - max_age_seconds,)).fetchone()[0]
            over = reader.execute(
                "SELECT id FROM (SELECT id, SUM(length(payload) + ?) OVER (ORDER BY id DESC) "
                "AS kept FROM journal WHERE id >= ?) WHERE kept > ? ORDER BY id DESC LIMIT 1",
                (ROW_OVERHEAD_BYTES, by_age, max_bytes)).fetchone()
        except sqlite3.Error as exc:
            raise StateError(_explain(self.path, exc)) from exc
        finally:
            reader.close()
        return max(int(by_age), int(over[0]) + 1 if over is not None else 0)

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
