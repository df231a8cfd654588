"""Prometheus scrapes the devserver's TF Serving metrics, the shipped burn-rate rule fires,
Alertmanager calls tfwarden's webhook, and tfwarden rolls back the promoted version; tfwarden's
own alerts reach Alertmanager."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_canary_lifecycle import FAST_RULES, journal, new_version, status, wait_for
from tests.helpers import REPO, TESTDATA, DaemonProcess, DevServer, daemon_config, free_port
from tests.integration.test_controller import StableWatcher

pytestmark = pytest.mark.integration
MODEL = TESTDATA / "tfserving" / "saved_model_half_plus_two_cpu" / "00000123"


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url} not up"
        time.sleep(0.2)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    for binary in ("prometheus", "prometheus-alertmanager"):
        if shutil.which(binary) is None:
            pytest.fail(f"{binary} is not installed; scripts/test installs it")
    base = tmp_path / "models" / "m"
    shutil.copytree(MODEL, base / "1")
    (tmp_path / "models.config").write_text(
        f'model_config_list {{ config {{ name: "m" base_path: "{base}" '
        'model_platform: "tensorflow" model_version_policy { specific { versions: 1 } } } }')
    (tmp_path / "monitoring.config").write_text(
        'prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }')
    dev = DevServer(f"--model_config_file={tmp_path / 'models.config'}",
                    f"--monitoring_config_file={tmp_path / 'monitoring.config'}", workdir=tmp_path)
    dev.wait_ready()
    tfw_port, prom_port, am_port = free_port(), free_port(), free_port()
    (tmp_path / "alertmanager.yml").write_text(f"""route:
  receiver: tfwarden
  group_by: [alertname, model_name, model]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1m
receivers:
  - name: tfwarden
    webhook_configs:
      - url: http://127.0.0.1:{tfw_port}/api/v1/alertmanager
        send_resolved: true
""")
    shutil.copy(REPO / "deploy" / "prometheus" / "tfwarden-rules.yml", tmp_path / "rules.yml")
    (tmp_path / "prometheus.yml").write_text(f"""global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: [rules.yml]
alerting:
  alertmanagers: [{{static_configs: [{{targets: ["127.0.0.1:{am_port}"]}}]}}]
scrape_configs:
  - job_name: tfserving
    metrics_path: /monitoring/prometheus/metrics
    static_configs: [{{targets: ["127.0.0.1:{dev.rest_port}"]}}]
""")
    am = start(["prometheus-alertmanager", f"--config.file={tmp_path / 'alertmanager.yml'}",
                f"--storage.path={tmp_path / 'am'}", f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address="], tmp_path / "am.log")
    prom = start(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                  f"--storage.tsdb.path={tmp_path / 'prom'}",
                  f"--web.listen-address=127.0.0.1:{prom_port}"], tmp_path / "prom.log")
    wait_http(f"http://127.0.0.1:{am_port}/-/ready")
    wait_http(f"http://127.0.0.1:{prom_port}/-/ready")
    (tmp_path / "rules.yaml").write_text(FAST_RULES + """  - name: rollback-promoted-on-slo-page
    when:
      status: {phase: [stable], promoted_within_seconds: 3600}
      any: [{detector: burn, verdict: regression, role: any, severity: [page]}]
    action: rollback
    alert: page
""")
    daemon = DaemonProcess(daemon_config(
        tmp_path, tfw_port, dev, model_config_file="./models.config",
        serving={"rest_url": None},
        models=[{"name": "m", "lifecycle": {"version_poll_seconds": 1}}],
        alerting={"alertmanager": {"url": f"http://127.0.0.1:{am_port}"},
                  "receive": [{"alertname": "TFServingErrorBudgetBurn", "detector": "burn",
                               "model_label": "model_name"}]},
        policies={"ruleset": "rules.yaml"}), tfw_port)
    daemon.wait_ready()
    traffic = StableWatcher(dev.grpc_address)  # clients on the stable label: Serving counts them
    traffic.start()
    yield {"daemon": daemon, "base": base, "am": f"http://127.0.0.1:{am_port}", "work": tmp_path}
    traffic.stop.set()
    daemon.terminate()
    daemon.close()
    for proc in (prom, am):
        proc.terminate()
        proc.wait(timeout=15)
    dev.stop()


def test_burn_rate_page_rolls_back_the_promoted_version(stack: dict[str, Any]) -> None:
    daemon, base = stack["daemon"], stack["base"]
    wait_for(lambda: status(daemon).get("stable_version") == 1, 30, "adoption", daemon)
    new_version(base, 2)
    wait_for(lambda: status(daemon).get("canary_version") == 2, 30, "canary", daemon)
    promoted = daemon.client.post("/api/v1/models/m/promote")
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["stable_version"] == 2 and promoted.json()["previous_good"] == 1
    (base / "2" / "devserver-faults.json").write_text(
        json.dumps({"error": {"rate": 0.5, "code": "UNAVAILABLE"}}))
    wait_for(lambda: status(daemon).get("stable_version") == 1, 90, "rollback", daemon)
    rollback = next(d["payload"] for d in journal(daemon, "decision")
                    if d["payload"]["action"] == "rollback")
    assert rollback["rule"] == "rollback-promoted-on-slo-page"
    finding = rollback["findings"][0]
    assert finding["target"] == "alertmanager:TFServingErrorBudgetBurn"
    assert finding["severity"] == "page" and finding["model"] == "m"
    assert status(daemon)["rejected"] == [2]
    # tfwarden's own alert about the rollback (firing, then resolved once the rollback completed)
    # was accepted by the real Alertmanager
    states = [a["payload"]["state"] for a in journal(daemon, "alert")
              if a["payload"].get("action") == "rollback"]
    assert states[:2] == ["firing", "resolved"]

    def delivered() -> float:
        for family in text_string_to_metric_families(daemon.client.get("/metrics").text):
            for sample in family.samples:
                if sample.name == "tfwarden_notifications_total" and \
                        sample.labels == {"notifier": "alertmanager", "outcome": "success"}:
                    return sample.value
        return 0.0

    wait_for(lambda: delivered() >= 2, 20, "alerts delivered to Alertmanager", daemon)
