"""Clocks: injected wherever time matters so tests and backtests control it."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Source of time. ``now`` is wall-clock Unix seconds; ``monotonic`` never goes backwards."""

    def now(self) -> float: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock set by hand: ``tfwarden backtest`` moves it to each trace event's time; tests
    move it with ``advance``."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def now(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t

    def set(self, t: float) -> None:
        self.t = t

    def advance(self, seconds: float) -> None:
        self.t += seconds
