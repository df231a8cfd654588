"""The direct OTLP-JSON reader against the way JSON was read before (json.loads + protobuf's
json_format.ParseDict, then flatten): for generated requests, as json_format and as the
OpenTelemetry SDK's own JSON encoder write them, the same points, values, rejections and
reasons; for hostile or unusual bodies the same answer (the same points, or the same 400)."""

from __future__ import annotations

import asyncio
import base64
import copy
import dataclasses
import json
from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.metrics.view import (
    ExplicitBucketHistogramAggregation,
    ExponentialBucketHistogramAggregation,
    View,
)
from opentelemetry.sdk.resources import Resource

from tfwarden.probes.edge import otlp, otlpjson
from tfwarden.probes.edge.otlp import ExportMetricsServiceRequest, OtlpRejected
from tfwarden.probes.edge.points import (
    INFERENCE,
    LOAD,
    MEMORY,
    Batch,
    Deltas,
    DeviceHasher,
    batch_of,
    flatten_batch,
)
from tfwarden.probes.edge.receiver import EdgeReceiver
from tfwarden.probes.edge.settings import EdgeSettings

HASH = DeviceHasher(b"k")
_F = FieldDescriptor
INT64S = {_F.TYPE_INT64, _F.TYPE_UINT64, _F.TYPE_FIXED64, _F.TYPE_SFIXED64, _F.TYPE_SINT64}
U64 = (1 << 64) - 1


# -- what a body decodes to, both ways -----------------------------------------------------------
def flattened(batch: Batch) -> tuple[Any, ...]:
    """Everything the receiver takes from a batch: the point count and two reports' worth of
    flatten (the second one against the first's delta streams), of one model and of all."""
    deltas = Deltas(1000)
    first = flatten_batch(batch, deltas, HASH, {"m"})
    again = flatten_batch(batch, deltas, HASH, None)
    return batch.points, first, again


def before(data: bytes) -> tuple[Any, ...]:
    """The old way: json.loads + ParseDict (otlp.parse), then flatten; or the refusal."""
    try:
        return ("ok", *flattened(batch_of(otlp.parse(ExportMetricsServiceRequest, data,
                                                     otlp.JSON))))
    except OtlpRejected as refused:
        return ("refused", refused.status, refused.message)


def now(data: bytes) -> tuple[Any, ...]:
    """What the receiver does now (the direct reader, json_format for the rest)."""
    try:
        return ("ok", *flattened(otlpjson.read_metrics(data, otlp.JSON, None, 1 << 30)))
    except OtlpRejected as refused:
        return ("refused", refused.status, refused.message)


def assert_read_directly_and_alike(data: bytes, request: ExportMetricsServiceRequest | None
                                   = None) -> None:
    fast = otlpjson.metrics_batch(data)
    assert fast is not None, "a canonical body must not need json_format"
    assert repr(("ok", *flattened(fast))) == repr(before(data))  # attribute order too
    if request is not None:  # and what the protobuf encoding of the same request gives
        assert repr(flattened(fast)) == repr(flattened(batch_of(request)))


# -- requests ------------------------------------------------------------------------------------
ATTRIBUTE_KEYS = st.sampled_from(["ml.model.name", "ml.model.version", "ml.delegate", "device.id",
                                  "device.model.identifier", "error.type", "k", ""])
STRINGS = st.sampled_from(["m", "2", "other", "", "gpu", "d1", "d2", "é ✓ 😀"]) | st.text(max_size=5)
# doubles near the largest one are left to json_format (the hostile cases cover them)
FINITE = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300)
U64S = st.integers(0, U64) | st.integers(0, 50)
ANY_VALUES = st.recursive(
    st.none() | STRINGS.map(lambda s: ("s", s)) | st.integers(-(1 << 63), (1 << 63) - 1).map(
        lambda n: ("i", n)) | FINITE.map(lambda f: ("d", f)) | st.booleans().map(
        lambda b: ("b", b)) | st.binary(max_size=6).map(lambda b: ("y", b)),
    lambda inner: st.lists(inner, max_size=3).map(lambda v: ("a", v)) | st.lists(
        st.tuples(STRINGS, inner), max_size=3).map(lambda v: ("k", v)), max_leaves=6)
