"""The state store on PostgreSQL: what several replicas share (``state.kind: postgres``).

Same contract as :class:`tfwarden.daemon.state.SQLiteStateStore` (``core.ports.StateStore``;
``tests/contract/test_state_stores.py`` runs over both): an append-only journal whose rows below
a retention floor alone may be deleted, plus a key-value table, with versioned migrations. The
guards are PostgreSQL triggers, so no client (a replica, an operator's psql) can rewrite history.

Reached through psycopg 3 with a small connection pool (psycopg_pool). Calls are synchronous,
as SQLite's are: a statement on a nearby server takes well under a millisecond, and the store
is called from the event loop a few times per action, not per probe. Imported only when the
configuration asks for PostgreSQL, so the default daemon does not load psycopg.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg_pool
from psycopg.conninfo import conninfo_to_dict

from tfwarden.core.errors import LeaseLost, StateError
from tfwarden.core.ports import JournalEntry

# Each entry moves the schema from version i to i+1; never edit a shipped entry, append one.
MIGRATIONS: Sequence[str] = (
    """
    CREATE TABLE journal (
        id      BIGSERIAL PRIMARY KEY,
        t       DOUBLE PRECISION NOT NULL,
        kind    TEXT NOT NULL,
        model   TEXT,
        payload TEXT NOT NULL
    );
    CREATE INDEX journal_kind ON journal (kind, id);
    CREATE INDEX journal_model ON journal (model, id);
    CREATE TABLE journal_floor (
        one      INTEGER PRIMARY KEY CHECK (one = 1),
        floor_id BIGINT NOT NULL
    );
    INSERT INTO journal_floor (one, floor_id) VALUES (1, 0);
    CREATE FUNCTION tfwarden_journal_guard() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' OR OLD.id >= (SELECT floor_id FROM journal_floor) THEN
            RAISE EXCEPTION 'journal is append-only';
        END IF;
        RETURN OLD;
    END $$;
    CREATE TRIGGER journal_guard BEFORE UPDATE OR DELETE ON journal
        FOR EACH ROW EXECUTE FUNCTION tfwarden_journal_guard();
    CREATE FUNCTION tfwarden_floor_guard() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            RAISE EXCEPTION 'the journal floor stays';
        END IF;
        IF NEW.floor_id < OLD.floor_id THEN
            RAISE EXCEPTION 'the journal floor never moves down';
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER journal_floor_guard BEFORE UPDATE OR DELETE ON journal_floor
        FOR EACH ROW EXECUTE FUNCTION tfwarden_floor_guard();
    CREATE TABLE kv (
        key       TEXT PRIMARY KEY,
        value     TEXT NOT NULL,
        updated_t DOUBLE PRECISION NOT NULL
    );
    """,
    # Replicas: who is alive, who owns which unit until when (times are the server's clock, so
    # replicas' clocks never matter), with a fencing token that only grows; and at most one
    # outcome per intent, whichever replica journals it.
    """
    CREATE SEQUENCE lease_token;
    CREATE TABLE leases (
        unit        TEXT PRIMARY KEY,
        owner       TEXT,
        token       BIGINT NOT NULL DEFAULT 0,
        expires_at  DOUBLE PRECISION NOT NULL DEFAULT 0,
        acquired_at DOUBLE PRECISION NOT NULL DEFAULT 0
    );
    CREATE TABLE replicas (
        name       TEXT PRIMARY KEY,
        url        TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL
    );
    CREATE FUNCTION tfwarden_lease_guard() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.token < OLD.token THEN
            RAISE EXCEPTION 'a lease token never moves down';
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER lease_guard BEFORE UPDATE ON leases
        FOR EACH ROW EXECUTE FUNCTION tfwarden_lease_guard();
    CREATE UNIQUE INDEX journal_one_outcome ON journal (((payload::jsonb) ->> 'intent_id'))
        WHERE kind IN ('action_done', 'action_failed', 'edge_action_done', 'edge_action_failed');
    """,
)
NOW = "EXTRACT(EPOCH FROM clock_timestamp())"  # the server's clock, the one all replicas share
SCHEMA_VERSION = len(MIGRATIONS)
MIGRATION_LOCK = 0x7466776172646E  # pg_advisory_xact_lock key: replicas migrate one at a time
ROW_OVERHEAD_BYTES = 96  # as SQLite's store counts a row beyond its payload
PRUNE_BATCH = 2000
# A server that stops answering (a host down, a partition: packets dropped, nothing refused)
# fails a call within seconds instead of TCP's 15 minutes of retransmissions, and a statement
# never runs for longer than a lease lasts (libpq connection parameters).
LIBPQ_TIMEOUTS = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
                  "keepalives_count": 2, "tcp_user_timeout": 5000,
                  "options": "-c statement_timeout=30000"}
RETRY_SECONDS = 2.0  # an unreachable server: how often a call tries it again
WAIT_SECONDS = 1.0  # how long a call waits for a pooled connection


def describe(dsn: str) -> str:
    """The server and database a DSN names, without its password (for messages)."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "postgresql (unparsable DSN)"
    host = parts.get("host") or "localhost"
    port = parts.get("port") or "5432"
    return f"postgresql://{host}:{port}/{parts.get('dbname') or parts.get('user') or ''}"


