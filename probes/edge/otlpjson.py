"""OTLP JSON metrics read directly into the :class:`~tfwarden.probes.edge.points.Batch` that
``batch_of`` makes of the protobuf message (``json_format.ParseDict`` is pure Python and was
7x too slow for the ingest goal).

Only the canonical form is read here: lowerCamelCase field names, each value of its JSON type
(objects, arrays, strings, booleans, numbers; 64-bit integers as numbers or decimal strings, enums
as integers, trace/span ids in hex), ``null`` as an absent field, unknown fields ignored after the
same checks ``otlp.decode`` gives them (hex ids, depth). Anything else (snake_case names, enum
names, doubles in strings or NaN, integral floats for integers, out-of-range numbers, null array
items, two members of a oneof, bodies orjson does not read: lone surrogates, a BOM, UTF-16...)
goes the way it always went (``otlp.parse``: json.loads + ParseDict), which either accepts it or
answers 400 with what is wrong, so this module never refuses anything itself and a body decodes
to the same points, rejections and answers either way (tests/unit/probes/test_otlpjson.py).
"""

from __future__ import annotations

import base64
import gc
from typing import Any

import orjson
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from tfwarden.core.errors import OtlpJsonFallback
from tfwarden.probes.edge import otlp
from tfwarden.probes.edge.otlp import ExportMetricsServiceRequest, OtlpRejected
from tfwarden.probes.edge.points import Batch, MetricPoints, batch_of

U32, U64 = (1 << 32) - 1, (1 << 64) - 1
I32_MIN, I32_MAX, I64_MIN, I64_MAX = -(1 << 31), (1 << 31) - 1, -(1 << 63), (1 << 63) - 1
MAX_DEPTH = otlp.MAX_JSON_DEPTH
_F = FieldDescriptor
_RANGES = {_F.TYPE_INT32: (I32_MIN, I32_MAX), _F.TYPE_SINT32: (I32_MIN, I32_MAX),
           _F.TYPE_SFIXED32: (I32_MIN, I32_MAX),
           _F.TYPE_UINT32: (0, U32), _F.TYPE_FIXED32: (0, U32),
           _F.TYPE_INT64: (I64_MIN, I64_MAX), _F.TYPE_SINT64: (I64_MIN, I64_MAX),
           _F.TYPE_SFIXED64: (I64_MIN, I64_MAX), _F.TYPE_UINT64: (0, U64),
           _F.TYPE_FIXED64: (0, U64)}


def read_metrics(body: bytes, content_type: str | None, content_encoding: str | None,
                 max_bytes: int) -> Batch:
    """An ExportMetricsServiceRequest body (either encoding, maybe compressed) as a Batch;
    OtlpRejected (400, 413, 415) as ``otlp.decode`` refuses it."""
    encoding, data = otlp.inflate(body, content_type, content_encoding, max_bytes)
    collecting = gc.isenabled()
    if collecting:  # the many short-lived containers decoding makes hold no cycles: the
        gc.disable()  # collector is paused meanwhile (it doubled the time of a JSON body)
    try:
        if encoding == otlp.JSON:
            batch = metrics_batch(data)
            if batch is not None:
                return batch
        return batch_of(otlp.parse(ExportMetricsServiceRequest, data, encoding))
    finally:
        if collecting:
            gc.enable()