ATTRIBUTES = st.lists(st.tuples(ATTRIBUTE_KEYS, STRINGS.map(lambda s: ("s", s)) | ANY_VALUES),
                      max_size=6)


def set_any(target: Any, value: Any) -> None:
    if value is None:
        return
    kind, raw = value
    if kind == "s":
        target.string_value = raw
    elif kind == "i":
        target.int_value = raw
    elif kind == "d":
        target.double_value = raw
    elif kind == "b":
        target.bool_value = raw
    elif kind == "y":
        target.bytes_value = raw
    elif kind == "a":
        target.array_value.SetInParent()
        for item in raw:
            set_any(target.array_value.values.add(), item)
    else:
        target.kvlist_value.SetInParent()
        for key, item in raw:
            set_any(target.kvlist_value.values.add(key=key).value, item)


def set_attributes(target: Any, pairs: list[tuple[str, Any]]) -> None:
    for key, value in pairs:
        set_any(target.add(key=key).value, value)


def model_resource(draw: Callable[..., Any]) -> list[tuple[str, Any]]:
    pairs = draw(ATTRIBUTES)
    if draw(st.booleans()):
        pairs += [("ml.model.name", ("s", draw(st.sampled_from(["m", "m", "other"])))),
                  ("ml.model.version", ("s", draw(st.sampled_from(["2", "2", "3", ""])))),
                  ("device.id", ("s", draw(st.sampled_from(["d1", "d2", "d3"]))))]
    return pairs


def exemplars(draw: Callable[..., Any], target: Any) -> None:
    for _ in range(draw(st.integers(0, 2))):
        exemplar = target.add(time_unix_nano=draw(U64S))
        if draw(st.booleans()):
            exemplar.as_double = draw(FINITE)
        else:
            exemplar.as_int = draw(st.integers(-(1 << 63), (1 << 63) - 1))
        exemplar.trace_id = draw(st.sampled_from([b"", bytes(range(16))]))
        exemplar.span_id = draw(st.sampled_from([b"", bytes(range(8))]))
        set_attributes(exemplar.filtered_attributes, draw(ATTRIBUTES))


@st.composite
def requests(draw: Callable[..., Any]) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    for _ in range(draw(st.integers(0, 3))):
        resource_metrics = request.resource_metrics.add()
        if draw(st.booleans()):
            resource_metrics.resource.SetInParent()
        set_attributes(resource_metrics.resource.attributes, model_resource(draw))
        resource_metrics.resource.dropped_attributes_count = draw(st.integers(0, 3))
        resource_metrics.schema_url = draw(st.sampled_from(["", "https://x/1.2"]))
        for _ in range(draw(st.integers(0, 2))):
            scope_metrics = resource_metrics.scope_metrics.add()
            if draw(st.booleans()):
                scope_metrics.scope.name = draw(STRINGS)
                set_attributes(scope_metrics.scope.attributes, draw(ATTRIBUTES))
            for _ in range(draw(st.integers(0, 3))):
                metric = scope_metrics.metrics.add(
                    name=draw(st.sampled_from([INFERENCE, INFERENCE, LOAD, MEMORY, "app.x"])),
                    unit=draw(st.sampled_from(["ms", "s", "By", "min", ""])),
                    description=draw(st.sampled_from(["", "d"])))
                set_attributes(metric.metadata, draw(st.lists(st.tuples(STRINGS, ANY_VALUES),
                                                              max_size=1)))
                data_point(draw, metric)
    return request


