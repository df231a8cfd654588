from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import DaemonProcess, free_port, minimal_config


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[object]:
    """Start real `tfwarden run` processes; all are killed at teardown."""
    started: list[DaemonProcess] = []

    def start(extra: str = "", env: dict[str, str] | None = None) -> DaemonProcess:
        port = free_port()
        config = minimal_config(tmp_path, port, extra)
        proc = DaemonProcess(config, port, env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[object]:
    """One real PostgreSQL server for the whole run (tests.postgres.PostgresServer); each test
    takes a fresh database with ``postgres.new_database()``."""
    from tests.postgres import PostgresServer

    server = PostgresServer()
    yield server
    server.close()
