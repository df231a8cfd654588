"""asyncio on virtual time, for tests of schedules (send rates, backoffs) that must not depend
on how fast or loaded the machine is.

``run(main)`` is ``asyncio.run(main)`` on a loop whose ``time()`` starts at 0 and, whenever no
callback is ready, jumps straight to the next timer instead of waiting for it:
``await asyncio.sleep(30)`` returns at once with ``loop.time()`` 30 s later, and the code under
test sees exactly the schedule it asked for. Only for code that waits on the loop's own timers
(``asyncio.sleep``, ``asyncio.timeout``, ``loop.call_later``); a wait on a thread, a process or a
socket still takes real time and does not move the clock.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class _Jumping(selectors.BaseSelector):
    """The default selector, except that a wait for a timer moves the clock instead."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._loop = loop
        self._real = selectors.DefaultSelector()

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:  # no timer at all: only I/O (another thread) can wake the loop
            return self._real.select(None)
        ready = self._real.select(0)
        if not ready:
            self._loop.now += timeout
        return ready

    def close(self) -> None:
        self._real.close()

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._real.get_map()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock only moves to the next timer when nothing else can run."""

    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(_Jumping(self))

    def time(self) -> float:
        return self.now


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on a ``VirtualTimeLoop``."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main)


async def until(condition: Callable[[], object], timeout: float = 60.0) -> None:
    """Let other tasks run until ``condition()`` holds; fail after ``timeout`` (virtual) s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.001)