def data_point(draw: Callable[..., Any], metric: Any) -> None:
    kind = draw(st.sampled_from(["histogram", "histogram", "gauge", "sum",
                                 "exponential_histogram", "summary", None]))
    if kind is None:
        return
    data = getattr(metric, kind)
    data.SetInParent()
    if kind in ("histogram", "sum", "exponential_histogram"):
        data.aggregation_temporality = draw(st.sampled_from([0, 1, 2, 2]))
    for _ in range(draw(st.integers(0, 3))):
        point = data.data_points.add(start_time_unix_nano=draw(st.sampled_from([0, 1, 7])),
                                     time_unix_nano=draw(U64S))
        set_attributes(point.attributes, draw(st.sampled_from([[], [], []]) | ATTRIBUTES))
        if kind == "histogram":
            bounds = draw(st.lists(FINITE, max_size=4))
            if draw(st.booleans()):
                bounds = sorted(set(bounds))
            n = len(bounds) + 1 if draw(st.integers(0, 5)) else draw(st.integers(0, 5))
            point.explicit_bounds.extend(bounds)
            point.bucket_counts.extend(draw(st.lists(U64S, min_size=n, max_size=n)))
            point.count, point.sum = draw(U64S), draw(FINITE)
            if draw(st.booleans()):
                point.min, point.max = draw(FINITE), draw(FINITE)
            point.flags = draw(st.integers(0, 1))
            exemplars(draw, point.exemplars)
        elif kind in ("gauge", "sum"):
            which = draw(st.sampled_from(["double", "int", None]))
            if which == "double":
                point.as_double = draw(FINITE)
            elif which == "int":
                point.as_int = draw(st.integers(-(1 << 63), (1 << 63) - 1))
            exemplars(draw, point.exemplars)
        elif kind == "exponential_histogram":
            point.scale, point.zero_count = draw(st.integers(-10, 20)), draw(U64S)
            point.positive.bucket_counts.extend(draw(st.lists(U64S, max_size=3)))
        else:
            point.quantile_values.add(quantile=0.5, value=draw(FINITE))


def otlp_dict(message: Any, ints: str, enums: str, draw: Callable[..., Any]) -> Any:
    """The request as OTLP JSON: json_format's dict with trace/span ids in hex (OTLP's rule),
    64-bit integers as strings, numbers or either (``ints``) and enums as names or numbers."""
    document = json_format.MessageToDict(message)
    return _otlp(document, message.DESCRIPTOR, ints, enums, draw)


def _otlp(value: Any, descriptor: Descriptor, ints: str, enums: str,
          draw: Callable[..., Any]) -> Any:
    fields = {f.json_name: f for f in descriptor.fields}
    for key, item in list(value.items()):
        field = fields[key]
        items = item if field.is_repeated else [item]
        converted = []
        for one in items:
            if field.type == _F.TYPE_MESSAGE:
                one = _otlp(one, field.message_type, ints, enums, draw)
            elif field.type in INT64S and (ints == "number" or
                                          (ints == "mixed" and draw(st.booleans()))):
                one = int(one)
            elif field.type == _F.TYPE_ENUM and enums == "number":
                one = field.enum_type.values_by_name[one].number
            elif field.type == _F.TYPE_BYTES and key in otlp.HEX_ID_FIELDS:
                one = base64.b64decode(one).hex()
            converted.append(one)
        value[key] = converted if field.is_repeated else converted[0]
    return value


