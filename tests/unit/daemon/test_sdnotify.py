from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from tfwarden.daemon.sdnotify import SystemdNotifier, watchdog_loop


@pytest.fixture
def listener(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.05)
    yield path, sock
    sock.close()


class Collector(threading.Thread):
    """Receives notifications as they arrive, stamping each with its arrival time."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock, self.messages, self.done = sock, [], threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except TimeoutError:
                continue

    def stop(self) -> list[tuple[float, str]]:
        self.done.set()
        self.join()
        return self.messages


def test_from_environment_reads_and_clears_variables(
    monkeypatch: pytest.MonkeyPatch, listener
) -> None:  # type: ignore[no-untyped-def]
    path, sock = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = SystemdNotifier.from_environment()
    assert notifier.enabled and notifier.watchdog_usec == 2_000_000
    assert "NOTIFY_SOCKET" not in os.environ and "WATCHDOG_USEC" not in os.environ
    assert notifier.ready("up")
    message = sock.recv(4096).decode()
    assert "READY=1" in message.splitlines() and "STATUS=up" in message.splitlines()


def test_watchdog_for_another_pid_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", "1")
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = SystemdNotifier.from_environment()
    assert notifier.watchdog_usec is None and not notifier.enabled
    assert notifier.notify("READY=1") is False


def test_abstract_socket_address() -> None:
    name = f"tfwarden-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        assert SystemdNotifier("@" + name).notify("STATUS=x")
        assert sock.recv(100) == b"STATUS=x"
    finally:
        sock.close()


def test_watchdog_pings_stop_while_the_loop_is_blocked(listener) -> None:  # type: ignore[no-untyped-def]
    path, sock = listener
    notifier = SystemdNotifier(path, 100_000)

    async def scenario() -> tuple[float, float]:
        task = asyncio.create_task(watchdog_loop(notifier, 0.05, max_lag_seconds=0.5))
        await asyncio.sleep(0.3)
        blocked_from = time.monotonic()
        time.sleep(0.6)  # the event loop is stuck: no coroutine runs
        blocked_to = time.monotonic()
        await asyncio.sleep(0.3)
        task.cancel()
        return blocked_from, blocked_to

    collector = Collector(sock)
    collector.start()
    blocked_from, blocked_to = asyncio.run(scenario())
    pings = [t for t, m in collector.stop() if m == "WATCHDOG=1"]
    assert len([t for t in pings if t < blocked_from]) >= 3
    assert not [t for t in pings if blocked_from + 0.06 < t < blocked_to]
    assert len([t for t in pings if t > blocked_to]) >= 2


def test_watchdog_withholds_pings_when_not_progressing(listener) -> None:  # type: ignore[no-untyped-def]
    path, sock = listener
    notifier = SystemdNotifier(path, 100_000)
    progressing = {"ok": True}

    async def scenario() -> None:
        task = asyncio.create_task(watchdog_loop(
            notifier, 0.05, max_lag_seconds=0.5, is_progressing=lambda: progressing["ok"]))
        await asyncio.sleep(0.3)
        progressing["ok"] = False
        await asyncio.sleep(0.05)
        drain_point.append(time.monotonic())
        await asyncio.sleep(0.4)
        task.cancel()

    drain_point: list[float] = []
    collector = Collector(sock)
    collector.start()
    asyncio.run(scenario())
    pings = [t for t, m in collector.stop() if m == "WATCHDOG=1"]
    assert len(pings) >= 3
    assert not [t for t in pings if t > drain_point[0]]
