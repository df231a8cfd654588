"""Worker subprocesses: both sides of the one protocol (framed JSON, ``core.framing``).

The daemon side, :class:`WorkerProcess`, serves the drift worker (long-lived) and the optimizer
workers (one job each): it starts the process on the first request in a session of its own, sends
one request at a time and waits for the answer within a timeout. A crash, a hang or a protocol
error kills the whole process group (a worker's own children die with it), raises
:class:`WorkerDown`, and holds the next start back by a backoff that doubles up to
``backoff_max_seconds`` (an answer resets it). An answer carrying ``error`` raises
:class:`WorkerFailed` and leaves the worker running.

The worker side, :func:`serve`, moves file descriptor 1 to stderr before anything heavy is
imported (library output can never corrupt a frame), then answers frames until stdin closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

from tfwarden.core import framing
from tfwarden.core.errors import FrameError, WorkerDown, WorkerFailed

STDERR_LINES = 20


class WorkerProcess:
    """One worker subprocess, restarted on demand (see the module docstring)."""

    def __init__(self, command: Sequence[str], *, name: str,
                 env: Mapping[str, str | None] | None = None, timeout_seconds: float = 30.0,
                 backoff_max_seconds: float = 60.0, capture_stderr: bool = False,
                 on_state: Callable[[bool, bool], None] | None = None) -> None:
        """``env`` entries are added to (None: removed from) this process's environment;
        ``capture_stderr`` keeps the last lines for error messages instead of passing them
        through; ``on_state(up, restarted)`` is told each start and failure."""
        self.command, self.name = list(command), name
        self.env, self.timeout_seconds = dict(env or {}), timeout_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self._capture = capture_stderr
        self._on_state = on_state or (lambda up, restarted: None)
        self.proc: asyncio.subprocess.Process | None = None
        self.generation = 0  # grows with each start; state kept in the worker is gone after one
        self.restarts = 0
        self.last_error = ""
        self._lock = asyncio.Lock()
        self._next_start = 0.0
        self._backoff = 1.0
        self._ids = 0
        self._stderr: deque[str] = deque(maxlen=STDERR_LINES)
        self._stderr_task: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def stderr_tail(self) -> str:
        return self._stderr[-1] if self._stderr else ""

    async def request(self, op: str, payload: Mapping[str, Any] | None = None,
                      timeout: float | None = None) -> dict[str, Any]:
        """Send ``{"op": op, **payload}`` and return the answer (WorkerDown, WorkerFailed)."""
        wait = timeout or self.timeout_seconds
        async with self._lock:
            await self._ensure()
            proc = self.proc
            assert proc is not None and proc.stdin is not None and proc.stdout is not None
            self._ids += 1
            try:
                proc.stdin.write(framing.encode({**(payload or {}), "op": op, "id": self._ids}))
                await proc.stdin.drain()
                async with asyncio.timeout(wait):
                    header = await proc.stdout.readexactly(framing.HEADER.size)
                    answer = framing.decode(await proc.stdout.readexactly(framing.length(header)))
            except TimeoutError:
                raise await self._failed(f"no answer to {op} in {wait:.0f}s", "timeout") from None
            except (asyncio.IncompleteReadError, ConnectionError, FrameError) as exc:
                if isinstance(exc, FrameError):
                    raise await self._failed(f"protocol error: {exc}", "protocol") from None
                await proc.wait()
                raise await self._failed(f"exited with status {proc.returncode}", "exit") from None
            except asyncio.CancelledError:
                self.kill()
                raise
            if answer.get("id") != self._ids:
                raise await self._failed("answer out of order", "protocol")
            self._backoff = 1.0
            if "error" in answer:
                raise WorkerFailed(str(answer["error"]))
            return answer

    async def _ensure(self) -> None:
        if self.up:
            return
        if self.proc is not None:  # died between requests
            raise await self._failed(f"exited with status {self.proc.returncode}", "exit")
        now = time.monotonic()
        if now < self._next_start:
            raise WorkerDown(f"{self.name} worker down ({self.last_error}); restarting in "
                             f"{math.ceil(self._next_start - now):.0f}s", cause="backoff")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for key, value in self.env.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        self._stderr.clear()
        self.proc = await asyncio.create_subprocess_exec(
            *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE if self._capture else None, env=env,
            limit=framing.MAX_FRAME, start_new_session=True)
        if self._capture:
            self._stderr_task = asyncio.get_running_loop().create_task(self._read_stderr(self.proc))
        self.generation += 1
        self._on_state(True, False)

    async def _read_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        async for line in proc.stderr:
            text = line.decode(errors="replace").strip()
            if text:
                self._stderr.append(text[:300])

    async def _failed(self, reason: str, cause: str) -> WorkerDown:
        """Kill the process, hold the next start back, and return the error to raise."""
        proc, self.proc = self.proc, None
        exit_code = None
        if proc is not None:
            if proc.returncode is None:
                self._kill(proc)
                await proc.wait()
            exit_code = proc.returncode
        if self._stderr_task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._stderr_task, 1.0)
            self._stderr_task = None
        self.last_error = reason
        self.restarts += 1
        self._next_start = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.backoff_max_seconds)
        self._on_state(False, True)
        return WorkerDown(f"{self.name} worker down ({reason})", cause=cause, exit_code=exit_code,
                          stderr_tail=self.stderr_tail)

    def kill(self) -> None:
        """Kill the running process group at once (shutdown, cancellation)."""
        if self.proc is not None and self.proc.returncode is None:
            self._kill(self.proc)

    @staticmethod
    def _kill(proc: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    async def stop(self, grace_seconds: float = 3.0) -> None:
        """Close stdin (the worker's signal to exit), wait, then kill."""
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), grace_seconds)
        except TimeoutError:
            self._kill(proc)
            await proc.wait()
        if self._stderr_task is not None:
            self._stderr_task.cancel()
            self._stderr_task = None
        self._on_state(False, False)


# -- the worker side ----------------------------------------------------------------------------
def protocol_stream() -> IO[bytes]:
    """A private copy of stdout for frames; fd 1 (and ``sys.stdout``) then go to stderr."""
    fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(fd, "wb", buffering=0)


def clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become None, numpy scalars plain numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return clean(value.item())
    return value


def serve(handle: Callable[[dict[str, Any]], dict[str, Any]], name: str) -> int:
    """Answer framed requests on stdin until it closes (exit 0); garbage on stdin ends the
    worker with one line and exit 2. ``handle`` returns the answer, ``{"error": ...}`` for a
    request that cannot be done; an exception it raises is a bug, answered as an error."""
    out = protocol_stream()
    stdin = sys.stdin.buffer
    while True:
        try:
            request = framing.read(stdin)
        except FrameError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            return 2
        if request is None:
            return 0
        try:
            response = dict(clean(handle(request)))
        except Exception:  # a bug: say so, keep serving
            response = {"error": "internal error: " + traceback.format_exc(limit=3)[-800:]}
        response["id"] = request.get("id")
        out.write(framing.encode(response))
