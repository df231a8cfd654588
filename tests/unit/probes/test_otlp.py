"""OTLP/HTTP decoding against what the real OpenTelemetry SDK encodes: protobuf and JSON, gzip,
hex ids, and a 4xx naming the problem for everything else."""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

import pytest
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

from tfwarden.probes.edge import otlp
from tfwarden.probes.edge.otlp import (
    ExportLogsServiceRequest,
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
    OtlpRejected,
)

LIMIT = 1 << 20
TRACE_HEX, SPAN_HEX = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"


def sdk_metrics() -> ExportMetricsServiceRequest:
    """A request exactly as the SDK's OTLP exporters encode it (a histogram in ms)."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(
        resource=Resource.create({"ml.model.name": "m", "ml.model.version": "2",
                                  "ml.delegate": "xnnpack", "device.id": "ab12"}),
        metric_readers=[reader],
        views=[View(instrument_name="ml.inference.duration",
                    aggregation=ExplicitBucketHistogramAggregation([1, 2, 5, 10, 20]))])
    histogram = provider.get_meter("edge").create_histogram("ml.inference.duration", unit="ms")
    for value in (0.5, 3.0, 7.0, 70.0):
        histogram.record(value, {"ml.runtime.name": "litert"})
    data = reader.get_metrics_data()
    assert data is not None
    request: ExportMetricsServiceRequest = encode_metrics(data)
    provider.shutdown()
    return request


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def decode_metrics(body: bytes, content_type: str = otlp.PROTOBUF,
                   encoding: str | None = None) -> ExportMetricsServiceRequest:
    return otlp.decode(ExportMetricsServiceRequest, body, content_type, encoding, LIMIT)


def test_protobuf_from_the_sdk_decodes_to_the_same_message() -> None:
    request = sdk_metrics()
    decoded = decode_metrics(request.SerializeToString(), "application/x-protobuf; charset=x")
    assert decoded == request
    point = decoded.resource_metrics[0].scope_metrics[0].metrics[0].histogram.data_points[0]
    assert list(point.bucket_counts) == [1, 0, 1, 1, 0, 1] and point.sum == pytest.approx(80.5)


@pytest.mark.parametrize("compress, encoding", [
    (gzip.compress, "gzip"), (zlib.compress, "deflate"), (lambda b: b, "identity")])
def test_compressed_bodies_decode(compress: Any, encoding: str) -> None:
    request = sdk_metrics()
    assert decode_metrics(compress(request.SerializeToString()), encoding=encoding) == request


def test_json_with_string_int64s_and_hex_ids_decodes_like_the_js_exporter_sends_it() -> None:
    request = sdk_metrics()
    point = request.resource_metrics[0].scope_metrics[0].metrics[0].histogram.data_points[0]
    exemplar = point.exemplars.add(time_unix_nano=1, as_double=3.0)
    exemplar.trace_id, exemplar.span_id = bytes.fromhex(TRACE_HEX), bytes.fromhex(SPAN_HEX)
    document = json_format.MessageToDict(request)  # int64 as strings, camelCase keys
    raw = document["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["histogram"]
    raw["dataPoints"][0]["exemplars"][0].update(traceId=TRACE_HEX, spanId=SPAN_HEX)  # OTLP: hex
    raw["dataPoints"][0]["count"] = 4  # a number, as the JS exporter sends it
    raw["somethingNew"] = {"from": "a newer client"}  # receivers ignore unknown fields
    decoded = decode_metrics(json.dumps(document).encode(), otlp.JSON)
    assert decoded == request


def test_logs_with_hex_ids_decode_in_both_encodings() -> None:
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=Resource.create({"ml.model.name": "m"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    provider.get_logger("edge").emit(body="inference failed", severity_text="ERROR",
                                     attributes={"exception.type": "OutOfMemory"})
    request: ExportLogsServiceRequest = encode_logs(exporter.get_finished_logs())
    record = request.resource_logs[0].scope_logs[0].log_records[0]
    record.trace_id, record.span_id = bytes.fromhex(TRACE_HEX), bytes.fromhex(SPAN_HEX)
    as_proto = otlp.decode(ExportLogsServiceRequest, request.SerializeToString(), otlp.PROTOBUF,
                           None, LIMIT)
    document = json_format.MessageToDict(request)
    log = document["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
    log.update(traceId=TRACE_HEX, spanId=SPAN_HEX)
    as_json = otlp.decode(ExportLogsServiceRequest, json.dumps(document).encode(), otlp.JSON,
                          None, LIMIT)
    assert as_proto == request == as_json


@pytest.mark.parametrize("body, content_type, encoding, status, says", [
    (b"x", "text/plain", None, 415, "Content-Type must be"),
    (b"x", None, None, 415, "got 'none'"),
    (b"x", otlp.PROTOBUF, "br", 415, "Content-Encoding must be"),
    (b"not gzip", otlp.PROTOBUF, "gzip", 400, "not valid gzip"),
    (gzip.compress(b"\0" * (LIMIT + 10)), otlp.PROTOBUF, "gzip", 413, "decompressed body is over"),
    (b"\xff\xff\xff\xff", otlp.PROTOBUF, None, 400, "not a protobuf ExportMetricsServiceRequest"),
    (b"{not json", otlp.JSON, None, 400, "not JSON"),
    (b"[1, 2]", otlp.JSON, None, 400, "must be a JSON object"),
    (b"\xff\xfe", otlp.JSON, None, 400, "not JSON"),
    (b'{"resourceMetrics": 7}', otlp.JSON, None, 400, "not a JSON ExportMetricsServiceRequest"),
    (json.dumps({"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"gauge": {"dataPoints": [
        {"exemplars": [{"traceId": "zz"}]}]}}]}]}]}).encode(), otlp.JSON, None, 400,
     "traceId must be hex"),
    (json.dumps({"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"gauge": {"dataPoints": [
        {"exemplars": [{"spanId": "abcd"}]}]}}]}]}]}).encode(), otlp.JSON, None, 400,
     "spanId must be 8 bytes"),
    (b"[" * 100_000 + b"]" * 100_000, otlp.JSON, None, 400, "nested too deeply"),
    (json.dumps({"a": _nested(40)}).encode(), otlp.JSON, None, 400, "nested deeper than"),
])
def test_bad_requests_are_refused_with_what_is_wrong(body: bytes, content_type: str | None,
                                                    encoding: str | None, status: int,
                                                    says: str) -> None:
    with pytest.raises(OtlpRejected) as refused:
        decode_metrics(body, content_type, encoding)  # type: ignore[arg-type]
    assert refused.value.status == status and says in refused.value.message


def test_responses_use_the_request_encoding_and_report_partial_success() -> None:
    assert otlp.response_body(ExportMetricsServiceResponse(), otlp.PROTOBUF) == b""
    assert otlp.response_body(ExportMetricsServiceResponse(), otlp.JSON) == b"{}"
    partial = ExportMetricsServiceResponse()
    partial.partial_success.rejected_data_points = 3
    partial.partial_success.error_message = "3 points of unknown models"
    assert json.loads(otlp.response_body(partial, otlp.JSON)) == {"partialSuccess": {
        "rejectedDataPoints": "3", "errorMessage": "3 points of unknown models"}}
    assert ExportMetricsServiceResponse.FromString(
        otlp.response_body(partial, otlp.PROTOBUF)) == partial
    assert json.loads(otlp.error_body("bad", otlp.JSON)) == {"code": 3, "message": "bad"}
