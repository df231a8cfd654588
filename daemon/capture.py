"""The capture endpoints: validate mirrored predict bodies and client samples, keep reservoirs.

Signatures come from the model's server (gRPC GetModelMetadata, lean protos) and are cached for
``signature_ttl_seconds``. Each client (by address) has a token bucket of
``client_rows_per_second`` rows; bodies above ``max_body_bytes`` are refused before they are
read. Reservoirs are per (model, version); the version is the ``version`` query parameter of a
capture call (mirrors usually cannot say) or the ``version`` of a samples batch.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import grpc

from tfwarden.core.clock import Clock
from tfwarden.core.errors import CaptureError, CaptureRejected
from tfwarden.daemon.config import Config
from tfwarden.daemon.recorder import Recorder
from tfwarden.probes.capture import InputSpec, Reservoir, rows_from_predict_body, rows_from_samples
from tfwarden.serving.tfserving import protos


@dataclass
class _Bucket:
    tokens: float
    updated: float


class CaptureService:
    def __init__(self, config: Config, recorder: Recorder, clock: Clock) -> None:
        self.config, self.recorder, self.clock = config, recorder, clock
        self.settings = config.capture
        self.reservoirs: dict[tuple[str, int | None], Reservoir] = {}
        # newest rows per model, in arrival order, for the drift checks (bounded)
        self.recent: dict[str, deque[tuple[int | None, list[float | str]]]] = {}
        self._signatures: dict[str, tuple[float, list[InputSpec]]] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._drift_models = {m.name for m in config.models if m.drift is not None}

    async def specs(self, model: str) -> list[InputSpec]:
        cached = self._signatures.get(model)
        if cached is not None and time.monotonic() - cached[0] < self.settings.signature_ttl_seconds:
            return cached[1]
        entry = next((m for m in self.config.models if m.name == model), None)
        if entry is None:
            raise CaptureRejected(404, f"model {model!r} is not configured in tfwarden")
        endpoint = self.config.serving[entry.serving]
        if endpoint.grpc_address is None:
            raise CaptureRejected(409, f"model {model!r}: capture needs serving."
                                       f"{entry.serving}.grpc_address to read the signature")
        pb = protos.load()
        channel = self._channels.get(endpoint.grpc_address)
        if channel is None:
            channel = self._channels[endpoint.grpc_address] = grpc.aio.insecure_channel(
                endpoint.grpc_address)
        stub = pb.prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = pb.get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = model
        request.metadata_field.append("signature_def")
        try:
            response = await stub.GetModelMetadata(request, timeout=endpoint.timeout_seconds)
        except grpc.aio.AioRpcError as exc:
            raise CaptureRejected(503, f"cannot read the signature of {model!r}: "
                                       f"{exc.code().name}: {exc.details()}") from None
        signatures = pb.get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        sig = signatures.signature_def["serving_default"]
        specs = [InputSpec(name, info.dtype, tuple(d.size for d in info.tensor_shape.dim))
                 for name, info in sorted(sig.inputs.items())]
        self._signatures[model] = (time.monotonic(), specs)
        return specs

    def _admit(self, client: str, rows: int) -> None:
        rate = self.settings.client_rows_per_second
        now = time.monotonic()
        bucket = self._buckets.setdefault(client, _Bucket(rate, now))
        bucket.tokens = min(rate, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if rows > bucket.tokens:
            raise CaptureRejected(429, f"client {client} is over {rate} rows/s; retry later")
        bucket.tokens -= rows

    async def receive(self, model: str, body: bytes, client: str, kind: str,
                      version: int | None = None) -> dict[str, Any]:
        try:
            if len(body) > self.settings.max_body_bytes:
                raise CaptureRejected(413, f"body of {len(body)} bytes is over "
                                           f"{self.settings.max_body_bytes}")
            try:
                document = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise CaptureRejected(400, f"body is not JSON: {exc}") from None
            specs = await self.specs(model)
            try:
                if kind == "capture":
                    rows = rows_from_predict_body(document, specs)
                else:
                    rows, version = rows_from_samples(document, specs)
            except CaptureError as exc:
                raise CaptureRejected(400, str(exc)) from None
            self._admit(client, len(rows))
        except CaptureRejected as exc:
            self.recorder.captured(model, "rejected", exc.status, 1)
            raise
        reservoir = self.reservoirs.setdefault(
            (model, version), Reservoir(self.settings.reservoir_rows, seed=len(self.reservoirs)))
        reservoir.add(rows)
        if model in self._drift_models:
            recent = self.recent.setdefault(model, deque(maxlen=self.settings.recent_rows))
            if len(rows) + len(recent) > self.settings.recent_rows:  # the drift checks lag
                self.recorder.captured(model, "dropped", 200,
                                       len(rows) + len(recent) - self.settings.recent_rows)
            recent.extend((version, row) for row in rows)
        self.recorder.captured(model, "accepted", 200, len(rows))
        return {"accepted_rows": len(rows), "kept_rows": len(reservoir.rows),
                "seen_rows": reservoir.seen}

    def take_new(self, model: str) -> list[tuple[int | None, list[float | str]]]:
        """Rows captured for ``model`` since the last call (oldest first), with their version."""
        recent = self.recent.get(model)
        if not recent:
            return []
        rows = list(recent)
        recent.clear()
        return rows

    def kept_rows(self, model: str, version: int) -> tuple[list[str], list[list[float | str]]]:
        """Feature names and the reservoir rows of ``version`` and of unversioned captures."""
        specs = self._signatures.get(model, (0.0, []))[1]
        rows = [row for (m, v), reservoir in self.reservoirs.items()
                if m == model and v in (None, version) for row in reservoir.rows]
        return [n for s in specs for n in s.feature_names()], rows

    def stats(self, model: str) -> dict[str, Any]:
        specs = self._signatures.get(model, (0.0, []))[1]
        return {"features": [n for s in specs for n in s.feature_names()],
                "reservoirs": [{"version": v, "kept_rows": len(r.rows), "seen_rows": r.seen,
                                "capacity": r.capacity}
                               for (m, v), r in sorted(self.reservoirs.items(),
                                                       key=lambda kv: str(kv[0])) if m == model]}

    async def reconfigure(self, config: Config) -> None:
        await self.close()
        self.config, self.settings = config, config.capture
        self._drift_models = {m.name for m in config.models if m.drift is not None}
        self._signatures.clear()
        for reservoir in self.reservoirs.values():
            if len(reservoir.rows) > self.settings.reservoir_rows:
                del reservoir.rows[self.settings.reservoir_rows:]
            reservoir.capacity = self.settings.reservoir_rows
        for model, recent in list(self.recent.items()):
            self.recent[model] = deque(recent, maxlen=self.settings.recent_rows)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
