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
