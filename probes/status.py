"""Status probe: gRPC GetModelStatus (REST status calls would inflate Serving's request count).

Returns every version's state and load error per model, plus which version each label points
to when the server's model config file is readable (GetModelStatus does not report labels).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tfwarden.core.clock import Clock, SystemClock
from tfwarden.core.errors import ServingError
from tfwarden.core.types import STATE_NUMBERS, ProbeResult, Sample
from tfwarden.serving.tfserving.client import ServingClient
from tfwarden.serving.tfserving.modelconfig import labels as config_labels


class StatusProbe:
    """GetModelStatus for each model of one TF Serving endpoint."""

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
        for model in self.models:
            try:
                versions = await self.client.model_status(model)
            except ServingError as exc:
                detail = str(exc).split(": ", 1)[-1]
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

