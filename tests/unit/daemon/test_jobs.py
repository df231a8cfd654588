from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from tfwarden.core.clock import SystemClock
from tfwarden.daemon.jobs import JobRunner
from tfwarden.daemon.recorder import Recorder


async def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Let the scheduler run until ``condition`` holds (bounded: a guard against a hang only)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_jobs_record_outcomes_and_drain_cancels_stragglers() -> None:
    registry = CollectorRegistry()
    runner = JobRunner(Recorder(registry), SystemClock())
    started = asyncio.Event()

    async def ok() -> None:
        pass

    async def broken() -> None:
        raise RuntimeError("boom")

    async def slow() -> None:
        started.set()
        await asyncio.sleep(3600)

    def runs(name: str) -> int:
        return int(next(j["runs"] for j in runner.status() if j["name"] == name))

    async def scenario() -> int:
        runner.start()
        runner.add("ok", ok, 0.05)
        runner.add("broken", broken, 0.05)
        runner.add("slow", slow, 0.05)
        await asyncio.wait_for(started.wait(), 30)
        await until(lambda: runs("ok") >= 2 and runs("broken") >= 2)  # while slow still runs
        return await runner.drain(grace_seconds=0.2)

    cancelled = asyncio.run(scenario())
    assert cancelled == 1
    by_name = {j["name"]: j for j in runner.status()}
    assert by_name["ok"]["last_outcome"] == "success" and by_name["ok"]["runs"] >= 2
    assert by_name["broken"]["last_outcome"] == "error"
    assert by_name["broken"]["last_error"] == "RuntimeError: boom"
    assert by_name["slow"]["last_outcome"] == "cancelled"
    assert by_name["slow"]["runs"] == 1  # max_instances=1: a slow run never stacks
    value = registry.get_sample_value
    assert value("tfwarden_job_runs_total", {"job": "broken", "outcome": "error"}) >= 2
    assert value("tfwarden_job_runs_total", {"job": "slow", "outcome": "cancelled"}) == 1


def test_drain_waits_for_jobs_that_finish_within_grace() -> None:
    runner = JobRunner(Recorder(CollectorRegistry()), SystemClock())
    started, release = asyncio.Event(), asyncio.Event()

    async def short() -> None:
        started.set()
        await release.wait()

    async def scenario() -> int:
        runner.start()
        runner.add("short", short, 0.05)
        await asyncio.wait_for(started.wait(), 30)
        drain = asyncio.create_task(runner.drain(grace_seconds=30))
        await asyncio.sleep(0)  # drain starts waiting for the job in flight
        assert not drain.done()
        release.set()  # the job finishes well within the grace
        return await drain

    assert asyncio.run(scenario()) == 0
    assert runner.status()[0]["last_outcome"] == "success"
