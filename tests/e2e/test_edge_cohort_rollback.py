"""A staged edge rollout end to end: a fleet of simulated devices (the real OpenTelemetry SDK
exporters, a real LiteRT interpreter per model file) asks the daemon which version to run,
downloads it (sha256 checked) and reports; version 2 is published, rolls out to 20 %, one cohort
is 2x slower on it, that cohort alone is pinned back to version 1 and the rollout goes on to
every other device."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers import DaemonProcess, daemon_config, free_port
from tfwarden.daemon.fleet import Fleet, Profile, Profiles, publish_version

pytestmark = pytest.mark.integration
TOKEN = "ingest-secret"
SLOW = "ml.delegate=gpu | device.model.identifier=galaxy-s23"


def test_a_regressing_cohort_is_pinned_while_the_rollout_goes_on(tmp_path: Path) -> None:
    publish_version(tmp_path / "digits", 1)
    (tmp_path / "ingest").write_text(TOKEN + "\n")
    port = free_port()
    config = daemon_config(
        tmp_path, port, server={"listen": f"127.0.0.1:{port}", "ingest_token_file": "ingest"},
        edge={"models": [{
            "name": "digits", "base_path": "digits",
            "rollout": {"steps": [20, 100], "min_step_seconds": 0, "min_devices": 60,
                        "assignment_ttl_seconds": 0.5},
            "verdicts": {"min_devices": 15}}]})
    daemon = DaemonProcess(config, port)
    profiles = Profiles(Profile(latency_ms=8), {(2, SLOW): Profile(latency_ms=8, multiplier=2)})
    fleet = Fleet.for_daemon(daemon.base_url, "digits", Fleet.grid(150), token=TOKEN, seed=3,
                             profile=profiles)
    try:
        daemon.wait_ready()
        deadline = time.monotonic() + 10
        while daemon.client.get("/api/v1/edge/digits/rollout").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        fleet.report_round()  # everyone on version 1
        publish_version(tmp_path / "digits", 2)
        rollout: dict[str, object] = {}
        for _ in range(40):
            time.sleep(0.6)  # assignments expire: devices ask again
            fleet.report_round()
            rollout = daemon.client.get("/api/v1/edge/digits/rollout").json()
            if rollout["current"] == 2:
                break
        assert rollout["current"] == 2 and rollout["pinned"] == {SLOW: 1}, rollout
        journal = daemon.client.get("/api/v1/journal", params={
            "kind": "edge_action_done", "limit": 100}).json()["entries"]
        actions = [e["payload"]["action"] for e in journal]
        assert actions.count("rollback_cohort") == 1 and "rollback" not in actions
        pin = next(e["payload"] for e in journal if e["payload"]["action"] == "rollback_cohort")
        assert pin["params"]["cohort"] == SLOW
        assert pin["findings"][0]["detector"] == "edge_latency"
        assert 1.5 < pin["findings"][0]["effect"]["median_ratio"] < 2.6
        time.sleep(0.6)
        fleet.assign()
        versions = {(d.cohort, d.version) for d in fleet.devices}
        assert {v for c, v in versions if c == SLOW} == {1}
        assert {v for c, v in versions if c != SLOW} == {2}
        assert fleet.wrong_outputs == 0
    finally:
        fleet.close()
        daemon.close()
