"""systemd notifications over the plain NOTIFY_SOCKET datagram protocol (no dependency).

``SystemdNotifier.from_environment()`` reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID and
removes them from ``os.environ`` so worker subprocesses never notify systemd in our name.
Without NOTIFY_SOCKET every call is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable

log = logging.getLogger("tfwarden.sdnotify")


class SystemdNotifier:
    """Sends READY=1, STATUS=..., WATCHDOG=1 and STOPPING=1 to systemd."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @classmethod
    def from_environment(cls) -> SystemdNotifier:
        address = os.environ.pop("NOTIFY_SOCKET", None)
        usec = os.environ.pop("WATCHDOG_USEC", None)
        pid = os.environ.pop("WATCHDOG_PID", None)
        watchdog: int | None = None
        if usec and (pid is None or pid == str(os.getpid())):
            try:
                watchdog = int(usec) if int(usec) > 0 else None
            except ValueError:
                log.warning("ignoring WATCHDOG_USEC=%r: not an integer", usec)
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; False (logged once) if it failed."""
        if self._sock is None or self.address is None:
            return False
        target = self.address
        if target.startswith("@"):
            target = "\0" + target[1:]
        try:
            self._sock.sendto("\n".join(assignments).encode(), target)
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def stopping(self, status: str = "Stopping") -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


async def watchdog_loop(
    notifier: SystemdNotifier,
    interval_seconds: float,
    max_lag_seconds: float,
    is_progressing: Callable[[], bool] = lambda: True,
    on_ping: Callable[[], None] = lambda: None,
    on_lag: Callable[[float], None] = lambda lag: None,
) -> None:
    """Ping WATCHDOG=1 every ``interval_seconds`` while the event loop keeps its schedule.

    The pings come from a coroutine on the daemon's own loop, so a blocked loop sends none. A
    loop that runs but is badly late (lag above ``max_lag_seconds``, e.g. CPU starvation from
    repeated long blocking calls) also skips the ping, and so does ``is_progressing()``
    returning False (e.g. the scheduler stopped running jobs), letting systemd restart us.
    """
    while True:
        expected = time.monotonic() + interval_seconds
        await asyncio.sleep(interval_seconds)
        lag = max(0.0, time.monotonic() - expected)
        on_lag(lag)
        if lag > max_lag_seconds:
            log.warning("event loop %.1fs late; withholding WATCHDOG=1", lag)
        elif not is_progressing():
            log.warning("scheduler is not making progress; withholding WATCHDOG=1")
        elif notifier.notify("WATCHDOG=1"):
            on_ping()


async def lag_monitor(interval_seconds: float, on_lag: Callable[[float], None]) -> None:
    """Measure how late the event loop wakes up, every ``interval_seconds``, for as long as
    the daemon runs (``tfwarden_event_loop_lag_seconds``)."""
    while True:
        expected = time.monotonic() + interval_seconds
        await asyncio.sleep(interval_seconds)
        on_lag(max(0.0, time.monotonic() - expected))
