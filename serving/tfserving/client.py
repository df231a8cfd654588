"""One client per TF Serving endpoint: status, metadata, config reload and predict.

gRPC calls go through one channel per address (:class:`Channels`, shared by every client and
probe of the daemon); REST predict calls through the daemon's one httpx client. Signatures
(GetModelMetadata) are cached for ``signature_ttl_seconds``. Every call raises
:class:`ServingError` naming the model and the server's status; nothing here retries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Protocol

import grpc
import httpx

from tfwarden.core.errors import ServingError, ServingRpcError
from tfwarden.core.settings import default
from tfwarden.core.types import STATE_NAMES, VersionState
from tfwarden.serving.tfserving import protos
from tfwarden.serving.tfserving.rows import InputSpec, Row, flatten_prediction, rows_to_instances
from tfwarden.serving.tfserving.settings import EndpointSettings

PREDICT_BATCH = 100


class Channels:
    """One ``grpc.aio`` channel per address, opened on first use, closed together."""

    def __init__(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def get(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.aio.insecure_channel(address)
        return channel

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()

    def keep(self, addresses: set[str | None]) -> None:
        """Close (in the background) the channels of addresses no longer configured."""
        for address in [a for a in self._channels if a not in addresses]:
            task = asyncio.get_running_loop().create_task(self._channels.pop(address).close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)


class ServingClient(Protocol):
    """What the stages ask of a model server's client (``TFServingClient``;
    ``tests/fakes.FakeServingClient``). Calls raise ServingError (ServingRpcError with the
    gRPC code when the server answered with one)."""

    name: str
    grpc_address: str | None

    async def model_status(self, model: str) -> list[VersionState]:
        """Every version the server knows of ``model``, with its state."""
        ...

    async def inputs(self, model: str, version: int | None = None, label: str | None = None,
                     signature: str = "") -> list[InputSpec]:
        """The inputs of a signature (``serving_default`` when empty), sorted by name."""
        ...

    def cached_inputs(self, model: str) -> list[InputSpec]:
        """The last signature read for ``model``, or []."""
        ...

    def predictions(self) -> Any:
        """The PredictionService stub (gRPC Predict)."""
        ...

    async def predict_rows(self, model: str, version: int, rows: Sequence[Row],
                           specs: Sequence[InputSpec]) -> tuple[list[str], list[Row]]:
        """Predict feature rows on one version; output names and one output row per row."""
        ...


class TFServingClient:
    """Talks to one TF Serving endpoint (``grpc_address`` and/or ``rest_url``)."""

    def __init__(self, name: str, *, grpc_address: str | None, rest_url: str | None,
                 channels: Channels, http: httpx.AsyncClient | None = None,
                 timeout_seconds: float = default(EndpointSettings, "timeout_seconds"),
                 signature_ttl_seconds: float = 60.0) -> None:
        self.name, self.grpc_address = name, grpc_address
        self.rest_url = rest_url.rstrip("/") if rest_url else None
        self.timeout_seconds = timeout_seconds
        self.signature_ttl_seconds = signature_ttl_seconds
        self._channels, self._http = channels, http
        self._signatures: dict[tuple[str, int | None, str, str], tuple[float, list[InputSpec]]] = {}

    # -- gRPC -------------------------------------------------------------------------------
    def channel(self) -> grpc.aio.Channel:
        if self.grpc_address is None:
            raise ServingError(f"serving endpoint {self.name!r} has no grpc_address")
        return self._channels.get(self.grpc_address)

    def predictions(self) -> Any:
        """PredictionService stub (Predict, GetModelMetadata...) on the shared channel."""
        return protos.load().prediction_service_pb2_grpc.PredictionServiceStub(self.channel())

    def _models(self) -> Any:
        return protos.load().model_service_pb2_grpc.ModelServiceStub(self.channel())

    async def model_status(self, model: str) -> list[VersionState]:
        """GetModelStatus: every version the server knows of ``model`` (ServingRpcError with
        code NOT_FOUND when it knows none)."""
        pb = protos.load()
        request = pb.get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        try:
            response = await self._models().GetModelStatus(request, timeout=self.timeout_seconds)
        except grpc.aio.AioRpcError as exc:
            raise _rpc_error(f"GetModelStatus({model})", exc) from exc
        return [VersionState(s.version, STATE_NAMES.get(s.state, str(s.state)),
                             s.status.error_code, s.status.error_message)
                for s in response.model_version_status]

    async def _metadata(self, model: str, version: int | None, label: str | None) -> Any:
        pb = protos.load()
        request = pb.get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = model
        if version is not None:
            request.model_spec.version.value = version
        elif label:
            request.model_spec.version_label = label
        request.metadata_field.append("signature_def")
        try:
            return await self.predictions().GetModelMetadata(request, timeout=self.timeout_seconds)
        except grpc.aio.AioRpcError as exc:
            raise _rpc_error(f"GetModelMetadata({model})", exc) from exc

    async def inputs(self, model: str, version: int | None = None, label: str | None = None,
                     signature: str = "") -> list[InputSpec]:
        """The inputs of a signature (``serving_default`` when empty), sorted by name; cached."""
        key = (model, version, label or "", signature)
        cached = self._signatures.get(key)
        if cached is not None and time.monotonic() - cached[0] < self.signature_ttl_seconds:
            return cached[1]
        response = await self._metadata(model, version, label)
        signatures = protos.load().get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        name = signature or "serving_default"
        if name not in signatures.signature_def:
            raise ServingError(f"model {model!r} has no signature {name!r} "
                               f"(has {sorted(signatures.signature_def)})")
        sig = signatures.signature_def[name]
        specs = [InputSpec(n, info.dtype, tuple(d.size for d in info.tensor_shape.dim))
                 for n, info in sorted(sig.inputs.items())]
        self._signatures[key] = (time.monotonic(), specs)
        return specs

    def cached_inputs(self, model: str) -> list[InputSpec]:
        """The last signature read for ``model`` (any age), or []."""
        cached = self._signatures.get((model, None, "", ""))
        return cached[1] if cached else []

    def forget_signatures(self) -> None:
        self._signatures.clear()

    async def label_target(self, model: str, label: str) -> int | None:
        """The version ``label`` resolves to on the server (GetModelMetadata through the label;
        GetModelStatus does not report labels), or None if it resolves to nothing."""
        try:
            response = await self._metadata(model, None, label)
        except ServingError:
            return None
        return int(response.model_spec.version.value)

    async def reload_config(self, config: Any) -> None:
        """HandleReloadConfigRequest with the whole ModelServerConfig."""
        pb = protos.load()
        request = pb.model_management_pb2.ReloadConfigRequest()
        request.config.CopyFrom(config)
        try:
            response = await self._models().HandleReloadConfigRequest(
                request, timeout=self.timeout_seconds)
        except grpc.aio.AioRpcError as exc:
            raise _rpc_error("reload refused", exc) from exc
        if response.status.error_code != 0:
            raise ServingError(f"reload failed: {response.status.error_message}")

    # -- REST ------------------------------------------------------------------------------
    async def predict_rows(self, model: str, version: int, rows: Sequence[Row],
                           specs: Sequence[InputSpec]) -> tuple[list[str], list[Row]]:
        """Predict ``rows`` (feature rows in ``specs`` order) on one version over REST, in
        batches; returns the output names and one flat output row per input row."""
        if self.rest_url is None or self._http is None:
            raise ServingError(f"serving endpoint {self.name!r} has no rest_url")
        url = f"{self.rest_url}/v1/models/{model}/versions/{version}:predict"
        names: list[str] = []
        outputs: list[Row] = []
        for start in range(0, len(rows), PREDICT_BATCH):
            body = {"instances": rows_to_instances(rows[start:start + PREDICT_BATCH], specs)}
            try:
                response = await self._http.post(url, json=body, timeout=self.timeout_seconds)
            except httpx.HTTPError as exc:
                raise ServingError(f"predict on v{version} failed: {exc!r}") from None
            if response.status_code != 200:
                raise ServingError(f"predict on v{version}: HTTP {response.status_code} "
                                   f"{response.text[:200]}")
            for prediction in response.json().get("predictions", []):
                names, values = flatten_prediction(prediction)
                outputs.append(values)
        return names, outputs


def _rpc_error(what: str, exc: grpc.aio.AioRpcError) -> ServingRpcError:
    return ServingRpcError(f"{what}: {exc.code().name}: {exc.details()}", exc.code().name)