def metrics_batch(data: bytes) -> Batch | None:
    """The Batch of an OTLP JSON metrics request in canonical form, else None."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None  # json.loads decides (it reads more than orjson: NaN, BOMs, UTF-16)
    if type(document) is not dict:
        return None
    try:
        return _request(document)
    except OtlpJsonFallback:
        return None


# -- the descriptors, for the fields read generically -------------------------------------------
_JSON_FIELDS: dict[str, dict[str, FieldDescriptor]] = {}
_PROTO_NAMES: dict[str, frozenset[str]] = {}


def _fields(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    fields = _JSON_FIELDS.get(descriptor.full_name)
    if fields is None:
        fields = _JSON_FIELDS[descriptor.full_name] = {f.json_name: f for f in descriptor.fields}
        _PROTO_NAMES[descriptor.full_name] = frozenset(f.name for f in descriptor.fields)
    return fields


def _descriptor(path: str) -> Descriptor:
    descriptor: Descriptor = ExportMetricsServiceRequest.DESCRIPTOR
    for name in path.split("."):
        descriptor = descriptor.fields_by_name[name].message_type
    _fields(descriptor)
    return descriptor


_fields(ExportMetricsServiceRequest.DESCRIPTOR)
_RESOURCE_METRICS = _descriptor("resource_metrics")
_RESOURCE = _descriptor("resource_metrics.resource")
_SCOPE_METRICS = _descriptor("resource_metrics.scope_metrics")
_SCOPE = _descriptor("resource_metrics.scope_metrics.scope")
_METRIC = _descriptor("resource_metrics.scope_metrics.metrics")
_KEY_VALUE = _descriptor("resource_metrics.resource.attributes")
_ANY_VALUE = _descriptor("resource_metrics.resource.attributes.value")
_ARRAY = _descriptor("resource_metrics.resource.attributes.value.array_value")
_KVLIST = _descriptor("resource_metrics.resource.attributes.value.kvlist_value")
_DATA = {kind: _descriptor(f"resource_metrics.scope_metrics.metrics.{kind}")
         for kind in ("gauge", "sum", "histogram", "exponential_histogram", "summary")}
_HISTOGRAM_POINT = _descriptor("resource_metrics.scope_metrics.metrics.histogram.data_points")
_NUMBER_POINT = _descriptor("resource_metrics.scope_metrics.metrics.gauge.data_points")
_EXEMPLARS = _fields(_HISTOGRAM_POINT)["exemplars"]
_SNAKE = {"gauge": "gauge", "sum": "sum", "histogram": "histogram",
          "exponentialHistogram": "exponential_histogram", "summary": "summary"}
_ANY_KINDS = frozenset(_fields(_ANY_VALUE))
_ENUMS: dict[str, dict[str, int]] = {}


def _enum_names(field: FieldDescriptor) -> dict[str, int]:
    names = _ENUMS.get(field.enum_type.full_name)
    if names is None:
        names = _ENUMS[field.enum_type.full_name] = {
            value.name: value.number for value in field.enum_type.values}
    return names


_TEMPORALITIES = _enum_names(_fields(_DATA["histogram"])["aggregationTemporality"])

# the keys the hot paths below read themselves (others: known ones generically, unknown ones
# checked and ignored)
_RESOURCE_METRICS_KEYS = frozenset({"resource", "scopeMetrics", "schemaUrl"})
_RESOURCE_KEYS = frozenset({"attributes", "droppedAttributesCount"})
_SCOPE_METRICS_KEYS = frozenset({"scope", "metrics", "schemaUrl"})
_SCOPE_KEYS = frozenset({"name", "version"})
_METRIC_KEYS = frozenset({"name", "description", "unit", *_SNAKE})
_KV_KEYS = frozenset({"key", "value"})
_DATA_KEYS = {"gauge": frozenset({"dataPoints"}), "histogram": frozenset({
    "dataPoints", "aggregationTemporality"}), "sum": frozenset({
        "dataPoints", "aggregationTemporality", "isMonotonic"})}
_HISTOGRAM_POINT_KEYS = frozenset(_fields(_HISTOGRAM_POINT))
_NUMBER_POINT_KEYS = frozenset(_fields(_NUMBER_POINT))


# -- the hot path: resources, metrics, histogram and number points, attributes -------------------
def _request(document: dict[str, Any]) -> Batch:
    if len(document) != 1 or "resourceMetrics" not in document:
        _others(document, ExportMetricsServiceRequest.DESCRIPTOR, frozenset({"resourceMetrics"}),
                1)
    listed = document.get("resourceMetrics")
    resources: list[tuple[dict[str, str], list[MetricPoints]]] = []
    total = 0
    for resource_metrics in _list(listed):
        if type(resource_metrics) is not dict:
            raise OtlpJsonFallback
        if not _RESOURCE_METRICS_KEYS.issuperset(resource_metrics):
            _others(resource_metrics, _RESOURCE_METRICS, _RESOURCE_METRICS_KEYS, 3)
        resource = resource_metrics.get("resource")
        attributes: dict[str, str] = {}
        if resource is not None:
            if type(resource) is not dict:
                raise OtlpJsonFallback
            if not _RESOURCE_KEYS.issuperset(resource):
                _others(resource, _RESOURCE, _RESOURCE_KEYS, 4)
            attributes = _attributes(resource.get("attributes"), 4)
            _integer(resource.get("droppedAttributesCount"), 0, U32)
        _string(resource_metrics.get("schemaUrl"))
        metrics: list[MetricPoints] = []
        for scope_metrics in _list(resource_metrics.get("scopeMetrics")):
            if type(scope_metrics) is not dict:
                raise OtlpJsonFallback
            if not _SCOPE_METRICS_KEYS.issuperset(scope_metrics):
                _others(scope_metrics, _SCOPE_METRICS, _SCOPE_METRICS_KEYS, 5)
            _string(scope_metrics.get("schemaUrl"))
            scope = scope_metrics.get("scope")
            if scope is not None:
                if type(scope) is dict and _SCOPE_KEYS.issuperset(scope):
                    _string(scope.get("name"))
                    _string(scope.get("version"))
                else:
                    _message(_SCOPE, scope, 5)
            for metric in _list(scope_metrics.get("metrics")):
                points = _metric(metric)
                total += len(points.points)
                metrics.append(points)
        resources.append((attributes, metrics))
    return Batch(resources, total)


def _metric(metric: Any) -> MetricPoints:
    """A Metric (at depth 6)."""
    if type(metric) is not dict:
        raise OtlpJsonFallback
    if not _METRIC_KEYS.issuperset(metric):
        _others(metric, _METRIC, _METRIC_KEYS, 7)
    name, unit = _string(metric.get("name")), _string(metric.get("unit"))
    _string(metric.get("description"))
    kind, data = None, None
    for key in _SNAKE:
        value = metric.get(key)
        if value is not None:
            if kind is not None:
                raise OtlpJsonFallback  # two kinds of data: json_format says so
            kind, data = key, value
    if kind is None:
        return MetricPoints(name, unit, None, 0, [])
    if type(data) is not dict:
        raise OtlpJsonFallback
    snake = _SNAKE[kind]
    hot = _DATA_KEYS.get(kind)
    if hot is None:  # exponential histograms and summaries: checked, their points counted
        _message(_DATA[snake], data, 7)
        return MetricPoints(name, unit, snake, 0, [None] * len(_list(data.get("dataPoints"))))
    if not hot.issuperset(data):
        _others(data, _DATA[snake], hot, 8)
    temporality = 0
    if kind != "gauge":
        temporality = _enum(data.get("aggregationTemporality"), _TEMPORALITIES)
    if kind == "sum":
        _bool(data.get("isMonotonic"))
    listed = _list(data.get("dataPoints"))
    if kind == "histogram":
        return MetricPoints(name, unit, snake, temporality,
                            [_histogram_point(point) for point in listed])
    return MetricPoints(name, unit, snake, 0, [_number_point(point) for point in listed])


def _histogram_point(point: Any) -> tuple[Any, ...]:
    """A HistogramDataPoint (at depth 9) as (attributes, start, time, bounds, counts, sum,
    count)."""
    if type(point) is not dict:
        raise OtlpJsonFallback
    if not _HISTOGRAM_POINT_KEYS.issuperset(point):
        _others(point, _HISTOGRAM_POINT, _HISTOGRAM_POINT_KEYS, 10)
    own = _attributes(point.get("attributes"), 10)
    exemplars = point.get("exemplars")
    if exemplars is not None:
        _field(_EXEMPLARS, exemplars, 10)
    _integer(point.get("flags"), 0, U32)
    _double(point.get("min"))
    _double(point.get("max"))
    return (own, _integer(point.get("startTimeUnixNano"), 0, U64),
            _integer(point.get("timeUnixNano"), 0, U64), _doubles(point.get("explicitBounds")),
            _counts(point.get("bucketCounts")), _double(point.get("sum")),
            _integer(point.get("count"), 0, U64))


def _number_point(point: Any) -> tuple[Any, ...]:
    """A NumberDataPoint (at depth 9) as (attributes, time, value)."""
    if type(point) is not dict:
        raise OtlpJsonFallback
    if not _NUMBER_POINT_KEYS.issuperset(point):
        _others(point, _NUMBER_POINT, _NUMBER_POINT_KEYS, 10)
    own = _attributes(point.get("attributes"), 10)
    exemplars = point.get("exemplars")
    if exemplars is not None:
        _field(_EXEMPLARS, exemplars, 10)
    _integer(point.get("flags"), 0, U32)
    _integer(point.get("startTimeUnixNano"), 0, U64)
    as_double, as_int = point.get("asDouble"), point.get("asInt")
    if as_double is not None:
        if as_int is not None:
            raise OtlpJsonFallback  # both members of the oneof
        value = _double(as_double)
    else:
        value = float(_integer(as_int, I64_MIN, I64_MAX))
    return own, _integer(point.get("timeUnixNano"), 0, U64), value


def _attributes(pairs: Any, depth: int) -> dict[str, str]:
    """KeyValues (the list at ``depth``) as ``points.attributes_of`` shows them."""
    if pairs is None:
        return {}
    if type(pairs) is not list:
        raise OtlpJsonFallback
    out: dict[str, str] = {}
    for pair in pairs:
        if type(pair) is not dict:
            raise OtlpJsonFallback
        if len(pair) == 2:  # the usual: {"key": "...", "value": {"stringValue": "..."}}
            key, value = pair.get("key"), pair.get("value")
            if type(key) is str and type(value) is dict and len(value) == 1:
                text = value.get("stringValue")
                if type(text) is str:
                    out[key] = text
                    continue
        if not _KV_KEYS.issuperset(pair):
            _others(pair, _KEY_VALUE, _KV_KEYS, depth + 2)
        key = pair.get("key")
        if key is None:
            key = ""
        elif type(key) is not str:
            raise OtlpJsonFallback
        out[key] = _text(pair.get("value"), depth + 2)
    return out


def _text(value: Any, depth: int) -> str:
    """An AnyValue (at ``depth``) as ``points._scalar`` shows it."""
    if value is None:
        return ""
    if type(value) is not dict:
        raise OtlpJsonFallback
    kind, raw = None, None
    for key, item in value.items():
        if key not in _ANY_KINDS:
            _other(_ANY_VALUE, key, item, depth + 1)
        elif item is not None:
            if kind is not None:
                raise OtlpJsonFallback  # two members of the oneof
            kind, raw = key, item
    if kind is None:
        return ""
    if kind == "stringValue":
        return _string(raw)
    if kind == "boolValue":
        _bool(raw)
        return str(raw)
    if kind == "intValue":
        return str(_integer(raw, I64_MIN, I64_MAX))
    if kind == "doubleValue":
        return str(_double(raw))
    if kind == "bytesValue":
        return _base64(raw).hex()
    if kind == "stringValueStrindex":
        return str(_integer(raw, I32_MIN, I32_MAX))
    _message(_ARRAY if kind == "arrayValue" else _KVLIST, raw, depth + 1)
    return "[...]"


# -- scalars, as json_format converts them (anything it would convert differently: OtlpJsonFallback) ---------
def _list(value: Any) -> list[Any]:
    if value is None:
        return []
    if type(value) is not list:
        raise OtlpJsonFallback
    return value


def _string(value: Any) -> str:
    if value is None:
        return ""
    if type(value) is not str:
        raise OtlpJsonFallback
    return value  # orjson refuses unpaired surrogates (json_format's check)


def _bool(value: Any) -> bool:
    if value is None:
        return False
    if type(value) is not bool:
        raise OtlpJsonFallback
    return value


def _integer(value: Any, low: int, high: int) -> int:
    """An integer field: a JSON integer or a decimal string (json_format: int(), no spaces)."""
    if value is None:
        return 0
    kind = type(value)
    if kind is int:
        number: int = value
    elif kind is str:
        if " " in value:
            raise OtlpJsonFallback
        try:
            number = int(value)
        except ValueError:
            raise OtlpJsonFallback from None
    else:
        raise OtlpJsonFallback  # floats (json_format takes integral ones), bools, objects...
    if number < low or number > high:
        raise OtlpJsonFallback
    return number


def _enum(value: Any, names: dict[str, int]) -> int:
    """An enum (open, as proto3's are): its name (json_format writes names) or its number."""
    if value is None:
        return 0
    if type(value) is str:
        number = names.get(value)
        if number is not None:
            return number
        try:  # json_format: int() of a string that is not a name
            number = int(value)
        except ValueError:
            raise OtlpJsonFallback from None
    elif type(value) is int:
        number = value
    else:
        raise OtlpJsonFallback
    if number < I32_MIN or number > I32_MAX:
        raise OtlpJsonFallback
    return number


def _double(value: Any) -> float:
    if value is None:
        return 0.0
    kind = type(value)
    if kind is float:
        if value - value != 0.0:  # NaN, infinities: json_format refuses them unquoted
            raise OtlpJsonFallback
        number: float = value
        return number
    if kind is int:
        try:
            return float(value)
        except OverflowError:
            raise OtlpJsonFallback from None
    raise OtlpJsonFallback  # strings ("NaN", "1.5"), bools...


def _doubles(values: Any) -> tuple[float, ...]:
    if values is None:
        return ()
    if type(values) is not list or not set(map(type, values)) <= {float, int}:
        raise OtlpJsonFallback
    try:
        numbers = tuple(map(float, values))
    except OverflowError:
        raise OtlpJsonFallback from None
    total = sum(numbers)
    if total - total != 0.0:  # a NaN or an infinity among them (or a sum too large: OtlpJsonFallback)
        raise OtlpJsonFallback
    return numbers


def _counts(values: Any) -> tuple[int, ...]:
    """A repeated uint64 (numbers, decimal strings or both)."""
    if values is None:
        return ()
    if type(values) is not list:
        raise OtlpJsonFallback
    kinds = set(map(type, values))
    if kinds <= {int}:
        numbers: tuple[int, ...] = tuple(values)
    elif kinds == {str}:
        if " " in "".join(values):
            raise OtlpJsonFallback
        try:
            numbers = tuple(map(int, values))
        except ValueError:
            raise OtlpJsonFallback from None
    else:
        return tuple(_integer(value, 0, U64) if value is not None else _null() for value in values)
    if numbers and (min(numbers) < 0 or max(numbers) > U64):
        raise OtlpJsonFallback
    return numbers


def _null() -> int:
    raise OtlpJsonFallback  # null in a repeated field: json_format refuses it


def _base64(value: Any) -> bytes:
    if type(value) is not str:
        raise OtlpJsonFallback
    encoded = value.encode()
    try:  # json_format's own decoding of bytes fields
        return base64.urlsafe_b64decode(encoded + b"=" * (4 - len(encoded) % 4))
    except ValueError:
        raise OtlpJsonFallback from None


def _hex_id(key: str, value: Any) -> None:
    if type(value) is not str:
        raise OtlpJsonFallback
    try:
        otlp._hex_to_base64(key, value)
    except OtlpRejected:
        raise OtlpJsonFallback from None


# -- everything else, from the descriptors --------------------------------------------------------
def _others(value: dict[str, Any], descriptor: Descriptor, handled: frozenset[str],
            depth: int) -> None:
    """The keys of a message (its members at ``depth``) the hot path does not read."""
    for key, item in value.items():
        if key not in handled:
            _other(descriptor, key, item, depth)


def _other(descriptor: Descriptor, key: str, item: Any, depth: int) -> None:
    field = _fields(descriptor).get(key)
    if field is not None:
        _field(field, item, depth, key)
    elif key in _PROTO_NAMES[descriptor.full_name] or key.startswith("["):
        raise OtlpJsonFallback  # a snake_case name (json_format reads it too) or an extension
    elif key in otlp.HEX_ID_FIELDS and type(item) is str:
        _hex_id(key, item)  # otlp.decode checks hex ids wherever they are
    else:  # unknown: ignored, after otlp.decode's checks of hex ids and depth
        try:
            otlp._hex_ids_to_base64(item, depth)
        except (OtlpRejected, RecursionError):
            raise OtlpJsonFallback from None


def _message(descriptor: Descriptor, value: Any, depth: int) -> None:
    """Checks a message (at ``depth``) field by field."""
    if depth > MAX_DEPTH or type(value) is not dict:
        raise OtlpJsonFallback
    fields = _fields(descriptor)
    oneofs: set[str] = set()
    for key, item in value.items():
        field = fields.get(key)
        if field is None:
            _other(descriptor, key, item, depth + 1)
            continue
        if item is None:
            continue
        if field.containing_oneof is not None:
            if field.containing_oneof.name in oneofs:
                raise OtlpJsonFallback
            oneofs.add(field.containing_oneof.name)
        _field(field, item, depth + 1, key)


def _field(field: FieldDescriptor, value: Any, depth: int, key: str = "") -> None:
    if value is None:
        return  # null: the field is cleared
    if depth > MAX_DEPTH:
        raise OtlpJsonFallback
    if field.is_repeated:
        if type(value) is not list:
            raise OtlpJsonFallback
        for item in value:
            if item is None:
                raise OtlpJsonFallback
            _single(field, item, depth + 1, key)
    else:
        _single(field, value, depth, key)


def _single(field: FieldDescriptor, value: Any, depth: int, key: str) -> None:
    if depth > MAX_DEPTH:
        raise OtlpJsonFallback
    kind = field.type
    if kind == _F.TYPE_MESSAGE:
        _message(field.message_type, value, depth)
    elif kind in _RANGES:
        _integer(value, *_RANGES[kind])
    elif kind == _F.TYPE_ENUM:
        _enum(value, _enum_names(field))
    elif kind == _F.TYPE_DOUBLE:
        _double(value)
    elif kind == _F.TYPE_BOOL:
        _bool(value)
    elif kind == _F.TYPE_STRING:
        _string(value)
    elif kind == _F.TYPE_BYTES:
        if key in otlp.HEX_ID_FIELDS:
            _hex_id(key, value)
        else:
            _base64(value)
    else:
        raise OtlpJsonFallback  # float, groups: not in OTLP metrics
