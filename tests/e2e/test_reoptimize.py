"""The optimizer loop end to end on the devserver: the stable version misses its latency
objective, the reoptimize rule fires, an int8 TFLite variant passes the gate and is published,
staged as a canary by the new-version watcher and promoted by the normal rules."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.test_canary_lifecycle import FAST_RULES, journal, status, wait_for
from tests.helpers import DaemonProcess, DevServer, daemon_config, free_port

pytestmark = pytest.mark.integration

REOPTIMIZE_RULE = """  - name: reoptimize-slow-stable
    when:
      status: {phase: [stable]}
      all:
        - {detector: latency, verdict: regression, role: stable, target: [slo], for_seconds: 2}
    action: reoptimize
    alert: ticket
    guards: {cooldown_seconds: 3600}
"""


def test_slow_stable_is_reoptimized_canaried_and_promoted(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "tfwarden.optimizers.models", str(tmp_path), "--epochs", "15"],
                   check=True, timeout=300, capture_output=True)
    base = tmp_path / "m"
    (base / "1" / "devserver-faults.json").write_text(json.dumps({"latency": {"fixed_ms": 25}}))
    (tmp_path / "models.config").write_text(
        f'model_config_list {{ config {{ name: "m" base_path: "{base}" '
        'model_platform: "tensorflow" model_version_policy { specific { versions: 1 } } } }')
    golden = np.load(tmp_path / "golden.npz")
    (tmp_path / "golden.jsonl").write_text("".join(
        json.dumps({"request": {"instances": [row.tolist()]}}) + "\n" for row in golden["x"][:20]))
    (tmp_path / "rules.yaml").write_text(FAST_RULES + REOPTIMIZE_RULE)
    dev = DevServer(f"--model_config_file={tmp_path / 'models.config'}",
                    "--prefer_tflite_model=true", workdir=tmp_path)
    dev.wait_ready()
    port = free_port()
    daemon = DaemonProcess(daemon_config(
        tmp_path, port, dev, model_config_file="./models.config",
        models=[{"name": "m", "golden_requests": "golden.jsonl", "slo": {"latency_p99_ms": 15},
                 "probe": {"address": "labels", "labels": ["stable", "canary"],
                           "rate_per_second": 40, "timeout_seconds": 2},
                 "lifecycle": {"version_poll_seconds": 1},
                 "optimize": {"method": "int8", "golden": "golden.npz",
                              "representative": "representative.npy"}}],
        policies={"ruleset": "rules.yaml"}), port)
    try:
        daemon.wait_ready()
        wait_for(lambda: status(daemon).get("stable_version") == 1, 30, "adoption", daemon)
        wait_for(lambda: journal(daemon, "reoptimized"), 180, "an optimized version", daemon)
        published = journal(daemon, "reoptimized")[0]["payload"]
        assert published["accepted"] and published["version"] == 2
        assert published["metrics"]["top1_agreement"] >= 0.97
        assert (base / "2" / "model.tflite").is_file()
        wait_for(lambda: status(daemon).get("stable_version") == 2, 120, "promotion", daemon)
        decisions = [e for e in journal(daemon, "decision")
                     if e["payload"]["rule"] == "reoptimize-slow-stable"]
        assert len(decisions) == 1  # the cooldown holds off retries
        assert decisions[0]["payload"]["findings"][0]["target"] == "slo"
        staged = next(e for e in journal(daemon, "action_done")
                      if e["payload"]["action"] == "stage_canary")
        assert staged["payload"]["params"] == {"version": 2}
        assert staged["t"] > decisions[0]["t"]
        actions = [e["payload"]["action"] for e in journal(daemon, "action_done")]
        assert actions[-1] == "promote" and "rollback" not in actions
        assert daemon.client.get("/api/v1/status").json()["process"]["heavy_modules_loaded"] == []
        print(f"rule fired -> canary serving: {staged['t'] - decisions[0]['t']:.1f} s")
    finally:
        daemon.terminate()
        daemon.close()
        dev.stop()
