from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from tfwarden.core.clock import SystemClock
from tfwarden.daemon.jobs import JobRunner
from tfwarden.daemon.recorder import Recorder


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
        await asyncio.sleep(30)

    async def scenario() -> int:
        runner.start()
        runner.add("ok", ok, 0.05)
        runner.add("broken", broken, 0.05)
        runner.add("slow", slow, 0.05)
        await asyncio.wait_for(started.wait(), 5)
        await asyncio.sleep(0.3)
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
    started = asyncio.Event()

    async def short() -> None:
        started.set()
        await asyncio.sleep(0.2)

    async def scenario() -> int:
        runner.start()
        runner.add("short", short, 0.05)
        await asyncio.wait_for(started.wait(), 5)
        return await runner.drain(grace_seconds=2)

    assert asyncio.run(scenario()) == 0
    assert runner.status()[0]["last_outcome"] == "success"
