"""The edge receiver: OTLP/HTTP metrics and logs from devices and browsers, kept as per-cohort
aggregates of each edge model's versions (docs/edge.md).

A cohort is the values of the model's ``cohort_by`` attributes (e.g. delegate and device model);
each model keeps at most ``max_cohorts`` of them (the same for all its versions, so a
candidate and the current version pool alike), later ones pooled as ``other``.
Per cohort: the merged inference-duration and load-duration histograms (buckets as devices sent
them; points with an ``error.type`` attribute count as failed inferences), crash and error log
records (``exception.type``), the newest memory value per device, and the devices seen (hashed
ids, at most ``MAX_DEVICES`` remembered per cohort). Everything is bounded: streams for
cumulative-to-delta, cohorts, devices, and data points per client per second (429 beyond, which
OTLP clients retry later).
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tfwarden.core.errors import Refused
from tfwarden.core.ports import EdgeIngestMetrics, SampleSink
from tfwarden.core.ratelimit import RateBuckets
from tfwarden.core.types import (
    EDGE_ERROR_LOGS,
    EDGE_FAILED_INFERENCES,
    EDGE_INFERENCE_MS,
    EDGE_LOAD_MS,
    EDGE_MEMORY_BYTES,
    Sample,
)
from tfwarden.probes.edge import otlp, otlpjson
from tfwarden.probes.edge.otlp import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
    ExportMetricsServiceResponse,
    OtlpRejected,
)
from tfwarden.probes.edge.points import (
    INFERENCE,
    LOAD,
    Batch,
    Deltas,
    DeviceHasher,
    EdgeHistogram,
    EdgeValue,
    Flattened,
    attributes_of,
    flatten_batch,
)
from tfwarden.probes.edge.settings import EdgeSettings

OTHER = "other"

INLINE_BYTES = 64 * 1024  # larger bodies are decoded in a thread, off the event loop
MAX_DEVICES = 10_000  # hashed ids remembered per cohort (beyond: counted as "at least")
ERROR_SEVERITY = 17  # OTLP SeverityNumber ERROR and above


@dataclass
class _Histogram:
    """Merged bucket counts per bounds (devices may use different bounds)."""

    by_bounds: dict[tuple[float, ...], list[int]] = field(default_factory=dict)
    total: float = 0.0
    count: int = 0

    def add(self, point: EdgeHistogram) -> None:
        counts = self.by_bounds.setdefault(point.bounds, [0] * len(point.counts))
        for i, n in enumerate(point.counts):
            counts[i] += n
        self.total += point.total
        self.count += point.count

    def quantile(self, q: float) -> float | None:
        """From the most used bounds: the bucket holding the rank, linear inside it (its upper
        bound for the open last bucket)."""
        if not self.by_bounds:
            return None
        bounds, counts = max(self.by_bounds.items(), key=lambda item: sum(item[1]))
        total = sum(counts)
        if total == 0:
            return None
        rank, below, lower = q * total, 0, 0.0
        for i, n in enumerate(counts):
            upper = bounds[i] if i < len(bounds) else (bounds[-1] if bounds else math.inf)
            if below + n >= rank and n:
                return lower + (upper - lower) * (rank - below) / n
            below, lower = below + n, upper
        return bounds[-1] if bounds else None


@dataclass
class _Cohort:
    inference: _Histogram = field(default_factory=_Histogram)
    load: _Histogram = field(default_factory=_Histogram)
    failed_inferences: int = 0
    error_logs: int = 0
    exceptions: dict[str, int] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)  # device -> newest bytes
    devices: set[int] = field(default_factory=set)  # hashed ids as 64-bit ints (compact)
    devices_capped: bool = False

    def seen(self, device: str) -> None:
        if not device:
            return
        key = int(device, 16)
        if key in self.devices:
            return
        if len(self.devices) >= MAX_DEVICES:
            self.devices_capped = True
            return
        self.devices.add(key)

    def to_json(self) -> dict[str, Any]:
        inferences = self.inference.count
        p50, p99 = self.inference.quantile(0.5), self.inference.quantile(0.99)
        return {
            "devices": len(self.devices), "devices_at_least": self.devices_capped,
            "inferences": inferences, "failed_inferences": self.failed_inferences,
            "inference_p50_ms": _round(p50), "inference_p99_ms": _round(p99),
            "load_p50_ms": _round(self.load.quantile(0.5)), "loads": self.load.count,
            "error_logs": self.error_logs, "exceptions": dict(self.exceptions),
            "memory_max_bytes": max(self.memory.values(), default=None),
        }


class EdgeReceiver:
    """Receives OTLP bodies; keeps cohort aggregates for the configured edge models."""

    def __init__(self, settings: EdgeSettings, device_key: bytes,
                 sink: SampleSink | None = None, metrics: EdgeIngestMetrics | None = None) -> None:
        self.settings = settings
        self.sink = sink  # told each device report as a Sample (the cohort verdicts)
        self.ingest_metrics = metrics
        self.models = {m.name: m for m in settings.models}
        self.hasher = DeviceHasher(device_key)
        self.deltas = Deltas(settings.max_streams)
        self.buckets = RateBuckets(settings.client_points_per_second)
        self.cohorts: dict[tuple[str, str], dict[str, _Cohort]] = {}
        self.known: dict[str, set[str]] = {}  # cohort names per model, at most max_cohorts
        self._streams = threading.Lock()

    def reconfigure(self, settings: EdgeSettings) -> None:
        self.settings, self.models = settings, {m.name: m for m in settings.models}
        self.deltas.max_streams = settings.max_streams
        self.buckets.rate = settings.client_points_per_second
        for model, version in [k for k in self.cohorts if k[0] not in self.models]:
            del self.cohorts[(model, version)]
        for model in [m for m in self.known if m not in self.models]:
            del self.known[model]

    # -- requests ----------------------------------------------------------------------------
    async def metrics(self, body: bytes, content_type: str | None,
                      content_encoding: str | None, client: str) -> bytes:
        """An ExportMetricsServiceRequest in, the response body out (OtlpRejected: 4xx).
        Decoding and flattening of bodies over ``INLINE_BYTES`` run in a thread."""
        offload = len(body) > INLINE_BYTES
        batch = await _run(offload, otlpjson.read_metrics, body, content_type, content_encoding,
                           self.settings.max_body_bytes)
        self._admit(client, batch.points)
        flattened = await _run(offload, self._flatten, batch)
        rejected, reasons = flattened.rejected, list(flattened.reasons)
        points: list[EdgeHistogram | EdgeValue] = [*flattened.histograms, *flattened.values]
        kept = len(points)
        for point in points:
            found = self._cohort(point.model, point.version, point.attributes)
            if found is None:  # removed by a reload meanwhile
                rejected, kept = rejected + 1, kept - 1
                continue
            name, cohort = found
            cohort.seen(point.device)
            self._emit(point, name)
            if isinstance(point, EdgeValue):
                if point.device or len(cohort.memory) < MAX_DEVICES:
                    cohort.memory[point.device] = point.value
            elif point.metric == LOAD:
                cohort.load.add(point)
            elif point.metric == INFERENCE and "error.type" in point.attributes:
                cohort.failed_inferences += point.count
            else:
                cohort.inference.add(point)
        if self.ingest_metrics is not None:
            self.ingest_metrics.edge_ingested("metrics", kept, rejected)
        response = ExportMetricsServiceResponse()
        if rejected or reasons:
            response.partial_success.rejected_data_points = rejected
            response.partial_success.error_message = "; ".join(reasons)[:1000]
        return otlp.response_body(response, otlp.encoding_of(content_type))

    def _flatten(self, batch: Batch) -> Flattened:
        with self._streams:  # one flattening at a time may touch the delta streams
            return flatten_batch(batch, self.deltas, self.hasher, self.models)

    async def logs(self, body: bytes, content_type: str | None, content_encoding: str | None,
                   client: str) -> bytes:
        """An ExportLogsServiceRequest in: error and crash records counted per cohort."""
        request = await _run(len(body) > INLINE_BYTES, otlp.decode, ExportLogsServiceRequest,
                             body, content_type, content_encoding, self.settings.max_body_bytes)
        records = sum(len(s.log_records) for r in request.resource_logs for s in r.scope_logs)
        self._admit(client, records)
        rejected, reasons = 0, []
        for resource_logs in request.resource_logs:
            resource = attributes_of(resource_logs.resource.attributes)
            for scope_logs in resource_logs.scope_logs:
                for record in scope_logs.log_records:
                    attributes = {**resource, **attributes_of(record.attributes)}
                    device = self.hasher(attributes.pop("device.id", ""))
                    model = attributes.get("ml.model.name", "")
                    version = attributes.get("ml.model.version", "")
                    found = self._cohort(model, version, attributes)
                    if found is None:
                        rejected += 1
                        reason = "log records need the ml.model.name and ml.model.version of a " \
                                 "model in edge.models"
                        if reason not in reasons:
                            reasons.append(reason)
                        continue
                    name, cohort = found
                    cohort.seen(device)
                    exception = attributes.get("exception.type")
                    if exception:
                        key = exception[:100] if len(cohort.exceptions) < 50 or \
                            exception[:100] in cohort.exceptions else OTHER
                        cohort.exceptions[key] = cohort.exceptions.get(key, 0) + 1
                    if exception or record.severity_number >= ERROR_SEVERITY:
                        cohort.error_logs += 1
                        self._tell(time.time(), EDGE_ERROR_LOGS, 1.0, model, version, name, device)
        if self.ingest_metrics is not None:
            self.ingest_metrics.edge_ingested("logs", records - rejected, rejected)
        response = ExportLogsServiceResponse()
        if rejected:
            response.partial_success.rejected_log_records = rejected
            response.partial_success.error_message = "; ".join(reasons)
        return otlp.response_body(response, otlp.encoding_of(content_type))

    @staticmethod
    def media_type(content_type: str | None) -> str:
        return otlp.encoding_of(content_type)

    @staticmethod
    def refusal(refusal: Refused, content_type: str | None) -> tuple[bytes, str]:
        """A refusal as a ``google.rpc.Status`` in the request's encoding (JSON, with our
        ``error`` key too, when the encoding is JSON or not one of OTLP's)."""
        try:
            encoding = otlp.encoding_of(content_type)
        except OtlpRejected:
            encoding = otlp.JSON
        if encoding == otlp.PROTOBUF:
            return otlp.error_body(refusal.message, encoding), otlp.PROTOBUF
        return json.dumps({"code": 3, "message": refusal.message,
                           "error": refusal.message}).encode(), otlp.JSON

    def _admit(self, client: str, points: int) -> None:
        if not self.buckets.take(client, points):
            raise OtlpRejected(429, f"client {client} is over "
                                    f"{self.settings.client_points_per_second} points/s; "
                                    "retry later")

    def _cohort(self, model: str, version: str,
                attributes: Mapping[str, str]) -> tuple[str, _Cohort] | None:
        """The cohort's name and aggregate for a point (None: model not configured)."""
        if model not in self.models or not version:
            return None
        key = self.cohort_of(model, attributes)
        cohorts = self.cohorts.setdefault((model, version[:100]), {})
        return key, cohorts.setdefault(key, _Cohort())

    def cohort_of(self, model: str, attributes: Mapping[str, str], remember: bool = True) -> str:
        """The pooled cohort name of a configured model's device (per model: every version
        pools alike); a new name is remembered while the model has room, unless ``remember``
        is False (an assignment names the cohort the device's telemetry will be kept in)."""
        settings = self.models[model]
        key = cohort_name(settings.cohort_by, attributes)
        known = self.known.setdefault(model, set())
        if key not in known:
            if len(known) >= settings.max_cohorts:
                return OTHER
            if remember:
                known.add(key)
        return key

    # -- device reports as Samples -----------------------------------------------------------
    def _emit(self, point: EdgeHistogram | EdgeValue, cohort: str) -> None:
        """One device report as a Sample: the mean of a histogram delta (its sum / count, exact
        for the report) or the value, with the cohort and the hashed device as labels, at the
        time it was received (devices' clocks are not trusted for pairing)."""
        if self.sink is None:
            return
        if isinstance(point, EdgeValue):
            self._tell(time.time(), EDGE_MEMORY_BYTES, point.value, point.model, point.version, cohort,
                       point.device)
        elif point.metric == LOAD:
            self._tell(time.time(), EDGE_LOAD_MS, point.total / point.count, point.model, point.version,
                       cohort, point.device, point.count)
        elif "error.type" in point.attributes:
            self._tell(time.time(), EDGE_FAILED_INFERENCES, float(point.count), point.model,
                       point.version, cohort, point.device, point.count)
        else:
            self._tell(time.time(), EDGE_INFERENCE_MS, point.total / point.count, point.model,
                       point.version, cohort, point.device, point.count)

    def _tell(self, t: float, metric: str, value: float, model: str, version: str, cohort: str,
              device: str, count: int = 1) -> None:
        if self.sink is None or not (version.isascii() and version.isdigit()) or \
                len(version) > 18:
            return  # only numbered versions (the published directories) can be rolled out
        self.sink.observe(Sample(t, "edge", metric, value, model, int(version), labels={
            "cohort": cohort, "device": device, "count": str(count)}))

    # -- reports -----------------------------------------------------------------------------
    def stats(self, model: str) -> dict[str, Any] | None:
        """Per version and cohort, what the devices reported; None for a model not configured."""
        if model not in self.models:
            return None
        return {"model": model, "cohort_by": self.models[model].cohort_by, "versions": {
            version: {name: cohort.to_json() for name, cohort in sorted(cohorts.items())}
            for (name_, version), cohorts in sorted(self.cohorts.items()) if name_ == model}}


def cohort_name(cohort_by: list[str], attributes: Mapping[str, str]) -> str:
    """A cohort's name: ``attr=value`` for each of the model's ``cohort_by`` attributes."""
    return " | ".join(f"{a}={attributes.get(a, '')[:100]}" for a in cohort_by)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)



T = TypeVar("T")


async def _run(offload: bool, function: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(function, *args) if offload else function(*args)