class PostgresStateStore:
    """StateStore in a PostgreSQL database (tables ``journal``, ``journal_floor``, ``kv``,
    ``tfwarden_schema``)."""

    def __init__(self, dsn: str, *, max_connections: int = 4, connect_timeout: float = 10.0) -> None:
        self.where = describe(dsn)
        self._local = threading.local()  # each thread's transaction: its connection, depth
        self._unreachable_at: float | None = None
        self._unreachable_since, self._unreachable_error = 0.0, ""
        try:
            self._pool = psycopg_pool.ConnectionPool(
                dsn, min_size=1, max_size=max_connections, open=False,
                kwargs={"autocommit": True, **_timeouts(dsn)}, timeout=connect_timeout,
                name="tfwarden-state",
                check=psycopg_pool.ConnectionPool.check_connection)  # a restarted server
            self._pool.open(wait=True, timeout=connect_timeout)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise StateError(f"{self.where}: cannot connect ({_first_line(exc)})") from exc
        try:
            self._migrate()
        except StateError:
            self._pool.close()
            raise

    @property
    def schema_version(self) -> int:
        row = self._one("SELECT version FROM tfwarden_schema", ())
        return int(row[0]) if row else 0

    def _migrate(self) -> None:
        with self.transaction():
            self._run("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            self._run("CREATE TABLE IF NOT EXISTS tfwarden_schema ("
                      "one INTEGER PRIMARY KEY CHECK (one = 1), version INTEGER NOT NULL)", ())
            self._run("INSERT INTO tfwarden_schema VALUES (1, 0) ON CONFLICT DO NOTHING", ())
            current = self.schema_version
            if current > SCHEMA_VERSION:
                raise StateError(
                    f"{self.where}: schema version {current} is newer than this tfwarden "
                    f"supports ({SCHEMA_VERSION}); upgrade tfwarden or use another database")
            for version in range(current, SCHEMA_VERSION):
                self._run(MIGRATIONS[version], ())
                self._run("UPDATE tfwarden_schema SET version = %s", (version + 1,))

    def append(self, t: float, kind: str, payload: dict[str, Any], model: str | None = None) -> int:
        row = self._one("INSERT INTO journal (t, kind, model, payload) VALUES (%s, %s, %s, %s) "
                        "RETURNING id", (t, kind, model, json.dumps(payload, sort_keys=True)))
        assert row is not None
        return int(row[0])

    def entries(self, after_id: int = 0, limit: int = 100, kind: str | None = None,
                model: str | None = None, newest_first: bool = False) -> list[JournalEntry]:
        sql = "SELECT id, t, kind, model, payload FROM journal WHERE id > %s"
        args: list[Any] = [after_id]
        if kind is not None:
            sql += " AND kind = %s"
            args.append(kind)
        if model is not None:
            sql += " AND model = %s"
            args.append(model)
        sql += " ORDER BY id DESC LIMIT %s" if newest_first else " ORDER BY id LIMIT %s"
        args.append(limit)
        rows = self._all(sql, args)
        return [JournalEntry(int(r[0]), r[1], r[2], r[3], json.loads(r[4])) for r in rows]

    def put(self, key: str, value: Any, t: float) -> None:
        self._run("INSERT INTO kv (key, value, updated_t) VALUES (%s, %s, %s) ON CONFLICT (key) "
                  "DO UPDATE SET value = excluded.value, updated_t = excluded.updated_t",
                  (key, json.dumps(value, sort_keys=True), t))

    def put_new(self, key: str, value: Any, t: float) -> Any:
        row = self._one("INSERT INTO kv (key, value, updated_t) VALUES (%s, %s, %s) ON CONFLICT "
                        "(key) DO UPDATE SET value = excluded.value, updated_t = excluded.updated_t "
                        "WHERE kv.value = 'null' RETURNING value",
                        (key, json.dumps(value, sort_keys=True), t))
        return json.loads(row[0]) if row is not None else self.get(key)

    def get(self, key: str) -> Any:
        row = self._one("SELECT value FROM kv WHERE key = %s", (key,))
        return None if row is None else json.loads(row[0])

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything written inside commits together or not at all (nests; the outermost
        commits). A transaction is its thread's, on its own pooled connection: another
        thread's statements (the lease rounds, retention) neither wait for it nor join it,
        and PostgreSQL isolates the two."""
        local = self._local
        if getattr(local, "depth", 0):
            local.depth += 1
            try:
                yield
            finally:
                local.depth -= 1
            return
        try:
            with self._connection() as conn, conn.transaction():
                local.tx, local.depth = conn, 1
                try:
                    yield
                finally:
                    local.tx, local.depth = None, 0
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise StateError(f"{self.where}: {_first_line(exc)}") from exc

    def prune(self, now: float, max_age_seconds: float, max_bytes: int) -> int:
        """Journal retention, as SQLite's store does it: raise the floor, then delete below it
        in short transactions of ``PRUNE_BATCH`` rows."""
        target = self._retention_floor(now, max_age_seconds, max_bytes)
        pruned = 0
        while True:
            with self.transaction():
                row = self._one("SELECT floor_id FROM journal_floor FOR UPDATE", ())
                assert row is not None
                current = int(row[0])
                if current >= target:
                    return pruned
                oldest = self._one("SELECT COALESCE(MIN(id), 0) FROM journal", ())
                assert oldest is not None
                floor = min(target, max(current, int(oldest[0])) + PRUNE_BATCH)
                self._run("UPDATE journal_floor SET floor_id = %s", (floor,))
                pruned += self._run("DELETE FROM journal WHERE id < %s", (floor,))

    def _retention_floor(self, now: float, max_age_seconds: float, max_bytes: int) -> int:
        by_age = self._one(
            "SELECT COALESCE(MIN(id), (SELECT COALESCE(MAX(id), 0) + 1 FROM journal)) "
            "FROM journal WHERE t >= %s", (now - max_age_seconds,))
        assert by_age is not None
        over = self._one(
            "SELECT id FROM (SELECT id, SUM(octet_length(payload) + %s) OVER (ORDER BY id DESC) "
            "AS kept FROM journal WHERE id >= %s) AS sized WHERE kept > %s ORDER BY id DESC "
            "LIMIT 1", (ROW_OVERHEAD_BYTES, by_age[0], max_bytes))
        return max(int(by_age[0]), int(over[0]) + 1 if over is not None else 0)

    def checkpoint(self) -> None:
        """Nothing to fold back: PostgreSQL's own checkpoints and autovacuum do it."""

    def close(self) -> None:
        self._pool.close()

    # -- statements ------------------------------------------------------------------------
    def _execute(self, sql: str, args: Sequence[Any], fetch: str) -> Any:
        try:
            params = args or None  # none: the simple protocol (a migration's many statements)
            tx = getattr(self._local, "tx", None)
            if tx is not None:
                return _fetch(tx.execute(sql, params), fetch)
            with self._connection() as conn:
                return _fetch(conn.execute(sql, params), fetch)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise StateError(f"{self.where}: {_first_line(exc)}") from exc

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection. A server found unreachable is tried again at most every
        ``RETRY_SECONDS`` (each try waits ``WAIT_SECONDS``); calls in between fail at once, so a
        database that is away does not hold the event loop for a connect timeout per call."""
        if self._unreachable_at is not None and \
                time.monotonic() - self._unreachable_at < RETRY_SECONDS:
            raise StateError(f"{self.where}: unreachable since {self._unreachable_for():.0f}s "
                             f"({self._unreachable_error}); trying again every {RETRY_SECONDS:.0f}s")
        try:
            with self._pool.connection(timeout=WAIT_SECONDS) as conn:
                yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout) as exc:
            if _server_away(exc):
                if self._unreachable_at is None:
                    self._unreachable_since = time.monotonic()
                self._unreachable_at, self._unreachable_error = time.monotonic(), _first_line(exc)
            raise
        self._unreachable_at = None

    def _unreachable_for(self) -> float:
        return time.monotonic() - self._unreachable_since

    def _run(self, sql: str, args: Sequence[Any]) -> int:
        return int(self._execute(sql, args, "rowcount"))

    def _one(self, sql: str, args: Sequence[Any]) -> tuple[Any, ...] | None:
        return self._execute(sql, args, "one")  # type: ignore[no-any-return]

    def _all(self, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
        return self._execute(sql, args, "all")  # type: ignore[no-any-return]


class PostgresLeases:
    """The ``leases`` and ``replicas`` tables: which replica owns which unit until when, with
    a fencing token drawn from one sequence at every change of owner (``daemon.leases`` decides
    what to claim; this says it to the database). Claims take rows ``FOR UPDATE SKIP LOCKED``,
    as Airflow's HA scheduler does: two replicas claiming at once take different units, and
    neither waits for the other."""

    def __init__(self, store: PostgresStateStore) -> None:
        self.store = store

    def heartbeat(self, replica: str, url: str, ttl: float) -> list[str]:
        """Keep ``replica`` alive for ``ttl`` seconds; the names of the live replicas."""
        with self.store.transaction():
            self.store._run(
                f"INSERT INTO replicas (name, url, started_at, expires_at) VALUES "
                f"(%s, %s, {NOW}, {NOW} + %s) ON CONFLICT (name) DO UPDATE SET "
                "url = excluded.url, expires_at = excluded.expires_at", (replica, url, ttl))
            rows = self.store._all(f"SELECT name FROM replicas WHERE expires_at > {NOW} "
                                   "ORDER BY name", ())
        return [r[0] for r in rows]

    def leave(self, replica: str, held: dict[str, int]) -> None:
        """A replica stopping: its leases are free at once (not after the TTL)."""
        with self.store.transaction():
            self.release(replica, held)
            self.store._run("DELETE FROM replicas WHERE name = %s", (replica,))

    def register(self, units: Sequence[str]) -> None:
        self.store._run("INSERT INTO leases (unit) SELECT unnest(%s::text[]) "
                        "ON CONFLICT DO NOTHING", (list(units),))

    def renew(self, replica: str, held: dict[str, int], ttl: float) -> set[str]:
        """Extend the leases whose token is still this replica's; the units renewed. A lease
        that expired while nobody claimed it (the database was away) renews: its token did not
        change, so nobody acted on the unit meanwhile."""
        if not held:
            return set()
        rows = self.store._all(
            f"UPDATE leases SET expires_at = {NOW} + %s WHERE owner = %s AND (unit, token) IN "
            "(SELECT * FROM unnest(%s::text[], %s::bigint[])) RETURNING unit",
            (ttl, replica, list(held), list(held.values())))
        return {r[0] for r in rows}

    def claim(self, replica: str, candidates: Sequence[str], count: int,
              ttl: float) -> dict[str, int]:
        """Take up to ``count`` of ``candidates`` that nobody holds (free, expired, or left by
        an earlier process of the same name), each with a new token."""
        if count <= 0 or not candidates:
            return {}
        with self.store.transaction():
            free = self.store._all(
                f"SELECT unit FROM leases WHERE unit = ANY(%s) AND (owner IS NULL OR "
                f"expires_at <= {NOW} OR owner = %s) ORDER BY unit LIMIT %s "
                "FOR UPDATE SKIP LOCKED", (list(candidates), replica, count))
            if not free:
                return {}
            rows = self.store._all(
                f"UPDATE leases SET owner = %s, token = nextval('lease_token'), "
                f"expires_at = {NOW} + %s, acquired_at = {NOW} WHERE unit = ANY(%s) "
                "RETURNING unit, token", (replica, ttl, [r[0] for r in free]))
        return {r[0]: int(r[1]) for r in rows}

    def release(self, replica: str, held: dict[str, int]) -> None:
        if held:
            self.store._run(
                "UPDATE leases SET owner = NULL, expires_at = 0 WHERE owner = %s AND "
                "(unit, token) IN (SELECT * FROM unnest(%s::text[], %s::bigint[]))",
                (replica, list(held), list(held.values())))

    def check(self, unit: str, replica: str, token: int) -> None:
        """LeaseLost unless ``replica`` holds ``unit`` with ``token`` and the lease has not
        expired. The row is locked ``FOR SHARE`` to the end of the caller's transaction: a
        claim by another replica (``FOR UPDATE SKIP LOCKED``) skips it until what this one
        records has committed."""
        row = self.store._one(
            f"SELECT owner, token, expires_at - {NOW} FROM leases WHERE unit = %s FOR SHARE",
            (unit,))
        if row is not None and row[0] == replica and int(row[1]) == token and row[2] > 0:
            return
        if row is None or row[0] is None:
            now = "nobody holds it"
        elif row[0] == replica and int(row[1]) == token:
            now = f"the lease expired {-row[2]:.1f}s ago"
        else:
            now = f"replica {row[0]!r} holds it with token {row[1]}"
        raise LeaseLost(f"unit {unit!r}: replica {replica!r} (token {token}) is fenced off: {now}")

    def owners(self) -> list[dict[str, Any]]:
        """Every unit: its owner, token, seconds left (negative: expired) and owner's URL."""
        rows = self.store._all(
            f"SELECT l.unit, l.owner, l.token, l.expires_at - {NOW}, r.url FROM leases l "
            "LEFT JOIN replicas r ON r.name = l.owner ORDER BY l.unit", ())
        return [{"unit": r[0], "owner": r[1], "token": int(r[2]),
                 "expires_in_seconds": round(float(r[3]), 3), "url": r[4]} for r in rows]


def _timeouts(dsn: str) -> dict[str, Any]:
    """``LIBPQ_TIMEOUTS`` where the DSN does not set its own (its ``options`` are kept, ours
    added after them)."""
    try:
        given = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        given = {}
    out: dict[str, Any] = {k: v for k, v in LIBPQ_TIMEOUTS.items() if k not in given}
    if "options" in given and "statement_timeout" not in str(given["options"]):
        out["options"] = f"{given['options']} {LIBPQ_TIMEOUTS['options']}"
    return out


def _server_away(exc: BaseException) -> bool:
    """The server cannot be reached or went down (not a deadlock, a cancelled query...):
    no SQLSTATE (the connection broke), class 08 (connection exception), 57P0x (shutdown)."""
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return True
    state = getattr(exc, "sqlstate", None)
    return state is None or state.startswith(("08", "57P"))


def _fetch(cursor: psycopg.Cursor[Any], fetch: str) -> Any:
    if fetch == "one":
        return cursor.fetchone()
    if fetch == "all":
        return cursor.fetchall()
    return cursor.rowcount


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
