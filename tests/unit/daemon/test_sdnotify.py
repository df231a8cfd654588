from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    """Receives notifications as they arrive (a full datagram queue would block the sender)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock, self.done = sock, threading.Event()
        self.messages: list[str] = []

    def run(self) -> None:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                if self.done.is_set():  # everything sent before stop() has been read
                    return

    def stop(self) -> list[str]:
        self.done.set()
        self.join()
        return self.messages


class Watchdog:
    """``watchdog_loop`` as a task, writing what it does into ``events`` beside the test's own
    marks: "ping" for each WATCHDOG=1 sent, the lag (a float) of each wake-up."""

    def __init__(self, path: str, **kwargs: Any) -> None:
        self.events: list[str | float] = []
        self.notifier, self.kwargs = SystemdNotifier(path, 100_000), kwargs

    def start(self) -> asyncio.Task[None]:
        return asyncio.create_task(watchdog_loop(
            self.notifier, 0.05, max_lag_seconds=0.5, on_ping=lambda: self.events.append("ping"),
            on_lag=self.events.append, **self.kwargs))

    def mark(self, name: str) -> None:
        self.events.append(name)

    def after(self, mark: str) -> list[str | float]:
        return self.events[self.events.index(mark) + 1:] if mark in self.events else []

    def between(self, first: str, second: str) -> list[str | float]:
        return self.events[self.events.index(first) + 1:self.events.index(second)]

    async def until(self, condition: Callable[[], bool]) -> None:
        """Let the loop run until ``condition`` holds (bounded: a guard against a hang only)."""
        deadline = time.monotonic() + 30
        while not condition():
            assert time.monotonic() < deadline, self.events
            await asyncio.sleep(0.01)


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
    watchdog = Watchdog(path)

    async def scenario() -> None:
        task = watchdog.start()
        await watchdog.until(lambda: watchdog.events.count("ping") >= 3)
        watchdog.mark("blocked")
        time.sleep(0.6)  # the event loop is stuck: no coroutine runs
        watchdog.mark("unblocked")
        await watchdog.until(lambda: watchdog.after("unblocked").count("ping") >= 2)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    collector = Collector(sock)
    collector.start()
    asyncio.run(scenario())
    received = collector.stop()
    assert watchdog.between("blocked", "unblocked") == []  # nothing pings from outside the loop
    # the wake-up that spanned the block was at least 0.6 - 0.05 s late (sleeps never end early),
    # past max_lag_seconds: that round sent nothing; the next ones ping again
    late, following = watchdog.after("unblocked")[:2]
    assert isinstance(late, float) and late > 0.5 and following != "ping"
    assert received.count("WATCHDOG=1") == watchdog.events.count("ping")


def test_watchdog_withholds_pings_when_not_progressing(listener) -> None:  # type: ignore[no-untyped-def]
    path, sock = listener
    progressing = {"ok": True}
    watchdog = Watchdog(path, is_progressing=lambda: progressing["ok"])

    def wake_ups_after(mark: str) -> int:
        return sum(isinstance(e, float) for e in watchdog.after(mark))

    async def scenario() -> None:
        task = watchdog.start()
        await watchdog.until(lambda: watchdog.events.count("ping") >= 3)
        progressing["ok"] = False
        watchdog.mark("stalled")
        await watchdog.until(lambda: wake_ups_after("stalled") >= 5)
        progressing["ok"] = True
        watchdog.mark("progressing")
        await watchdog.until(lambda: "ping" in watchdog.after("progressing"))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    collector = Collector(sock)
    collector.start()
    asyncio.run(scenario())
    received = collector.stop()
    assert "ping" not in watchdog.between("stalled", "progressing")  # five rounds, no ping
    assert received.count("WATCHDOG=1") == watchdog.events.count("ping")
