"""Predict probe over gRPC with the same golden requests as the REST probe.

A golden request is a TF Serving REST predict body; it is turned into a ``PredictRequest`` with
the input dtypes of the model's signature (read once with GetModelMetadata), without numpy or
TensorFlow (lean protos only). The response tensors are turned back into the REST JSON shape
(``predictions`` for the row format, ``outputs`` for the columnar one) and compared with
``expected``. The sample also records the version that actually served
(``response.model_spec.version``), which is how a label's routing is verified.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import grpc

from tfwarden.core.clock import Clock, SystemClock
from tfwarden.core.errors import GoldenConversionError, ServingError, ServingRpcError
from tfwarden.core.settings import default
from tfwarden.core.types import Sample
from tfwarden.probes.golden import DEFAULT_GOLDEN, GoldenRequest, matches
from tfwarden.probes.settings import PredictProbeSettings
from tfwarden.serving.tfserving import protos
from tfwarden.serving.tfserving.client import ServingClient

SOURCE = "predict"
# DataType -> TensorProto field
FIELDS = {1: "float_val", 2: "double_val", 3: "int_val", 4: "int_val", 5: "int_val", 6: "int_val",
          7: "string_val", 9: "int64_val", 10: "bool_val", 22: "uint32_val", 23: "uint64_val"}


def _shape(value: Any) -> list[int]:
    dims = []
    while isinstance(value, list):
        dims.append(len(value))
        value = value[0] if value else None
    return dims


def _flatten(value: Any, out: list[Any]) -> None:
    if isinstance(value, list):
        for item in value:
            _flatten(item, out)
    else:
        out.append(value)


def _convert(value: Any, dtype: int) -> Any:
    if dtype == 7:
        if isinstance(value, dict) and set(value) == {"b64"}:
            return base64.b64decode(value["b64"])
        return str(value).encode()
    if dtype == 10:
        return bool(value)
    if dtype in (1, 2):
        return float(value)
    return int(value)


def tensor(value: Any, dtype: int) -> Any:
    """A TensorProto of ``value`` (nested lists or a scalar) with DataType ``dtype``."""
    pb = protos.load()
    proto = pb.tensor_pb2.TensorProto(dtype=dtype)
    for size in _shape(value):
        proto.tensor_shape.dim.add().size = size
    flat: list[Any] = []
    _flatten(value, flat)
    field = FIELDS.get(dtype)
    if field is None:
        raise GoldenConversionError(f"input dtype {dtype} is not supported by the gRPC probe")
    try:
        getattr(proto, field).extend(_convert(v, dtype) for v in flat)
    except (TypeError, ValueError) as exc:
        raise GoldenConversionError(f"value does not fit dtype {dtype}: {exc}") from None
    return proto


def to_json_value(proto: Any) -> Any:
    """Nested lists (or a scalar) of a TensorProto, for comparison with REST-shaped outputs."""
    field = FIELDS.get(proto.dtype)
    values: list[Any] = list(getattr(proto, field)) if field else []
    if proto.dtype == 7:
        values = [v.decode("utf-8", "replace") for v in values]
    shape = [d.size for d in proto.tensor_shape.dim]
    count = 1
    for size in shape:
        count *= size
    if len(values) == 1 and count > 1:
        values = values * count  # TF's shorthand: one value fills the tensor
    return _nest(values, shape)


def _nest(values: list[Any], shape: list[int]) -> Any:
    if not shape:
        return values[0] if values else None
    step = len(values) // shape[0] if shape[0] else 0
    return [_nest(values[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


def build_request(golden: GoldenRequest, model: str, version: int | None, label: str | None,
                  input_types: dict[str, int]) -> tuple[Any, bool]:
    """A PredictRequest from a REST body; returns it and whether the body used the row format."""
    pb = protos.load()
    body = golden.request
    request = pb.predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = body.get("signature_name", "")
    if version is not None:
        request.model_spec.version.value = version
    elif label:
        request.model_spec.version_label = label
    names = sorted(input_types)
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list) or not rows:
            raise GoldenConversionError("'instances' must be a non-empty list")
        if isinstance(rows[0], dict) and not set(rows[0]) == {"b64"}:
            columns = {name: [row[name] for row in rows] for name in names}
        else:
            columns = {names[0]: rows}
        row = True
    elif "inputs" in body:
        value = body["inputs"]
        columns = value if isinstance(value, dict) and set(value) != {"b64"} else {names[0]: value}
        row = False
    else:
        raise GoldenConversionError("golden request needs 'instances' or 'inputs'")
    for name, value in columns.items():
        if name not in input_types:
            raise GoldenConversionError(f"input {name!r} is not in the signature ({', '.join(names)})")
        request.inputs[name].CopyFrom(tensor(value, input_types[name]))
    return request, row


def response_json(response: Any, row: bool) -> dict[str, Any]:
    outputs = {name: to_json_value(t) for name, t in response.outputs.items()}
    if row:
        if len(outputs) == 1:
            return {"predictions": next(iter(outputs.values()))}
        batch = len(next(iter(outputs.values())))
        return {"predictions": [{n: v[i] for n, v in outputs.items()} for i in range(batch)]}
    return {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs}


class GrpcPredictProbe:
    """Golden requests over gRPC Predict to one version or label."""

    def __init__(self, client: ServingClient, model: str, *, version: int | None = None,
                 label: str | None = None, golden: tuple[GoldenRequest, ...] = DEFAULT_GOLDEN,
                 timeout_seconds: float = default(PredictProbeSettings, "timeout_seconds"),
                 clock: Clock | None = None) -> None:
        self._client = client
        self._predictions = client.predictions()
        self.model, self.version, self.label = model, version, label
        self.target = f"{model}/{'v' + str(version) if version is not None else label or 'latest'}"
        self._golden = golden
        self._timeout = timeout_seconds
        self._clock = clock or SystemClock()
        self._next = 0

    async def _types(self, signature: str) -> dict[str, int]:
        specs = await self._client.inputs(self.model, self.version, self.label, signature)
        return {spec.name: spec.dtype for spec in specs}

    async def send(self) -> Sample:
        golden = self._golden[self._next % len(self._golden)]
        self._next += 1
        t = self._clock.now()
        started = time.monotonic()
        outcome, status, served = "ok", "OK", ""
        try:
            types = await self._types(golden.request.get("signature_name", ""))
            request, row = build_request(golden, self.model, self.version, self.label, types)
            started = time.monotonic()  # time the Predict call, not the one-off metadata call
            response = await self._predictions.Predict(request, timeout=self._timeout)
            served = str(response.model_spec.version.value)
            if golden.expected is not None and not matches(golden.expected,
                                                           response_json(response, row),
                                                           golden.tolerance):
                outcome = "incorrect"
        except grpc.aio.AioRpcError as exc:
            status = exc.code().name
            outcome = _classify(status, exc.details() or "")
        except ServingRpcError as exc:  # reading the signature failed
            status = exc.code
            outcome = _classify(status, str(exc))
        except ServingError as exc:  # the signature has no such name
            outcome, status = "error", f"signature: {exc}"[:200]
        except GoldenConversionError as exc:
            outcome, status = "error", f"golden: {exc}"
        elapsed_ms = (time.monotonic() - started) * 1000
        return Sample(t=t, source=SOURCE, metric="latency_ms", value=elapsed_ms, model=self.model,
                      version=self.version, target=self.label or "", ok=outcome == "ok",
                      labels={"outcome": outcome, "status": status, "served_version": served})


def _classify(code: str, details: str) -> str:
    if code == "DEADLINE_EXCEEDED":
        return "timeout"
    details = details.lower()
    if code == "UNAVAILABLE" and ("connect" in details or "socket" in details):
        return "unreachable"  # the server itself, not the model, could not be reached
    return "error"
