"""The drift worker as the daemon sees it: a long-lived subprocess behind typed calls.

alibi-detect loads TensorFlow (about 1 GB), which the daemon never does: the engines live in
``python -m tfwarden.detectors.drift.worker``, run through the shared worker runner
(``core.workers.WorkerProcess``: started on first use, framed JSON, a timeout per request,
restarted with exponential backoff after a crash or hang). While it is down every call raises
``WorkerDown`` and the drift checks report ``inconclusive``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tfwarden.core.ports import DriftMetrics, Row
from tfwarden.core.workers import WorkerProcess
from tfwarden.detectors.drift.settings import DriftWorkerSettings

log = logging.getLogger("tfwarden.drift")
CONFIGURE_TIMEOUT_SECONDS = 120.0
STATS_TIMEOUT_SECONDS = 5.0


def worker_command(state_dir: Path) -> list[str]:
    return [sys.executable, "-m", "tfwarden.detectors.drift.worker", "--state-dir", str(state_dir)]


class DriftWorkerClient:
    """Requests to the drift worker (``op`` names as in ``tfwarden.detectors.drift.worker``)."""

    def __init__(self, state_dir: Path, settings: DriftWorkerSettings, metrics: DriftMetrics,
                 command: Sequence[str] | None = None) -> None:
        self.settings, self.metrics = settings, metrics
        self.process = WorkerProcess(
            command or worker_command(state_dir), name="drift",
            env={"TF_CPP_MIN_LOG_LEVEL": "2"}, timeout_seconds=settings.request_timeout_seconds,
            backoff_max_seconds=settings.restart_backoff_max_seconds, on_state=self._state)

    def _state(self, up: bool, restarted: bool) -> None:
        self.metrics.drift_worker(up=up, restarted=restarted)
        if up:
            log.info("drift worker started (generation %d)", self.process.generation)
        elif restarted:
            log.error("drift worker failed (%s); restarting with backoff",
                      self.process.last_error)

    def reconfigure(self, settings: DriftWorkerSettings) -> None:
        self.settings = settings
        self.process.timeout_seconds = settings.request_timeout_seconds
        self.process.backoff_max_seconds = settings.restart_backoff_max_seconds

    @property
    def up(self) -> bool:
        return self.process.up

    @property
    def generation(self) -> int:
        """Grows with each start: the models must be configured again after a restart."""
        return self.process.generation

    async def configure(self, payload: dict[str, Any]) -> dict[str, Any]:
        return await self.process.request("configure", payload, timeout=max(
            CONFIGURE_TIMEOUT_SECONDS, self.settings.request_timeout_seconds))

    async def check(self, model: str, part: str, rows: Sequence[Row]) -> dict[str, Any]:
        return await self.process.request("check", {"model": model, "part": part,
                                                    "rows": list(rows)})

    async def sequential(self, model: str, rows: Sequence[Row],
                         versions: Sequence[int | None]) -> dict[str, Any]:
        return await self.process.request("sequential", {"model": model, "rows": list(rows),
                                                         "versions": list(versions)})

    async def observe(self, model: str, rows: Sequence[Row]) -> dict[str, Any]:
        return await self.process.request("observe", {"model": model, "rows": list(rows)})

    async def sample(self, model: str, n: int) -> dict[str, Any]:
        return await self.process.request("sample", {"model": model, "n": n})

    async def performance(self, model: str, version: int, features: Sequence[str],
                          rows: Sequence[Row], confidence: float) -> dict[str, Any]:
        return await self.process.request("performance", {
            "model": model, "version": version, "features": list(features), "rows": list(rows),
            "confidence": confidence})

    async def stats(self) -> dict[str, Any]:
        return await self.process.request("stats", timeout=STATS_TIMEOUT_SECONDS)

    async def ping(self) -> dict[str, Any]:
        return await self.process.request("ping")

    def status(self) -> dict[str, Any]:
        return {"up": self.process.up, "generation": self.process.generation,
                "restarts": self.process.restarts, "last_error": self.process.last_error}

    async def stop(self) -> None:
        await self.process.stop()
