"""The OTLP/HTTP receiver of a running daemon, fed by the real OpenTelemetry SDK exporters
(protobuf over HTTP, gzip, bearer token): per-cohort aggregates, partial success, tokens, CORS
for configured browser origins only, and a lean daemon (no TensorFlow) throughout."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

from tests.helpers import DaemonProcess, daemon_config, free_port

pytestmark = pytest.mark.integration
TOKEN = "ingest-secret"
ORIGIN = "http://app.example"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    work = tmp_path_factory.mktemp("edge")
    (work / "token").write_text("operator-secret\n")
    (work / "ingest").write_text(TOKEN + "\n")
    port = free_port()
    config = daemon_config(
        work, port, server={"listen": f"127.0.0.1:{port}", "bearer_token_file": "token",
                            "ingest_token_file": "ingest"},
        edge={"models": [{"name": "digits", "cohort_by": ["ml.delegate"]}],
              "cors_origins": [ORIGIN]})
    process = DaemonProcess(config, port)
    try:
        process.wait_ready()
        yield process
    finally:
        process.close()


class Phone:
    """A device running the OpenTelemetry SDK with its OTLP/HTTP exporters (no thread: each
    ``flush`` is one export), as an app would."""

    def __init__(self, base_url: str, device: str, delegate: str, model: str = "digits",
                 token: str = TOKEN, session: requests.Session | None = None) -> None:
        resource = Resource.create({"ml.model.name": model, "ml.model.version": "3",
                                    "ml.runtime.name": "litert", "ml.delegate": delegate,
                                    "device.id": device, "device.model.identifier": "pixel-8"})
        headers = {"Authorization": f"Bearer {token}"}
        self.exporter = OTLPMetricExporter(endpoint=f"{base_url}/v1/metrics", headers=headers,
                                           compression=Compression.Gzip, timeout=10,
                                           session=session)
        self.meters = MeterProvider(
            resource=resource,
            metric_readers=[PeriodicExportingMetricReader(self.exporter,
                                                          export_interval_millis=math.inf)],
            views=[View(instrument_name="ml.inference.duration",
                        aggregation=ExplicitBucketHistogramAggregation([1, 2, 5, 10, 20, 50]))])
        self.inference = self.meters.get_meter("app").create_histogram(
            "ml.inference.duration", unit="ms")
        self.logs = LoggerProvider(resource=resource)
        self.logs.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(
            endpoint=f"{base_url}/v1/logs", headers=headers, timeout=10)))

    def flush(self) -> None:
        self.meters.force_flush()

    def close(self) -> None:
        self.meters.shutdown()
        self.logs.shutdown()


def edge_stats(daemon: DaemonProcess) -> dict[str, Any]:
    answer = daemon.client.get("/api/v1/edge/digits")
    assert answer.status_code == 200, answer.text
    stats: dict[str, Any] = answer.json()
    return stats


def test_sdk_exporters_fill_per_cohort_aggregates(daemon: DaemonProcess) -> None:
    phones = [Phone(daemon.base_url, f"phone-{n}", "gpu" if n < 3 else "xnnpack")
              for n in range(5)]
    try:
        for _ in range(3):  # cumulative exports: the receiver keeps the deltas only
            for phone in phones:
                for ms in ((4, 6, 30) if phone is phones[0] else (4, 6)):
                    phone.inference.record(ms)
                phone.flush()
        phones[1].logs.get_logger("app").emit(body="crash", severity_text="FATAL",
                                              attributes={"exception.type": "SIGSEGV"})
    finally:
        for phone in phones:
            phone.close()
    cohorts = edge_stats(daemon)["versions"]["3"]
    gpu, cpu = cohorts["ml.delegate=gpu"], cohorts["ml.delegate=xnnpack"]
    assert (gpu["devices"], gpu["inferences"]) == (3, 3 * (3 + 2 + 2))
    assert (cpu["devices"], cpu["inferences"]) == (2, 3 * 2 * 2)
    assert 2 <= gpu["inference_p50_ms"] <= 10 and gpu["inference_p99_ms"] > 20
    assert gpu["exceptions"] == {"SIGSEGV": 1} and gpu["error_logs"] == 1
    status = daemon.client.get("/api/v1/status").json()
    assert status["process"]["heavy_modules_loaded"] == []


def test_points_of_other_models_are_a_partial_success(daemon: DaemonProcess) -> None:
    from tfwarden.probes.edge.otlp import ExportMetricsServiceResponse

    session, sent = requests.Session(), []
    session.hooks["response"].append(lambda response, *args, **kwargs: sent.append(
        response.content))  # what the exporter got back (it does not read it itself)
    phone = Phone(daemon.base_url, "stranger", "gpu", model="not-configured", session=session)
    phone.inference.record(3)
    phone.flush()
    phone.close()
    (answer,) = sent
    partial = ExportMetricsServiceResponse.FromString(answer).partial_success
    assert partial.rejected_data_points == 1
    assert "'not-configured' is not in edge.models" in partial.error_message


def test_tokens_encodings_and_cors(daemon: DaemonProcess) -> None:
    url = f"{daemon.base_url}/v1/metrics"
    refused = httpx.post(url, content=b"", headers={"content-type": "application/x-protobuf"})
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/x-protobuf"  # a google.rpc.Status
    from google.rpc import status_pb2
    assert "bearer token" in status_pb2.Status.FromString(refused.content).message

    auth = {"Authorization": f"Bearer {TOKEN}"}
    empty = httpx.post(url, content=b"{}", headers={**auth, "content-type": "application/json"})
    assert (empty.status_code, empty.json()) == (200, {})
    wrong = httpx.post(url, content=b"x", headers={**auth, "content-type": "text/plain"})
    assert wrong.status_code == 415 and "Content-Type must be" in wrong.json()["error"]

    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    allowed = httpx.options(url, headers=preflight)
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "content-type" in allowed.headers["access-control-allow-headers"]
    denied = httpx.options(url, headers={**preflight, "Origin": "http://evil.example"})
    assert denied.status_code == 403 and "access-control-allow-origin" not in denied.headers
    posted = httpx.post(url, content=b"{}", headers={**auth, "Origin": ORIGIN,
                                                    "content-type": "application/json"})
    assert posted.headers["access-control-allow-origin"] == ORIGIN  # or fetch() would retry


def test_unknown_edge_model_is_a_404(daemon: DaemonProcess) -> None:
    answer = daemon.client.get("/api/v1/edge/nope")
    assert answer.status_code == 404 and "edge.models" in answer.json()["error"]

