"""Status probe: gRPC GetModelStatus (REST status calls would inflate Serving's request count).

Returns every version's state and load error per model, plus which version each label points
to when the server's model config file is readable (GetModelStatus does not report labels).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc

from tfwarden.core.clock import Clock, SystemClock
from tfwarden.core.types import ProbeResult, Sample
from tfwarden.serving.tfserving import protos

STATE_NAMES = {0: "UNKNOWN", 10: "START", 20: "LOADING", 30: "AVAILABLE", 40: "UNLOADING",
               50: "END"}


class StatusProbe:
    """GetModelStatus for each model of one TF Serving endpoint."""

    def __init__(self, endpoint: str, grpc_address: str, models: list[str], *,
                 timeout_seconds: float = 5.0, model_config_file: Path | None = None,
                 clock: Clock | None = None) -> None:
        self.name = f"status:{endpoint}"
        self.endpoint = endpoint
        self.models = models
        self._address = grpc_address
        self._timeout = timeout_seconds
        self._config_file = model_config_file
        self._clock = clock or SystemClock()
        self._channel: grpc.aio.Channel | None = None

    async def run(self) -> ProbeResult:
        pb = protos.load()
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self._address)
        stub = pb.model_service_pb2_grpc.ModelServiceStub(self._channel)
        t, started = self._clock.now(), time.monotonic()
        models: dict[str, Any] = {}
        samples: list[Sample] = []
        errors = []
        for model in self.models:
            request = pb.get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = model
            try:
                response = await stub.GetModelStatus(request, timeout=self._timeout)
            except grpc.aio.AioRpcError as exc:
                models[model] = {"error": f"{exc.code().name}: {exc.details()}"}
                errors.append(f"{model}: {exc.code().name}: {exc.details()}")
                continue
            versions = []
            for status in response.model_version_status:
                state = STATE_NAMES.get(status.state, str(status.state))
                versions.append({"version": status.version, "state": state,
                                 "error_code": status.status.error_code,
                                 "error_message": status.status.error_message})
                samples.append(Sample(t=t, source="status", metric="state", value=status.state,
                                      model=model, version=status.version,
                                      ok=status.status.error_code == 0))
            models[model] = {"versions": versions}
        labels = self._labels()
        for model, entry in models.items():
            if labels is not None and "versions" in entry:
                entry["labels"] = labels.get(model, {})
        return ProbeResult(
            probe=self.name, target=self.endpoint, t=t, ok=not errors,
            duration_seconds=time.monotonic() - started, samples=tuple(samples),
            error="; ".join(errors) or None, detail={"models": models})

    def _labels(self) -> dict[str, dict[str, int]] | None:
        if self._config_file is None:
            return None
        from google.protobuf import text_format

        config = protos.load().model_server_config_pb2.ModelServerConfig()
        try:
            text_format.Parse(self._config_file.read_text(), config)
        except (OSError, text_format.ParseError):
            return None
        return {c.name: dict(c.version_labels) for c in config.model_config_list.config}

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
