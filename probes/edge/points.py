"""OTLP metrics -> edge observations: one histogram delta (or value) per device, model version,
metric and attribute set, with durations in milliseconds and device ids hashed.

- Resource attributes (``ml.model.name``, ``ml.model.version``, ``ml.runtime.*``, ``ml.delegate``,
  ``device.*``, ``os.*``, ``service.*``) and data point attributes are merged (the point's win);
  ``device.id`` is replaced by a keyed hash before anything keeps it, never stored raw.
- Histograms are used as their buckets come (no per-inference events). SDKs export cumulative
  histograms by default: :class:`Deltas` keeps the last cumulative point of each stream (bounded,
  least recently seen first out) and turns each new one into the delta since; a stream that
  restarted (new start time, or counts that went down) counts from zero again.
- Durations (``ml.inference.duration``, ``ml.model.load.duration``) in ``s`` or ``ms`` become ms;
  any other unit is rejected, as are points without ``ml.model.name`` / ``ml.model.version`` or
  with bucket counts that do not match their bounds. Rejections are counted for OTLP's
  ``partial_success``.
- A request is read into a :class:`Batch` first (``batch_of`` from the protobuf message,
  ``otlpjson`` straight from JSON), so both encodings flatten alike; points without attributes of
  their own share their resource's (device hashed and stream identity sorted once a resource).
"""

from __future__ import annotations

import hmac
import struct
from collections import OrderedDict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from operator import sub
from typing import Any

from tfwarden.probes.edge.otlp import ExportMetricsServiceRequest

INFERENCE = "ml.inference.duration"
LOAD = "ml.model.load.duration"
MEMORY = "process.memory.usage"
DURATIONS = (INFERENCE, LOAD)
KNOWN = (*DURATIONS, MEMORY)
UNIT_TO_MS = {"ms": 1.0, "s": 1000.0}
TEMPORALITY_DELTA, TEMPORALITY_CUMULATIVE = 1, 2


@dataclass(slots=True)
class EdgeHistogram:
    """What one device's stream of one metric added since its last report (not changed once
    made; not a frozen dataclass only because its __init__ costs ~1 us more a point)."""

    model: str
    version: str
    metric: str
    device: str  # hashed device.id ("" when the device sent none)
    attributes: Mapping[str, str]  # resource + point attributes, device.id left out
    t: float  # seconds
    bounds: tuple[float, ...]  # upper bounds, ms for durations
    counts: tuple[int, ...]  # len(bounds) + 1
    total: float
    count: int


@dataclass(slots=True)
class EdgeValue:
    """A gauge or sum value (``process.memory.usage`` in bytes)."""

    model: str
    version: str
    metric: str
    device: str
    attributes: Mapping[str, str]
    t: float
    value: float


@dataclass
class Flattened:
    histograms: list[EdgeHistogram] = field(default_factory=list)
    values: list[EdgeValue] = field(default_factory=list)
    rejected: int = 0
    reasons: list[str] = field(default_factory=list)

    def reject(self, points: int, reason: str) -> None:
        self.rejected += points
        if reason not in self.reasons:
            self.reasons.append(reason)


