"""The edge receiver on requests the real OpenTelemetry SDK encodes: per-cohort aggregates,
OTLP partial success for what it cannot keep, bounded cohorts, per-client limits, logs."""

from __future__ import annotations

import asyncio
import gzip
import json

import pytest
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource

from tests.unit.probes.test_edge_points import DEVICE, Device
from tfwarden.probes.edge import otlp
from tfwarden.probes.edge.otlp import ExportMetricsServiceResponse, OtlpRejected
from tfwarden.probes.edge.receiver import EdgeReceiver
from tfwarden.probes.edge.settings import EdgeModelSettings, EdgeSettings

PB = otlp.PROTOBUF


def receiver(**settings: object) -> EdgeReceiver:
    edge = EdgeSettings.model_validate({"models": [{"name": "m"}], **settings})
    return EdgeReceiver(edge, device_key=b"key")


def post(edge: EdgeReceiver, body: bytes, content_type: str = PB, encoding: str | None = None,
         client: str = "10.0.0.1") -> bytes:
    return asyncio.run(edge.metrics(body, content_type, encoding, client))


def test_cohorts_keep_merged_histograms_devices_and_memory() -> None:
    edge = receiver()
    for n, delegate in enumerate(["gpu", "gpu", "xnnpack"]):
        device = Device({**DEVICE, "device.id": f"d{n}", "ml.delegate": delegate})
        for ms in (3, 3, 7) if delegate == "gpu" else (0.5,):
            device.inference.record(ms)
        device.memory.set(1000 * (n + 1))
        assert post(edge, gzip.compress(device.export().SerializeToString()),
                    encoding="gzip") == b""  # a full success
    stats = edge.stats("m")
    assert stats is not None
    gpu = stats["versions"]["2"]["ml.delegate=gpu | device.model.identifier=pixel-8"]
    assert (gpu["devices"], gpu["inferences"], gpu["memory_max_bytes"]) == (2, 6, 2000)
    assert 1 < gpu["inference_p50_ms"] <= 5 and 5 < gpu["inference_p99_ms"] <= 10
    cpu = stats["versions"]["2"]["ml.delegate=xnnpack | device.model.identifier=pixel-8"]
    assert (cpu["devices"], cpu["inferences"]) == (1, 1) and cpu["inference_p99_ms"] <= 1
    assert edge.stats("unknown") is None


def test_points_of_unconfigured_models_are_a_partial_success_in_the_request_encoding() -> None:
    edge = receiver()
    device = Device({**DEVICE, "ml.model.name": "someone-else"})
    device.inference.record(3)
    request = device.export()
    answer = ExportMetricsServiceResponse.FromString(post(edge, request.SerializeToString()))
    assert answer.partial_success.rejected_data_points == 1
    assert "'someone-else' is not in edge.models" in answer.partial_success.error_message
    from google.protobuf import json_format
    other = Device({**DEVICE, "ml.model.name": "someone-else", "device.id": "another"})
    other.inference.record(3)
    as_json = json.loads(post(edge, json_format.MessageToJson(other.export()).encode(),
                              otlp.JSON))
    assert as_json["partialSuccess"]["rejectedDataPoints"] == "1"


def test_cohorts_beyond_the_limit_pool_as_other_and_failures_count_apart() -> None:
    edge = EdgeReceiver(EdgeSettings(models=[EdgeModelSettings(name="m", cohort_by=["ml.delegate"],
                                                               max_cohorts=2)]), b"k")
    for delegate in ("cpu", "gpu", "nnapi", "webgl"):
        device = Device({**DEVICE, "ml.delegate": delegate, "device.id": delegate})
        device.inference.record(3)
        device.inference.record(9, {"error.type": "OutOfMemory"})
        post(edge, device.export().SerializeToString())
    stats = edge.stats("m")
    assert stats is not None
    cohorts = stats["versions"]["2"]
    assert sorted(cohorts) == ["ml.delegate=cpu", "ml.delegate=gpu", "other"]
    assert cohorts["other"]["devices"] == 2 and cohorts["other"]["inferences"] == 2
    assert cohorts["other"]["failed_inferences"] == 2


def test_a_client_over_its_points_per_second_gets_429() -> None:
    edge = receiver(client_points_per_second=2)
    device = Device()
    for ms in (1, 2, 3):
        device.inference.record(ms, {"n": str(ms)})  # three points
    with pytest.raises(OtlpRejected) as refused:
        post(edge, device.export().SerializeToString())
    assert refused.value.status == 429
    small = Device()
    small.inference.record(3)
    assert post(edge, small.export().SerializeToString(), client="10.0.0.2") == b""


def test_error_logs_and_exceptions_count_per_cohort() -> None:
    edge = receiver()
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=Resource.create(DEVICE))
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = provider.get_logger("edge")
    logger.emit(body="crash", attributes={"exception.type": "SIGSEGV"})
    logger.emit(body="slow frame", severity_text="INFO")
    body = encode_logs(exporter.get_finished_logs()).SerializeToString()
    assert asyncio.run(edge.logs(body, PB, None, "10.0.0.1")) == b""
    stats = edge.stats("m")
    assert stats is not None
    (cohort,) = stats["versions"]["2"].values()
    assert cohort["error_logs"] == 1 and cohort["exceptions"] == {"SIGSEGV": 1}


class Counted:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def edge_ingested(self, signal: str, accepted: int, rejected: int) -> None:
        self.calls.append((signal, accepted, rejected))


def test_kept_and_rejected_points_are_counted_for_the_ingest_metrics() -> None:
    counted = Counted()
    edge = EdgeReceiver(EdgeSettings.model_validate({"models": [{"name": "m"}]}), b"key",
                        metrics=counted)
    mine = Device(dict(DEVICE))
    mine.inference.record(3)
    mine.memory.set(1000)
    post(edge, mine.export().SerializeToString())
    other = Device({**DEVICE, "ml.model.name": "someone-else", "device.id": "x"})
    other.inference.record(3)
    post(edge, other.export().SerializeToString())
    assert counted.calls == [("metrics", 2, 0), ("metrics", 0, 1)]
