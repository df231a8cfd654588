"""Periodic jobs on APScheduler 3's AsyncIOScheduler, with per-job outcome tracking.

Every job is a coroutine function wrapped so that its last run, outcome and duration are known to
``GET /api/v1/status`` and the metrics, and so that shutdown can wait for in-flight runs (bounded)
before cancelling them. Jobs run with max_instances=1 and coalesce: a slow run delays, never
stacks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from tfwarden.core.clock import Clock
from tfwarden.daemon.recorder import Recorder

log = logging.getLogger("tfwarden.jobs")

JobFunc = Callable[[], Awaitable[None]]


@dataclass
class JobStatus:
    """What is known about one job's runs."""

    name: str
    interval_seconds: float
    runs: int = 0
    last_start: float | None = None
    last_duration_seconds: float | None = None
    last_outcome: str | None = None  # success | error | cancelled
    last_error: str | None = None


class JobRunner:
    """Registers jobs on a scheduler and records how each run ended."""

    def __init__(self, recorder: Recorder, clock: Clock) -> None:
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        self._recorder = recorder
        self._clock = clock
        self._jobs: dict[str, JobStatus] = {}
        self._in_flight: set[asyncio.Task[Any]] = set()

    def start(self) -> None:
        self.scheduler.start()

    def add(self, name: str, func: JobFunc, interval_seconds: float, jitter: float = 0,
            run_now: bool = False) -> None:
        """Run ``func`` every ``interval_seconds`` (replacing a job of the same name), starting
        at once when ``run_now``."""
        self._jobs[name] = JobStatus(name, interval_seconds)
        extra: dict[str, Any] = {"next_run_time": datetime.now(UTC)} if run_now else {}
        self.scheduler.add_job(
            self._run, "interval", args=(name, func), id=name, name=name,
            seconds=interval_seconds, jitter=jitter or None, max_instances=1, coalesce=True,
            misfire_grace_time=max(1, int(interval_seconds)), replace_existing=True, **extra,
        )

    def remove(self, name: str) -> None:
        if self._jobs.pop(name, None) is not None:
            self.scheduler.remove_job(name)

    async def _run(self, name: str, func: JobFunc) -> None:
        status = self._jobs.get(name)
        if status is None:
            return
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        status.runs += 1
        status.last_start = self._clock.now()
        started = time.monotonic()
        outcome, error = "success", None
        try:
            await func()
        except asyncio.CancelledError:
            outcome, error = "cancelled", "cancelled at shutdown"
            raise
        except Exception as exc:  # a failing job must never stop the scheduler
            outcome, error = "error", f"{type(exc).__name__}: {exc}"
            log.error("job %s failed: %s", name, error)
        finally:
            duration = time.monotonic() - started
            status.last_duration_seconds = duration
            status.last_outcome, status.last_error = outcome, error
            self._recorder.job_ran(name, outcome, duration, self._clock.now())
            if task is not None:
                self._in_flight.discard(task)

    def status(self) -> list[dict[str, Any]]:
        out = []
        for name, status in sorted(self._jobs.items()):
            job = self.scheduler.get_job(name) if self.scheduler.running else None
            next_run = job.next_run_time.timestamp() if job and job.next_run_time else None
            out.append({**status.__dict__, "next_run": next_run})
        return out

    async def drain(self, grace_seconds: float) -> int:
        """Stop scheduling, give in-flight runs ``grace_seconds``, cancel the rest; return how
        many were cancelled."""
        if self.scheduler.running:
            self.scheduler.pause()
        pending = set(self._in_flight)
        cancelled = 0
        if pending:
            log.info("waiting up to %.1fs for %d in-flight job(s)", grace_seconds, len(pending))
            _, still = await asyncio.wait(pending, timeout=grace_seconds)
            for task in still:
                task.cancel()
                cancelled += 1
            if still:
                await asyncio.wait(still, timeout=1)
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        return cancelled