class DeviceHasher:
    """device.id -> a keyed hash (HMAC-SHA256, 16 hex digits): stable per daemon key, not
    reversible without it."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def __call__(self, device_id: str) -> str:
        if not device_id:
            return ""
        return hmac.digest(self.key, device_id.encode(), "sha256")[:8].hex()


_RECORDS: dict[int, struct.Struct] = {}


def _record(buckets: int) -> struct.Struct:
    """The packed layout of a stream with ``buckets`` counts: start, sum, count, counts."""
    layout = _RECORDS.get(buckets)
    if layout is None:
        layout = _RECORDS[buckets] = struct.Struct(f"<QdQ{buckets}Q")
    return layout


class Deltas:
    """Cumulative histogram points -> deltas, per stream; at most ``max_streams`` remembered,
    each under the 64-bit hash of its identity with one packed record (about 250 bytes a
    stream)."""

    def __init__(self, max_streams: int) -> None:
        self.max_streams = max_streams
        self._last: OrderedDict[int, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._last)

    def delta(self, stream: tuple[Any, ...], start: int, counts: tuple[int, ...], total: float,
              count: int) -> tuple[tuple[int, ...], float, int]:
        key, last = hash(stream), self._last
        previous = last.pop(key, None)
        layout = _record(len(counts))
        last[key] = layout.pack(start, total, count, *counts)
        if len(last) > self.max_streams:
            while len(last) > self.max_streams:
                last.popitem(last=False)
        if previous is None or len(previous) != layout.size:
            return counts, total, count
        before = layout.unpack(previous)
        if before[0] != start or count < before[2]:
            return counts, total, count  # the stream restarted: everything is new
        added = tuple(map(sub, counts, before[3:]))
        if added and min(added) < 0:
            return counts, total, count  # counts went down: restarted too
        return added, total - before[1], count - before[2]


# -- a decoded request, from protobuf or JSON alike ----------------------------------------------
# histogram points: (own attributes, start_time_unix_nano, time_unix_nano, explicit_bounds,
# bucket_counts, sum, count); gauge and sum points: (own attributes, time_unix_nano, value);
# points flatten does not read (metrics it rejects whole): None
HistogramPoint = tuple[dict[str, str], int, int, tuple[float, ...], tuple[int, ...], float, int]
NumberPoint = tuple[dict[str, str], int, float]


@dataclass(slots=True)
class MetricPoints:
    """One metric of a request: ``kind`` is the protobuf oneof's name (None: no data)."""

    name: str
    unit: str
    kind: str | None
    temporality: int
    points: list[Any]


@dataclass(slots=True)
class Batch:
    """A request as flatten reads it: per resource, its attributes and its metrics; ``points``
    counts every data point (for the per-client limit)."""

    resources: list[tuple[dict[str, str], list[MetricPoints]]]
    points: int


def wanted(name: str, unit: str, kind: str | None) -> str | None:
    """What flatten keeps of a metric: "histogram", "number" (memory), or None (rejected)."""
    if name in DURATIONS:
        return "histogram" if kind == "histogram" and unit in UNIT_TO_MS else None
    if name == MEMORY and kind in ("gauge", "sum"):
        return "number"
    return None


def refusal(name: str, unit: str, kind: str | None) -> str | None:
    """Why every point of a metric is rejected (None: its points are read)."""
    if name not in KNOWN:
        return f"metric {name!r} is not one of {', '.join(KNOWN)}"
    if name in DURATIONS and (kind != "histogram" or unit not in UNIT_TO_MS):
        return f"{name} must be a histogram in ms or s (got {kind} in {unit or 'no unit'!r})"
    if name == MEMORY and kind not in ("gauge", "sum"):
        return f"{MEMORY} must be a gauge or sum (got {kind})"
    return None


def batch_of(request: ExportMetricsServiceRequest) -> Batch:
    """A protobuf request as a Batch (the points flatten reads converted, the others counted)."""
    resources: list[tuple[dict[str, str], list[MetricPoints]]] = []
    total = 0
    for resource_metrics in request.resource_metrics:
        metrics: list[MetricPoints] = []
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                name, unit = metric.name, metric.unit
                if kind is None:
                    metrics.append(MetricPoints(name, unit, None, 0, []))
                    continue
                data = getattr(metric, kind)
                raw = data.data_points
                total += len(raw)
                use = wanted(name, unit, kind)
                points: list[Any]
                if use == "histogram":
                    points = [(attributes_of(p.attributes) if len(p.attributes) else {},
                               p.start_time_unix_nano, p.time_unix_nano,
                               tuple(p.explicit_bounds), tuple(p.bucket_counts), p.sum, p.count)
                              for p in raw]
                elif use == "number":
                    points = [(attributes_of(p.attributes) if len(p.attributes) else {},
                               p.time_unix_nano,
                               float(p.as_double if p.WhichOneof("value") == "as_double"
                                     else p.as_int)) for p in raw]
                else:
                    points = [None] * len(raw)
                metrics.append(MetricPoints(name, unit, kind,
                                            data.aggregation_temporality
                                            if kind == "histogram" else 0, points))
        resources.append((attributes_of(resource_metrics.resource.attributes), metrics))
    return Batch(resources, total)


def flatten(request: ExportMetricsServiceRequest, deltas: Deltas, hasher: DeviceHasher,
            models: Collection[str] | None = None) -> Flattened:
    """The known edge metrics of ``request`` (of ``models`` only, when given) as histogram
    deltas and values; the rest counted as rejected with the reasons."""
    return flatten_batch(batch_of(request), deltas, hasher, models)


