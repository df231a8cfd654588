"""The lifecycle driving a real nginx: canary weights become split_clients weights, unaddressed
predict traffic through nginx follows them, and after promotion nginx sends it all to the new
stable version."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_canary_lifecycle import FAST_RULES, status, wait_for
from tests.helpers import TESTDATA, DaemonProcess, DevServer, Nginx, daemon_config, free_port

pytestmark = pytest.mark.integration
TFS = TESTDATA / "tfserving"


def test_canary_weights_drive_nginx(tmp_path: Path) -> None:
    base = tmp_path / "models" / "m"
    shutil.copytree(TFS / "saved_model_half_plus_two_cpu" / "00000123", base / "1")
    (tmp_path / "models.config").write_text(
        f'model_config_list {{ config {{ name: "m" base_path: "{base}" '
        'model_platform: "tensorflow" model_version_policy { specific { versions: 1 } } } }')
    (tmp_path / "golden.jsonl").write_text(json.dumps({"request": {"instances": [2.0]}}) + "\n")
    (tmp_path / "rules.yaml").write_text(FAST_RULES)
    dev = DevServer(f"--model_config_file={tmp_path / 'models.config'}", workdir=tmp_path)
    dev.wait_ready()
    nginx = Nginx(tmp_path)
    include, nginx_port, port = nginx.include, nginx.port, free_port()
    daemon = DaemonProcess(daemon_config(
        tmp_path, port, dev, model_config_file="./models.config",
        models=[{"name": "m", "golden_requests": "golden.jsonl",
                 "probe": {"address": "labels", "labels": ["stable", "canary"],
                           "rate_per_second": 20},
                 "lifecycle": {"version_poll_seconds": 1, "router": "nginx"}}],
        nginx={"conf": "nginx.conf", "prefix": ".", "include_dir": "tfwarden-nginx",
               "binary": nginx.binary},
        policies={"ruleset": "rules.yaml"}), port)
    weights_seen: set[str] = set()
    try:
        daemon.wait_ready()
        wait_for(lambda: status(daemon).get("stable_version") == 1, 30, "adoption", daemon)
        staging = tmp_path / "staging"
        shutil.copytree(TFS / "saved_model_half_plus_three" / "00000123", staging)  # 0.5x + 3
        staging.rename(base / "2")

        def promoted() -> bool:
            http_conf = include / "m.http.conf"
            if http_conf.exists():
                weights_seen.add(http_conf.read_text().splitlines()[0].split("canary weight ")[1])
            return status(daemon).get("stable_version") == 2

        wait_for(promoted, 90, "promotion", daemon)

        def served_by_nginx() -> set[object]:
            """The predictions (or the statuses) of 30 unaddressed calls through nginx."""
            with httpx.Client(base_url=f"http://127.0.0.1:{nginx_port}", timeout=10) as client:
                try:
                    answers = [client.post("/v1/models/m:predict", json={"instances": [2.0]})
                               for _ in range(30)]
                except httpx.TransportError:  # an old worker closing its connection mid-reload
                    return {"disconnected"}
            return {a.json()["predictions"][0] if a.status_code == 200 else a.status_code
                    for a in answers}

        # all unaddressed traffic reaches version 2 once nginx's reload is in force (its old
        # workers may serve for a moment longer: the wait guards against a hang only)
        wait_for(lambda: served_by_nginx() == {4.0}, 30, "nginx routing to version 2", daemon)
        assert {"50 %", "100 %", "0 %"} <= weights_seen
    finally:
        daemon.terminate()
        daemon.close()
        nginx.stop()
        dev.stop()
