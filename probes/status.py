"""Status probe: gRPC GetModelStatus (REST status calls would inflate Serving's request count).

Returns every version's state and load error per model, plus which version each label points
to when the server's model config file is readable (GetModelStatus does not report labels).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from tfwarden.core.clock import Clock, SystemClock
from tfwarden.core.errors import ServingError
from tfwarden.core.types import STATE_NUMBERS, ProbeResult, Sample, VersionState
from tfwarden.serving.tfserving.client import ServingClient
from tfwarden.serving.tfserving.modelconfig import labels as config_labels

MAX_IN_FLIGHT = 32


class StatusProbe:
    """GetModelStatus for each model of one TF Serving endpoint, ``MAX_IN_FLIGHT`` at a time (a
    server with 1,000 models answers in one round trip's time per 32, not per model)."""

    def __init__(self, endpoint: str, client: ServingClient, models: list[str], *,
                 model_config_file: Path | None = None, clock: Clock | None = None) -> None:
        self.name = f"status:{endpoint}"
        self.endpoint, self.client, self.models = endpoint, client, models
        self._config_file = model_config_file
        self._clock = clock or SystemClock()

    async def run(self) -> ProbeResult:
        t, started = self._clock.now(), time.monotonic()
        models: dict[str, Any] = {}
        samples: list[Sample] = []
        errors = []
        answers = await self._statuses()
        for model, versions in zip(self.models, answers, strict=True):
            if isinstance(versions, ServingError):
                detail = str(versions).split(": ", 1)[-1]
                models[model] = {"error": detail}
                errors.append(f"{model}: {detail}")
                continue
            samples += [Sample(t=t, source="status", metric="state",
                               value=STATE_NUMBERS.get(v.state, 0), model=model,
                               version=v.version, ok=v.error_code == 0) for v in versions]
            models[model] = {"versions": [v.to_json() for v in versions]}
        labels = config_labels(self._config_file) if self._config_file else None
        for model, entry in models.items():
            if labels is not None and "versions" in entry:
                entry["labels"] = labels.get(model, {})
        return ProbeResult(
            probe=self.name, target=self.endpoint, t=t, ok=not errors,
            duration_seconds=time.monotonic() - started, samples=tuple(samples),
            error="; ".join(errors) or None, detail={"models": models})

    async def _statuses(self) -> list[list[VersionState] | ServingError]:
        gate = asyncio.Semaphore(MAX_IN_FLIGHT)

        async def one(model: str) -> list[VersionState] | ServingError:
            async with gate:
                try:
                    return await self.client.model_status(model)
                except ServingError as exc:
                    return exc

        return list(await asyncio.gather(*(one(model) for model in self.models)))
