"""Alert delivery that never blocks decisions: a queue per notifier, retries with backoff."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from tfwarden.lifecycle.notifiers.base import Alert, Notifier

log = logging.getLogger("tfwarden.notify")


class Dispatcher:
    """``submit`` returns at once; a worker per notifier delivers in order, retrying failed
    deliveries with exponential backoff (``first_backoff`` doubling to ``max_backoff``) up to
    ``max_attempts`` times, then dropping them with an error line and a counted failure."""

    def __init__(self, notifiers: Sequence[Notifier], *, max_attempts: int = 8,
                 first_backoff: float = 0.5, max_backoff: float = 30.0,
                 on_result: Callable[[str, bool], None] = lambda name, ok: None) -> None:
        self.notifiers = list(notifiers)
        self.max_attempts, self.first_backoff, self.max_backoff = (max_attempts, first_backoff,
                                                                   max_backoff)
        self._on_result = on_result
        self._queues: dict[str, asyncio.Queue[list[Alert]]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}

    def start(self) -> None:
        for notifier in self.notifiers:
            self._start(notifier)

    def _start(self, notifier: Notifier) -> None:
        queue: asyncio.Queue[list[Alert]] = asyncio.Queue(maxsize=1000)
        self._queues[_identity(notifier)] = queue
        self._workers[_identity(notifier)] = asyncio.get_running_loop().create_task(
            self._work(notifier, queue), name=f"notify:{notifier.name}")

    async def reconfigure(self, notifiers: Sequence[Notifier]) -> None:
        """Deliver to ``notifiers`` from now on; one whose kind and URL did not change keeps
        its queue and any delivery in progress."""
        wanted = {_identity(n): n for n in notifiers}
        for name in [n for n in self._workers if n not in wanted]:
            worker = self._workers.pop(name)
            self._queues.pop(name)
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
        for name, notifier in wanted.items():
            if name not in self._workers:
                self._start(notifier)
        self.notifiers = list(notifiers)

    def submit(self, alerts: list[Alert]) -> None:
        for identity, queue in self._queues.items():
            name = identity.split(" ")[0]
            try:
                queue.put_nowait(alerts)
            except asyncio.QueueFull:
                log.error("notifier %s is %d alerts behind; dropping", name, queue.qsize())
                self._on_result(name, False)

    async def _work(self, notifier: Notifier, queue: asyncio.Queue[list[Alert]]) -> None:
        while True:
            alerts = await queue.get()
            delay = self.first_backoff
            for attempt in range(1, self.max_attempts + 1):
                try:
                    await notifier.send(alerts)
                    self._on_result(notifier.name, True)
                    break
                except Exception as exc:  # any delivery failure is retried, then dropped
                    if attempt == self.max_attempts:
                        log.error("notifier %s: giving up after %d attempts: %s", notifier.name,
                                  attempt, exc)
                        self._on_result(notifier.name, False)
                        break
                    log.warning("notifier %s: attempt %d failed (%s); retrying in %.1fs",
                                notifier.name, attempt, exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(self.max_backoff, delay * 2)

    async def stop(self) -> None:
        workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        self._queues.clear()


def _identity(notifier: Notifier) -> str:
    """Kind, URL and timeout: a notifier whose settings changed is a new one."""
    return f"{notifier.name} {notifier.url} {notifier.timeout_seconds}"
