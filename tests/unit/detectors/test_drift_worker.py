"""The drift worker process and its client: protocol, errors, crash and restart (scipy engine)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tfwarden.core import framing
from tfwarden.core.errors import WorkerDown, WorkerFailed
from tfwarden.daemon.recorder import Recorder
from tfwarden.detectors.drift.client import DriftWorkerClient
from tfwarden.detectors.drift.settings import DriftWorkerSettings


def configure_payload(rows: list[list[float]]) -> dict[str, object]:
    return {"model": "m", "engine": "scipy", "features": ["a", "b"], "kinds": None,
            "reference": {"rows": rows}, "online": None, "batch": {"p_value": 0.05}}


def test_configure_check_sample_and_errors(tmp_path: Path) -> None:
    async def scenario() -> None:
        worker = DriftWorkerClient(tmp_path, DriftWorkerSettings(), Recorder())
        rng = np.random.default_rng(0)
        try:
            answer = await worker.configure(configure_payload(rng.normal(size=(500, 2)).tolist()))
            assert answer["reference"]["rows"] == 500 and len(answer["reference"]["hash"]) == 16
            shifted = rng.normal(size=(300, 2)) + [0.0, 1.0]
            report = await worker.check("m", "inputs", shifted.tolist())
            assert "b" in report["drifted_features"] and report["engine"] == "scipy"
            assert report["features"][1]["p_adjusted"] < 1e-6
            sample = await worker.sample("m", 10)
            assert len(sample["rows"]) == 10 and sample["features"] == ["a", "b"]
            with pytest.raises(WorkerFailed, match="model 'x' is not configured"):
                await worker.check("x", "inputs", [[1.0, 2.0]])
            with pytest.raises(WorkerFailed, match=r"rows\[0\]: expected 2 values, got 1"):
                await worker.check("m", "inputs", [[1.0]])
            with pytest.raises(WorkerFailed, match="unknown operation 'nope'"):
                await worker.process.request("nope")
            stats = await worker.stats()
            assert stats["rss_bytes"] > 10 * 2**20 and "m" in stats["models"]
            assert worker.generation == 1  # errors are answers, not crashes
        finally:
            await worker.stop()
    asyncio.run(scenario())


def test_a_dead_worker_is_restarted_with_backoff(tmp_path: Path) -> None:
    async def scenario() -> None:
        worker = DriftWorkerClient(tmp_path, DriftWorkerSettings(restart_backoff_max_seconds=1),
                                   Recorder())
        try:
            await worker.ping()
            assert worker.process.proc is not None
            worker.process.proc.kill()
            with pytest.raises(WorkerDown, match="exited with status -9"):
                await worker.ping()
            with pytest.raises(WorkerDown, match="restarting in"):
                await worker.ping()  # backing off
            await asyncio.sleep(1.1)
            assert (await worker.ping())["pid"] != 0
            assert worker.generation == 2 and worker.process.restarts == 1
        finally:
            await worker.stop()
    asyncio.run(scenario())


def test_a_hung_worker_times_out_and_is_replaced(tmp_path: Path) -> None:
    async def scenario() -> None:
        hang = [sys.executable, "-c", "import time; time.sleep(60)"]
        worker = DriftWorkerClient(tmp_path, DriftWorkerSettings(request_timeout_seconds=0.5),
                                   Recorder(), command=hang)
        with pytest.raises(WorkerDown, match=r"no answer to ping in 0s|no answer to ping in 1s"):
            await worker.ping()
        assert not worker.up and worker.process.restarts == 1
    asyncio.run(scenario())


def test_garbage_on_stdin_ends_the_worker_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "tfwarden.detectors.drift.worker", "--state-dir",
                             str(tmp_path)], input=b"\xff\xff\xff\xff", capture_output=True,
                            timeout=30)
    assert result.returncode == 2
    assert "frame of 4294967295 bytes announced" in result.stderr.decode()
    ok = subprocess.run([sys.executable, "-m", "tfwarden.detectors.drift.worker", "--state-dir",
                         str(tmp_path)],
                        input=framing.encode({"op": "ping", "id": 7}), capture_output=True,
                        timeout=30)
    assert ok.returncode == 0 and framing.decode(ok.stdout[4:])["id"] == 7
