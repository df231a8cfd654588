"""OpenTelemetry: the daemon exports spans of its drift checks and policy decisions over OTLP/HTTP
to a receiver (a stand-in collector decoding the protobuf payloads)."""

from __future__ import annotations

import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.helpers import TESTDATA, DaemonProcess, DevServer, daemon_config, free_port

pytestmark = pytest.mark.integration
MODEL = TESTDATA / "tfserving" / "saved_model_half_plus_two_cpu" / "00000123"


class Collector(BaseHTTPRequestHandler):
    spans: list[dict[str, Any]] = []
    resources: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            Collector.resources.append(_attrs(resource_spans.resource.attributes))
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    Collector.spans.append({"name": span.name, "attributes": _attrs(span.attributes),
                                            "status": span.status.code})
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _attrs(items: Any) -> dict[str, Any]:
    out = {}
    for item in items:
        kind = item.value.WhichOneof("value")
        value = getattr(item.value, kind)
        out[item.key] = list(v.string_value for v in value.values) if kind == "array_value" \
            else value
    return out


def test_drift_checks_and_decisions_are_traced(tmp_path: Path) -> None:
    base = tmp_path / "models" / "m"
    shutil.copytree(MODEL, base / "1")
    (tmp_path / "models.config").write_text(
        f'model_config_list {{ config {{ name: "m" base_path: "{base}" '
        'model_platform: "tensorflow" model_version_policy { specific { versions: 1 } } } }')
    dev = DevServer(f"--model_config_file={tmp_path / 'models.config'}", workdir=tmp_path)
    dev.wait_ready()
    np.save(tmp_path / "reference.npy", np.random.default_rng(0).normal(size=(500, 1)))
    collector = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    port = free_port()
    daemon = DaemonProcess(daemon_config(
        tmp_path, port, dev, model_config_file="./models.config",
        models=[{"name": "m", "lifecycle": {"version_poll_seconds": 1},
                 "drift": {"method": "window",  # the batch checks' drift.check spans
                           "engine": "scipy", "reference": "reference.npy", "window_rows": 100,
                           "consecutive": 1, "interval_seconds": 0.5,
                           "outputs": {"enabled": False}}}],
        capture={"client_rows_per_second": 100000},
        tracing={"exporter": "otlp", "service_name": "tfwarden-test",
                 "endpoint": f"http://127.0.0.1:{collector.server_address[1]}/v1/traces"}), port)
    rng = np.random.default_rng(1)
    try:
        daemon.wait_ready()
        for shift in (0.0, 0.0, 1.0):  # two null windows: a false drift in both is 1e-4
            rows = (rng.normal(size=(100, 1)) + shift).tolist()
            assert daemon.client.post("/api/v1/samples/m", json={"features": ["x"],
                                                                  "rows": rows}).status_code == 200
            time.sleep(1.5)
        deadline = time.monotonic() + 30
        while not {"drift.check", "policy.decision"} <= {s["name"] for s in Collector.spans}:
            assert time.monotonic() < deadline, [s["name"] for s in Collector.spans]
            time.sleep(0.3)
        checks = [s["attributes"] for s in Collector.spans if s["name"] == "drift.check"]
        assert {c["drift"] for c in checks} == {False, True}
        assert all(c["model"] == "m" and c["rows"] == 100 and c["engine"] == "scipy"
                   for c in checks)
        assert ["x"] in [c.get("drifted_features") for c in checks]
        decision = next(s["attributes"] for s in Collector.spans if s["name"] == "policy.decision")
        assert decision["rule"] == "alert-on-input-drift" and decision["action"] == "alert"
        assert "drift:inputs:regression" in decision["findings"]
        assert Collector.resources[0]["service.name"] == "tfwarden-test"
        assert daemon.client.get("/api/v1/status").json()["process"]["heavy_modules_loaded"] == []
    finally:
        daemon.terminate()
        daemon.close()
        collector.shutdown()
        dev.stop()
