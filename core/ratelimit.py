"""Token buckets per client (capture rows, edge data points): ``rate`` per second each, at most
``rate`` in a burst, and a bounded number of clients: those idle for ``idle_seconds`` (whose
bucket is full again anyway) are forgotten, then the longest idle beyond ``max_clients``, so a
flood of client addresses or device ids cannot grow memory."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateBuckets:
    def __init__(self, rate: float, idle_seconds: float = 300.0, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.idle_seconds, self.max_clients = rate, idle_seconds, max_clients
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, client: object) -> bool:
        return client in self._buckets

    def take(self, client: str, amount: float) -> bool:
        """Take ``amount`` from ``client``'s bucket; False (nothing taken) when it has less."""
        now = self.clock()
        if client not in self._buckets:
            self._evict(now)
        bucket = self._buckets.setdefault(client, _Bucket(self.rate, now))
        bucket.tokens = min(self.rate, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if amount > bucket.tokens:
            return False
        bucket.tokens -= amount
        return True

    def _evict(self, now: float) -> None:
        for client in [c for c, b in self._buckets.items() if now - b.updated > self.idle_seconds]:
            del self._buckets[client]
        if len(self._buckets) >= self.max_clients:
            by_age = sorted(self._buckets, key=lambda c: self._buckets[c].updated)
            for client in by_age[:len(self._buckets) - self.max_clients + 1]:
                del self._buckets[client]
