"""The PostgreSQL state store against a real server (tests/postgres.py), beyond the contract
suite (tests/contract/test_state_stores.py): the append-only guards hold for any client, the
schema migrates once per database (replicas race for it), replicas share one journal, a lost
server is one readable error and the store works again once it is back, and a daemon configured
with ``state.kind: postgres`` journals there."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.helpers import DaemonProcess, free_port, minimal_config
from tfwarden.core.errors import StateError
from tfwarden.daemon.pgstate import SCHEMA_VERSION, PostgresStateStore


def test_no_client_can_rewrite_the_journal_or_lower_its_floor(postgres: Any) -> None:
    dsn = postgres.new_database()
    store = PostgresStateStore(dsn)
    first = store.append(1.0, "decision", {"action": "rollback"}, model="m")
    store.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for sql in ("UPDATE journal SET kind = 'edited'", "DELETE FROM journal",
                    "UPDATE journal_floor SET floor_id = -1", "DELETE FROM journal_floor"):
            with pytest.raises(psycopg.errors.RaiseException):
                conn.execute(sql)
        assert conn.execute("SELECT id, kind FROM journal").fetchall() == [(first, "decision")]


def test_the_schema_migrates_once_even_when_replicas_open_it_together(postgres: Any) -> None:
    dsn = postgres.new_database()
    opened: list[PostgresStateStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            opened.append(PostgresStateStore(dsn))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(opened) == 4
    assert {store.schema_version for store in opened} == {SCHEMA_VERSION}
    for store in opened:
        store.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE tfwarden_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(StateError, match="newer than this tfwarden supports"):
        PostgresStateStore(dsn)


def test_replicas_share_one_journal_with_unique_increasing_ids(postgres: Any) -> None:
    dsn = postgres.new_database()
    stores = [PostgresStateStore(dsn), PostgresStateStore(dsn)]
    ids: list[list[int]] = [[], []]

    def write(which: int) -> None:
        for i in range(50):
            with stores[which].transaction():
                ids[which].append(stores[which].append(float(i), "tick", {"replica": which}))
                stores[which].put(f"replica/{which}", i, float(i))

    threads = [threading.Thread(target=write, args=(n,)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(a < b for a, b in zip(ids[0], ids[0][1:], strict=False))
    assert len(set(ids[0]) | set(ids[1])) == 100
    seen = stores[1].entries(limit=1000)
    assert sorted(e.id for e in seen) == sorted(ids[0] + ids[1])
    assert stores[0].get("replica/1") == 49 and stores[1].get("replica/0") == 49
    for store in stores:
        store.close()


def test_an_unreachable_server_is_one_line_without_the_password() -> None:
    dsn = f"host=127.0.0.1 port={free_port()} user=tfwarden password=hunter2 dbname=state"
    with pytest.raises(StateError) as caught:
        PostgresStateStore(dsn, connect_timeout=1.0)
    message = str(caught.value)
    assert "\n" not in message and "hunter2" not in message
    assert message.startswith("postgresql://127.0.0.1:") and "cannot connect" in message


def test_calls_fail_cleanly_while_the_server_restarts_and_work_again_after(postgres: Any) -> None:
    store = PostgresStateStore(postgres.new_database(), connect_timeout=2.0)
    before = store.append(1.0, "tick", {"n": 1})
    postgres.stop()
    try:
        with pytest.raises(StateError) as caught:
            store.append(2.0, "tick", {"n": 2})
        assert "\n" not in str(caught.value)
    finally:
        postgres.start()
    deadline = time.monotonic() + 20
    while True:  # the pool drops the dead connections and opens new ones
        try:
            after = store.append(3.0, "tick", {"n": 3})
            break
        except StateError:
            assert time.monotonic() < deadline, "the store did not recover"
            time.sleep(0.2)
    assert [e.payload["n"] for e in store.entries()] == [1, 3] and after > before
    store.close()


def test_a_daemon_journals_in_postgres(postgres: Any, tmp_path: Path) -> None:
    dsn = postgres.new_database()
    (tmp_path / "pg.dsn").write_text(dsn + "\n")
    port = free_port()
    config = minimal_config(tmp_path, port, "state: {kind: postgres, dsn_file: ./pg.dsn}\n")
    daemon = DaemonProcess(config, port)
    try:
        daemon.wait_ready(30)
        journal = daemon.client.get("/api/v1/journal").json()["entries"]
        assert journal and journal[0]["kind"] == "daemon_starting"
        assert daemon.terminate()[0] == 0
    finally:
        daemon.close()
    with psycopg.connect(dsn) as conn:
        kinds = [row[0] for row in conn.execute("SELECT kind FROM journal ORDER BY id")]
    assert kinds[0] == "daemon_starting" and "daemon_stopped" in kinds
    assert not (tmp_path / "state" / "state.db").exists()  # nothing went to SQLite


def test_a_postgres_store_without_a_dsn_file_is_a_config_error(tmp_path: Path) -> None:
    config = minimal_config(tmp_path, free_port(), "state: {kind: postgres}\n")
    out = subprocess.run([sys.executable, "-m", "tfwarden.daemon", "check-config", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "state" in out.stderr and "dsn_file" in out.stderr