@settings(max_examples=400, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(requests(), st.sampled_from(["string", "number", "mixed"]),
       st.sampled_from(["name", "number"]), st.data())
def test_generated_requests_read_directly_give_what_json_format_and_protobuf_give(
        request: ExportMetricsServiceRequest, ints: str, enums: str, data: st.DataObject) -> None:
    document = otlp_dict(request, ints, enums, data.draw)
    assert_read_directly_and_alike(json.dumps(document).encode(), request)


def sdk_requests() -> tuple[ExportMetricsServiceRequest, bytes]:
    """One export of the real SDK, encoded by its protobuf and by its JSON encoder."""
    json_encoder = pytest.importorskip("opentelemetry.exporter.otlp.json.common.metrics_encoder")
    reader = InMemoryMetricReader()
    provider = MeterProvider(
        resource=Resource.create({"ml.model.name": "m", "ml.model.version": "2",
                                  "ml.delegate": "gpu", "device.id": "d1", "n": 3, "f": 0.5,
                                  "b": True, "a": ["x", "y"]}),
        metric_readers=[reader],
        views=[View(instrument_name=INFERENCE,
                    aggregation=ExplicitBucketHistogramAggregation([1, 5, 10, 50])),
               View(instrument_name="app.exp", aggregation=ExponentialBucketHistogramAggregation())])
    meter = provider.get_meter("edge", "1.0")
    inference = meter.create_histogram(INFERENCE, unit="ms")
    for ms in (0.5, 3, 7, 70):
        inference.record(ms, {"ml.runtime.name": "litert"})
    inference.record(9, {"error.type": "OutOfMemory", "device.id": "d2"})
    meter.create_histogram(LOAD, unit="s").record(0.25)
    meter.create_gauge(MEMORY, unit="By").set(52_000_000)
    meter.create_up_down_counter(MEMORY + ".x").add(-3)
    meter.create_counter("app.clicks").add(2, {"button": "ok"})
    meter.create_histogram("app.exp").record(4.5)
    data = reader.get_metrics_data()
    assert data is not None
    provider.shutdown()
    return encode_metrics(data), json_encoder.encode_metrics(data).to_json().encode()


def test_the_sdk_json_encoding_reads_directly_as_its_protobuf_encoding_flattens() -> None:
    request, body = sdk_requests()
    assert b'"aggregationTemporality": 2' in body.replace(b'":2', b'": 2')  # enums as numbers
    assert_read_directly_and_alike(body, request)
    flat = flattened(otlpjson.read_metrics(body, otlp.JSON, None, 1 << 20))[1]
    assert len(flat.histograms) == 3 and len(flat.values) == 1 and flat.rejected == 3


# -- hostile and unusual bodies: the same answer as before ---------------------------------------
def body_of(points: list[Any] | None = None, **metric: Any) -> dict[str, Any]:
    """A request of one resource (model m, version 2) with one metric."""
    return {"resourceMetrics": [{"resource": {"attributes": [
        {"key": "ml.model.name", "value": {"stringValue": "m"}},
        {"key": "ml.model.version", "value": {"stringValue": "2"}}]},
        "scopeMetrics": [{"scope": {"name": "edge"}, "metrics": [{
            "name": INFERENCE, "unit": "ms", **metric} if metric else {
            "name": INFERENCE, "unit": "ms", "histogram": {
                "aggregationTemporality": 2, "dataPoints": points if points is not None else [
                    {"timeUnixNano": "5", "count": "2", "sum": 3.5, "explicitBounds": [1, 5],
                     "bucketCounts": ["1", "1", "0"]}]}}]}]}]}


def point(**fields: Any) -> dict[str, Any]:
    return {"timeUnixNano": "5", "count": "2", "sum": 3.5, "explicitBounds": [1.0, 5.0],
            "bucketCounts": ["1", "1", "0"], **fields}


def _nested(depth: int) -> Any:
    value: Any = {"stringValue": "x"}
    for _ in range(depth):
        value = {"arrayValue": {"values": [value]}}
    return value


HOSTILE: list[tuple[str, Any]] = [
    ("canonical", body_of()),
    ("not an object", [1, 2]),
    ("a string", "x"),
    ("resourceMetrics not a list", {"resourceMetrics": 7}),
    ("resourceMetrics null", {"resourceMetrics": None}),
    ("a null resource", {"resourceMetrics": [None]}),
    ("resource a string (json_format reads its letters as unknown fields)",
     {"resourceMetrics": [{"resource": "abc"}]}),
    ("resource a number", {"resourceMetrics": [{"resource": 5}]}),
    ("resource a list of names", {"resourceMetrics": [{"resource": ["attributes"]}]}),
    ("snake_case names", {"resource_metrics": [{"scope_metrics": []}]}),
    ("both spellings", {"resourceMetrics": [], "resource_metrics": [{}]}),
    ("an extension name", {"[x.y]": 1}),
    ("unknown fields", {**body_of(), "somethingNew": {"a": [1, {"b": None}]}}),
    ("an unknown traceId that is not hex", {**body_of(), "traceId": "zz"}),
    ("an unknown spanId of the wrong size", {**body_of(), "x": [{"spanId": "abcd"}]}),
    ("an unknown field nested too deep", {**body_of(), "x": json.loads("[" * 40 + "]" * 40)}),
    ("missing everything", {}),
    ("a metric without data", body_of(histogram=None)),
    ("an empty histogram", body_of(histogram={})),
    ("a histogram that is a list", body_of(histogram=[])),
    ("two kinds of data", body_of(histogram={}, gauge={})),
    ("one kind and a null", body_of(histogram={"dataPoints": [point()]}, gauge=None)),
    ("enum as a name", body_of(histogram={"aggregationTemporality":
                                          "AGGREGATION_TEMPORALITY_CUMULATIVE"})),
    ("enum unknown name", body_of(histogram={"aggregationTemporality": "LATER"})),
    ("enum unknown number", body_of(histogram={"aggregationTemporality": 9})),
    ("enum too large", body_of(histogram={"aggregationTemporality": 1 << 40})),
    ("enum as a float", body_of(histogram={"aggregationTemporality": 2.0})),
    ("enum as a bool", body_of(histogram={"aggregationTemporality": True})),
    ("count as a number", body_of([point(count=2)])),
    ("count as an integral float", body_of([point(count=2.0)])),
    ("count as a fraction", body_of([point(count=2.5)])),
    ("count as exponent string", body_of([point(count="2e0")])),
    ("count with a space", body_of([point(count=" 2")])),
    ("count with a tab", body_of([point(count="2\t")])),
    ("count negative", body_of([point(count=-1)])),
    ("count huge", body_of([point(count=1 << 64)])),
    ("count max", body_of([point(count=str(U64))])),
    ("count huger than any double", body_of([point(count=10 ** 400)])),
    ("count as a bool", body_of([point(count=True)])),
    ("count as a list", body_of([point(count=[1])])),
    ("count null", body_of([point(count=None)])),
    ("time as unicode digits", body_of([point(timeUnixNano="\u0665")])),
    ("time with underscores", body_of([point(timeUnixNano="1_000")])),
    ("sum as a string", body_of([point(sum="3.5")])),
    ("sum NaN", body_of([point(sum="NaN")])),
    ("sum Infinity", body_of([point(sum="Infinity")])),
    ("sum as an integer", body_of([point(sum=3)])),
    ("sum a huge integer", body_of([point(sum=1 << 70)])),
    ("sum an integer too large for a double", body_of([point(sum=10 ** 400)])),
    ("sum a bool", body_of([point(sum=False)])),
    ("bounds of integers", body_of([point(explicitBounds=[1, 5])])),
    ("bounds with a string", body_of([point(explicitBounds=[1, "5"])])),
    ("bounds with a null", body_of([point(explicitBounds=[1, None])])),
    ("bounds not a list", body_of([point(explicitBounds=1.0)])),
    ("bounds a huge sum", body_of([point(explicitBounds=[1e308, 1.7e308])])),
    ("counts mixed", body_of([point(bucketCounts=[1, "1", 0])])),
    ("counts with a null", body_of([point(bucketCounts=[1, None, 0])])),
    ("counts with a float", body_of([point(bucketCounts=[1, 1.0, 0])])),
    ("counts with a bool", body_of([point(bucketCounts=[1, True, 0])])),
    ("counts with a negative string", body_of([point(bucketCounts=["1", "-1", "0"])])),
    ("counts with an empty string", body_of([point(bucketCounts=["1", "", "0"])])),
    ("a null point", body_of([None])),
    ("a point that is a list", body_of([[1]])),
    ("points not a list", body_of(histogram={"dataPoints": {"a": 1}})),
    ("a point with snake_case", body_of([point(time_unix_nano="7")])),
    ("a point with unknown fields", body_of([point(newField={"traceId": "00"})])),
    ("exemplar ids in hex", body_of([point(exemplars=[{
        "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
        "asDouble": 1.0, "timeUnixNano": "3"}])])),
    ("exemplar id with spaces", body_of([point(exemplars=[{"spanId": "ee e1 9b 7e c3 c1 b1 74"}])])),
    ("exemplar id not hex", body_of([point(exemplars=[{"traceId": "zz"}])])),
    ("exemplar id short", body_of([point(exemplars=[{"spanId": "abcd"}])])),
    ("exemplar id a number", body_of([point(exemplars=[{"spanId": 5}])])),
    ("exemplar with both values", body_of([point(exemplars=[{"asDouble": 1.0, "asInt": "1"}])])),
    ("exemplars null item", body_of([point(exemplars=[None])])),
    ("attributes not a list", body_of([point(attributes={"key": "a"})])),
    ("attributes zero", body_of([point(attributes=0)])),
    ("attribute without a key", body_of([point(attributes=[{"value": {"stringValue": "v"}}])])),
    ("attribute key a number", body_of([point(attributes=[{"key": 5}])])),
    ("attribute value a string", body_of([point(attributes=[{"key": "a", "value": "v"}])])),
    ("attribute value empty", body_of([point(attributes=[{"key": "a", "value": {}}])])),
    ("attribute value null string", body_of([point(attributes=[
        {"key": "a", "value": {"stringValue": None, "intValue": "4"}}])])),
    ("attribute two values", body_of([point(attributes=[
        {"key": "a", "value": {"stringValue": "x", "intValue": "4"}}])])),
    ("attribute int huge", body_of([point(attributes=[
        {"key": "a", "value": {"intValue": str(1 << 63)}}])])),
    ("attribute double", body_of([point(attributes=[
        {"key": "a", "value": {"doubleValue": 1e16}}])])),
    ("attribute double as int", body_of([point(attributes=[
        {"key": "a", "value": {"doubleValue": 7}}])])),
    ("attribute bytes", body_of([point(attributes=[
        {"key": "a", "value": {"bytesValue": "AAEC"}}])])),
    ("attribute bytes unpadded", body_of([point(attributes=[
        {"key": "a", "value": {"bytesValue": "AAE"}}])])),
    ("attribute bytes bad", body_of([point(attributes=[
        {"key": "a", "value": {"bytesValue": "A"}}])])),
    ("attribute bool as string", body_of([point(attributes=[
        {"key": "a", "value": {"boolValue": "true"}}])])),
    ("attribute strindex", body_of([point(attributes=[
        {"key": "a", "value": {"stringValueStrindex": 3}, "keyStrindex": 2}])])),
    ("attribute nested arrays within the depth", body_of([point(attributes=[
        {"key": "a", "value": _nested(8)}])])),
    ("attribute nested arrays too deep", body_of([point(attributes=[
        {"key": "a", "value": _nested(20)}])])),
    ("attribute kvlist", body_of([point(attributes=[{"key": "a", "value": {"kvlistValue": {
        "values": [{"key": "b", "value": {"intValue": 1}}]}}}])])),
    ("attribute kvlist wrong", body_of([point(attributes=[{"key": "a", "value": {
        "kvlistValue": {"values": [{"key": 1}]}}}])])),
    ("device id in the point", body_of([point(attributes=[
        {"key": "device.id", "value": {"stringValue": "p"}}])])),
    ("scope with attributes", {"resourceMetrics": [{"scopeMetrics": [{"scope": {
        "name": "a", "attributes": [{"key": "k", "value": {"boolValue": True}}],
        "droppedAttributesCount": 1}}]}]}),
    ("scope name a number", {"resourceMetrics": [{"scopeMetrics": [{"scope": {"name": 1}}]}]}),
    ("schemaUrl a number", {"resourceMetrics": [{"schemaUrl": 1}]}),
    ("dropped count negative", {"resourceMetrics": [{"resource": {
        "droppedAttributesCount": -1}}]}),
    ("entity refs", {"resourceMetrics": [{"resource": {"entityRefs": [
        {"type": "host", "idKeys": ["host.id"]}]}}]}),
    ("entity refs wrong", {"resourceMetrics": [{"resource": {"entityRefs": [{"idKeys": [1]}]}}]}),
    ("metric name a number", body_of(name=5, histogram={})),
    ("metric metadata", body_of(histogram={}, metadata=[{"key": "a", "value": {"intValue": 1}}])),
    ("a gauge with ints", {"resourceMetrics": [{"resource": {"attributes": [
        {"key": "ml.model.name", "value": {"stringValue": "m"}},
        {"key": "ml.model.version", "value": {"stringValue": "2"}}]}, "scopeMetrics": [{
            "metrics": [{"name": MEMORY, "gauge": {"dataPoints": [
                {"asInt": "12", "timeUnixNano": 4}, {"asDouble": 1.5}, {},
                {"asInt": 1, "asDouble": None}]}}]}]}]}),
    ("a gauge with both values", body_of(name=MEMORY, gauge={"dataPoints": [
        {"asInt": "12", "asDouble": 1.0}]})),
    ("a gauge with a temporality (unknown there)", body_of(name=MEMORY, gauge={
        "aggregationTemporality": "x", "dataPoints": []})),
    ("a sum not monotonic as a string", body_of(name=MEMORY, sum={"isMonotonic": "true"})),
    ("a summary", body_of(summary={"dataPoints": [{"quantileValues": [{"quantile": 0.5}]}]})),
    ("a summary wrong", body_of(summary={"dataPoints": [{"quantileValues": [{"quantile": "a"}]}]})),
    ("an exponential histogram", body_of(exponentialHistogram={"dataPoints": [
        {"scale": 3, "positive": {"offset": -2, "bucketCounts": ["1", 2]}}]})),
    ("an exponential histogram wrong", body_of(exponentialHistogram={"dataPoints": [
        {"scale": "x"}]})),
]
RAW: list[tuple[str, bytes]] = [
    ("not JSON", b"{not json"),
    ("not UTF-8", b"\xff\xfe"),
    ("a UTF-8 BOM", b"\xef\xbb\xbf" + json.dumps(body_of()).encode()),
    ("UTF-16", json.dumps(body_of()).encode("utf-16")),
    ("a NaN literal", json.dumps(body_of([point(sum=float("nan"))])).encode()),
    ("an Infinity literal", json.dumps(body_of([point(sum=float("inf"))])).encode()),
    ("a number too large for a double", json.dumps(body_of()).replace(
        '"sum": 3.5', '"sum": 1e400').encode()),
    ("a lone surrogate in a name", json.dumps(body_of(name="\ud800", histogram={})).encode()),
    ("a lone surrogate in an unknown field", json.dumps({**body_of(), "x": "\ud800"}).encode()),
    ("a surrogate pair", json.dumps(body_of(name="\U0001f600", histogram={})).encode()),
    ("a raw surrogate", b'{"resourceMetrics": [], "x": "\xed\xa0\x80"}'),
    ("duplicate keys", b'{"resourceMetrics": 5, "resourceMetrics": []}'),
    ("deep arrays", b"[" * 100_000 + b"]" * 100_000),
    ("deep objects", b'{"a":' * 5000 + b"1" + b"}" * 5000),
    ("a very long integer", json.dumps(body_of()).replace('"count": "2"',
                                                          '"count": ' + "9" * 5000).encode()),
]


@pytest.mark.parametrize("name, document", HOSTILE, ids=[name for name, _ in HOSTILE])
def test_hostile_and_unusual_documents_are_answered_as_before(name: str, document: Any) -> None:
    data = json.dumps(document).encode()
    assert repr(now(data)) == repr(before(data))  # repr: NaN sums compare equal


@pytest.mark.parametrize("name, data", RAW, ids=[name for name, _ in RAW])
def test_hostile_and_unusual_bodies_are_answered_as_before(name: str, data: bytes) -> None:
    assert repr(now(data)) == repr(before(data))  # repr: NaN sums compare equal


def test_hostile_bodies_are_refused_with_400_and_overflows_no_longer_escape() -> None:
    for name, document in HOSTILE:
        outcome = now(json.dumps(document).encode())
        assert outcome[0] == "ok" or outcome[1] == 400, name
    too_large = json.dumps(body_of([point(sum=10 ** 400)])).encode()
    assert now(too_large)[:2] == ("refused", 400)  # was an OverflowError (a 500)


JSON_VALUES = st.sampled_from([None, "x", "", "5", " 5", "NaN", "abcd", 1.5, 2.0, -1, 0, 1 << 64,
                               1 << 63, True, [], [None], [1, "2"], {}, {"x": 1},
                               {"stringValue": "v"}, {"traceId": "zz"}, 10 ** 30])


@settings(max_examples=300, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(requests(), st.sampled_from(["string", "number", "mixed"]), st.data())
def test_mutated_requests_are_answered_as_before(request: ExportMetricsServiceRequest, ints: str,
                                                 data: st.DataObject) -> None:
    """Any one value of a generated body replaced by a wrong one (or a key renamed): the same
    points or the same 400 as json_format gives."""
    document = otlp_dict(request, ints, "number", data.draw)
    places = list(_places(document))
    for _ in range(data.draw(st.integers(1, 3))):
        if not places:
            break
        parent, key = places[data.draw(st.integers(0, len(places) - 1))]
        if isinstance(parent, dict) and data.draw(st.integers(0, 4)) == 0:
            parent[data.draw(st.sampled_from(["x", "time_unix_nano", "traceId", "[e]"]))] = \
                parent.pop(key)
        else:
            parent[key] = copy.deepcopy(data.draw(JSON_VALUES))
        places = list(_places(document))
    body = json.dumps(document).encode()
    assert repr(now(body)) == repr(before(body))


def _places(value: Any) -> Any:
    items = value.items() if isinstance(value, dict) else enumerate(value) \
        if isinstance(value, list) else ()
    for key, item in items:
        yield value, key
        yield from _places(item)


# -- the receiver: JSON and protobuf bodies keep and answer the same -------------------------------
class ListSink:
    def __init__(self) -> None:
        self.samples: list[Any] = []

    def observe(self, sample: Any) -> None:
        self.samples.append(sample)


@settings(max_examples=60, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(requests(), min_size=1, max_size=3))
def test_the_receiver_keeps_and_answers_the_same_for_either_encoding(
        reports: list[ExportMetricsServiceRequest]) -> None:
    settings_ = EdgeSettings.model_validate({"models": [{"name": "m"}]})
    kept = []
    for encoding in (otlp.PROTOBUF, otlp.JSON):
        sink = ListSink()
        edge = EdgeReceiver(settings_, b"key", sink)  # type: ignore[arg-type]
        answers = []
        for report in reports:
            body = report.SerializeToString() if encoding == otlp.PROTOBUF else json.dumps(
                otlp_dict(report, "string", "name", lambda s: False)).encode()
            answer = asyncio.run(edge.metrics(body, encoding, None, "10.0.0.1"))
            parsed = otlp.ExportMetricsServiceResponse.FromString(answer) \
                if encoding == otlp.PROTOBUF else json_format.Parse(
                    answer, otlp.ExportMetricsServiceResponse())
            answers.append(parsed)
        # Samples carry the time they were received at: compare everything else
        kept.append((answers, edge.stats("m"), [dataclasses.replace(x, t=0.0)
                                                for x in sink.samples]))
    assert repr(kept[0]) == repr(kept[1])
