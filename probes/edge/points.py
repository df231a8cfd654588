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
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections import OrderedDict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from tfwarden.probes.edge.otlp import ExportMetricsServiceRequest

INFERENCE = "ml.inference.duration"
LOAD = "ml.model.load.duration"
MEMORY = "process.memory.usage"
DURATIONS = (INFERENCE, LOAD)
KNOWN = (*DURATIONS, MEMORY)
UNIT_TO_MS = {"ms": 1.0, "s": 1000.0}
TEMPORALITY_DELTA, TEMPORALITY_CUMULATIVE = 1, 2


@dataclass(frozen=True, slots=True)
class EdgeHistogram:
    """What one device's stream of one metric added since its last report."""

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


@dataclass(frozen=True, slots=True)
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
        return hmac.new(self.key, device_id.encode(), hashlib.sha256).hexdigest()[:16]


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
        key = hash(stream)
        previous = self._last.pop(key, None)
        self._last[key] = struct.pack(f"<QdQ{len(counts)}Q", start, total, count, *counts)
        while len(self._last) > self.max_streams:
            self._last.popitem(last=False)
        if previous is None:
            return counts, total, count
        last_start, last_total, last_count, *last = struct.unpack(
            f"<QdQ{(len(previous) - 24) // 8}Q", previous)
        if last_start != start or len(last) != len(counts) or count < last_count or \
                any(now < before for now, before in zip(counts, last, strict=True)):
            return counts, total, count  # the stream restarted: everything is new
        return (tuple(now - before for now, before in zip(counts, last, strict=True)),
                total - last_total, count - last_count)


def flatten(request: ExportMetricsServiceRequest, deltas: Deltas, hasher: DeviceHasher,
            models: Collection[str] | None = None) -> Flattened:
    """The known edge metrics of ``request`` (of ``models`` only, when given) as histogram
    deltas and values; the rest counted as rejected with the reasons."""
    out = Flattened()
    for resource_metrics in request.resource_metrics:
        resource = attributes_of(resource_metrics.resource.attributes)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                _metric(metric, resource, deltas, hasher, models, out)
    return out


def _metric(metric: Any, resource: dict[str, str], deltas: Deltas, hasher: DeviceHasher,
            models: Collection[str] | None, out: Flattened) -> None:
    kind = metric.WhichOneof("data")
    points = list(getattr(metric, kind).data_points) if kind else []
    if metric.name not in KNOWN:
        out.reject(len(points), f"metric {metric.name!r} is not one of {', '.join(KNOWN)}")
        return
    if metric.name in DURATIONS and (kind != "histogram" or metric.unit not in UNIT_TO_MS):
        out.reject(len(points), f"{metric.name} must be a histogram in ms or s "
                                f"(got {kind} in {metric.unit or 'no unit'!r})")
        return
    if metric.name == MEMORY and kind not in ("gauge", "sum"):
        out.reject(len(points), f"{MEMORY} must be a gauge or sum (got {kind})")
        return
    for point in points:
        attributes = {**resource, **attributes_of(point.attributes)}
        model, version = attributes.get("ml.model.name", ""), attributes.get("ml.model.version", "")
        if not model or not version:
            out.reject(1, "points need ml.model.name and ml.model.version (resource attributes)")
            continue
        if models is not None and model not in models:
            out.reject(1, f"model {model[:100]!r} is not in edge.models")
            continue
        device = hasher(attributes.pop("device.id", ""))
        t = point.time_unix_nano / 1e9
        if kind == "histogram":
            _histogram(metric, point, model, version, device, attributes, t, deltas, out)
        else:
            value = point.as_double if point.WhichOneof("value") == "as_double" else point.as_int
            out.values.append(EdgeValue(model, version, metric.name, device, attributes, t,
                                        float(value)))


def _histogram(metric: Any, point: Any, model: str, version: str, device: str,
               attributes: dict[str, str], t: float, deltas: Deltas, out: Flattened) -> None:
    bounds, counts = tuple(point.explicit_bounds), tuple(point.bucket_counts)
    if len(counts) != len(bounds) + 1 or not _increasing(bounds):
        out.reject(1, "histogram bucket_counts must be one more than increasing explicit_bounds")
        return
    scale = UNIT_TO_MS[metric.unit]
    if metric.histogram.aggregation_temporality == TEMPORALITY_CUMULATIVE:
        stream = (device, model, version, metric.name, tuple(sorted(attributes.items())), bounds)
        counts, total, count = deltas.delta(stream, point.start_time_unix_nano, counts, point.sum,
                                            point.count)
    else:
        total, count = point.sum, point.count
    if count == 0:
        return  # nothing new from this stream
    out.histograms.append(EdgeHistogram(
        model, version, metric.name, device, attributes, t,
        bounds if scale == 1 else tuple(b * scale for b in bounds), counts, total * scale, count))


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
    return {kv.key: str(_scalar(kv.value)) for kv in pairs}


def _scalar(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return ""
    if kind in ("array_value", "kvlist_value"):
        return "[...]"
    raw = getattr(value, kind)
    return raw.hex() if kind == "bytes_value" else raw

