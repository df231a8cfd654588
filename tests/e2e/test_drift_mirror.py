"""nginx mirrors real predict traffic to the devserver into tfwarden's capture endpoint; the
inputs shift and a drift alert reaches a webhook receiver."""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.e2e.test_canary_lifecycle import status, wait_for
from tests.helpers import TESTDATA, DaemonProcess, DevServer, Nginx, daemon_config, free_port

pytestmark = pytest.mark.integration
TFS = TESTDATA / "tfserving"


class Receiver(BaseHTTPRequestHandler):
    alerts: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Receiver.alerts.extend(body.get("alerts", []))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_mirrored_traffic_drifts_and_alerts(tmp_path: Path) -> None:
    base = tmp_path / "models" / "m"
    shutil.copytree(TFS / "saved_model_half_plus_two_cpu" / "00000123", base / "1")
    (tmp_path / "models.config").write_text(
        f'model_config_list {{ config {{ name: "m" base_path: "{base}" '
        'model_platform: "tensorflow" model_version_policy { specific { versions: 1 } } } }')
    dev = DevServer(f"--model_config_file={tmp_path / 'models.config'}", workdir=tmp_path)
    dev.wait_ready()
    np.save(tmp_path / "reference.npy", np.random.default_rng(0).normal(size=(1000, 1)))
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    nginx = Nginx(tmp_path)
    include, nginx_port, port = nginx.include, nginx.port, free_port()
    daemon = DaemonProcess(daemon_config(
        tmp_path, port, dev, model_config_file="./models.config",
        models=[{"name": "m", "lifecycle": {"version_poll_seconds": 1, "router": "nginx"},
                 "drift": {"engine": "scipy", "reference": "reference.npy", "window_rows": 100,
                           "consecutive": 2, "interval_seconds": 0.5,
                           "outputs": {"enabled": False}}}],
        nginx={"conf": "nginx.conf", "prefix": ".", "include_dir": "tfwarden-nginx",
               "binary": nginx.binary, "mirror_url": f"http://127.0.0.1:{port}/api/v1/capture",
               "mirror_percent": 100},
        capture={"client_rows_per_second": 100000},
        alerting={"webhooks": [{"url": f"http://127.0.0.1:{receiver.server_address[1]}/hook"}]}),
        port)
    rng = np.random.default_rng(1)
    try:
        daemon.wait_ready()
        wait_for(lambda: status(daemon).get("stable_version") == 1, 30, "adoption", daemon)
        wait_for(lambda: (include / "m.server.conf").exists(), 30, "nginx routing", daemon)
        with httpx.Client(base_url=f"http://127.0.0.1:{nginx_port}", timeout=10) as client:
            def send(shift: float, requests: int) -> None:
                for _ in range(requests):
                    x = (rng.normal(size=(10, 1)) + shift).tolist()
                    answer = client.post("/v1/models/m:predict", json={"instances": x})
                    assert answer.status_code == 200, answer.text
                    assert answer.json()["predictions"][0] == [pytest.approx(x[0][0] / 2 + 2)]

            # the include exists before nginx's reload finishes: wait for the route
            wait_for(lambda: client.post("/v1/models/m:predict", json={"instances": [[0.0]]})
                     .status_code == 200, 30, "nginx route", daemon)
            send(0.0, 30)
            wait_for(lambda: drift_verdict(daemon) == "ok", 30, "drift ok", daemon)
            assert not [a for a in Receiver.alerts if a["labels"].get("rule") ==
                        "alert-on-input-drift"]
            send(1.0, 40)
            wait_for(lambda: drift_verdict(daemon) == "regression", 30, "drift found", daemon)
            wait_for(lambda: [a for a in Receiver.alerts
                              if a["labels"].get("rule") == "alert-on-input-drift"], 30,
                     "drift alert", daemon)
        capture = daemon.client.get("/api/v1/models/m/capture").json()
        assert capture["reservoirs"][0]["seen_rows"] >= 700  # every request was mirrored
        alert = next(a for a in Receiver.alerts if a["labels"].get("rule") ==
                     "alert-on-input-drift")
        assert alert["labels"]["severity"] == "ticket" and "drift" in alert["annotations"]["summary"]
    finally:
        daemon.terminate()
        daemon.close()
        nginx.stop()
        receiver.shutdown()
        dev.stop()


def drift_verdict(daemon: DaemonProcess) -> str | None:
    for item in daemon.client.get("/api/v1/findings").json()["findings"]:
        if item["detector"] == "drift" and item["target"] == "inputs":
            return str(item["verdict"])
    return None