@dataclass(slots=True)
class _Shared:
    """A resource's attributes (device.id left out), hashed device and sorted attributes."""

    attributes: dict[str, str]
    device: str
    identity: tuple[tuple[str, str], ...] | None = None


def flatten_batch(batch: Batch, deltas: Deltas, hasher: DeviceHasher,
                  models: Collection[str] | None = None) -> Flattened:
    """:func:`flatten` of a decoded request (protobuf or JSON)."""
    out = Flattened()
    histograms, values = out.histograms, out.values
    for resource, metrics in batch.resources:
        # points without attributes of their own (the usual) share their resource's, the
        # device hashed once and the stream identity sorted once
        shared: _Shared | None = None
        for metric in metrics:
            name, points = metric.name, metric.points
            reason = refusal(name, metric.unit, metric.kind)
            if reason is not None:
                out.reject(len(points), reason)
                continue
            histogram = metric.kind == "histogram"
            cumulative = histogram and metric.temporality == TEMPORALITY_CUMULATIVE
            scale = UNIT_TO_MS[metric.unit] if histogram else 1.0
            for point in points:
                own = point[0]
                identity: tuple[tuple[str, str], ...] | None = None
                if own:
                    attributes = {**resource, **own}
                    device = hasher(attributes.pop("device.id", ""))
                else:
                    if shared is None:
                        common = dict(resource)
                        shared = _Shared(common, hasher(common.pop("device.id", "")))
                    attributes, device, identity = shared.attributes, shared.device, \
                        shared.identity
                model = attributes.get("ml.model.name", "")
                version = attributes.get("ml.model.version", "")
                if not model or not version:
                    out.reject(1, "points need ml.model.name and ml.model.version (resource "
                                  "attributes)")
                    continue
                if models is not None and model not in models:
                    out.reject(1, f"model {model[:100]!r} is not in edge.models")
                    continue
                if not histogram:
                    values.append(EdgeValue(model, version, name, device, attributes,
                                            point[1] / 1e9, point[2]))
                    continue
                bounds, counts = point[3], point[4]
                if len(counts) != len(bounds) + 1 or not _increasing(bounds):
                    out.reject(1, "histogram bucket_counts must be one more than increasing "
                                  "explicit_bounds")
                    continue
                if cumulative:
                    if identity is None:
                        identity = tuple(sorted(attributes.items()))
                        if not own and shared is not None:
                            shared.identity = identity
                    counts, total, count = deltas.delta(
                        (device, model, version, name, identity, bounds), point[1], counts,
                        point[5], point[6])
                else:
                    total, count = point[5], point[6]
                if count == 0:
                    continue  # nothing new from this stream
                histograms.append(EdgeHistogram(
                    model, version, name, device, attributes, point[2] / 1e9,
                    bounds if scale == 1 else tuple(b * scale for b in bounds), counts,
                    total * scale, count))
    return out


_INCREASING: dict[tuple[float, ...], bool] = {}


def _increasing(bounds: tuple[float, ...]) -> bool:
    """Strictly increasing bounds (cached: devices of one app share a handful of them)."""
    known = _INCREASING.get(bounds)
    if known is None:
        known = all(a < b for a, b in zip(bounds, bounds[1:], strict=False))
        if len(_INCREASING) < 1000:
            _INCREASING[bounds] = known
    return known


def attributes_of(pairs: Any) -> dict[str, str]:
    """OTLP KeyValues as strings (the scalar kinds; arrays and maps as their text)."""
    out: dict[str, str] = {}
    for kv in pairs:
        value = kv.value
        text = value.string_value  # a non-empty one is the value (the usual kind)
        if text:
            out[kv.key] = text
            continue
        kind = value.WhichOneof("value")
        if kind == "string_value":
            out[kv.key] = value.string_value
        elif kind is None:
            out[kv.key] = ""
        elif kind in ("array_value", "kvlist_value"):
            out[kv.key] = "[...]"
        elif kind == "bytes_value":
            out[kv.key] = value.bytes_value.hex()
        else:
            out[kv.key] = str(getattr(value, kind))
    return out
