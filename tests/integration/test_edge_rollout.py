"""Edge rollouts through a running daemon's HTTP API: devices ask which version to run and
fetch it (ingest token, sha256 and size as published), operators start a rollout and pin a
cohort (journaled intent then outcome), refusals are 4xx JSON, and a restarted daemon keeps the
rollout and assigns every device the same version (sticky buckets on a key kept in its state)."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import TESTDATA, DaemonProcess, daemon_config, free_port

pytestmark = pytest.mark.integration
INGEST, OPERATOR = "ingest-secret", "operator-secret"
TFLITE = TESTDATA / "tfserving" / "saved_model_half_plus_two_tflite" / "00000123" / "model.tflite"
DEVICES = [f"phone-{i}" for i in range(2000)]


def publish(base: Path, version: int, source: Path = TFLITE) -> dict[str, object]:
    directory = base / str(version)
    directory.mkdir(parents=True)
    shutil.copy(source, directory / "model.tflite")
    data = (directory / "model.tflite").read_bytes()
    manifest = {"model": "digits", "method": "float16", "file": "model.tflite",
                "size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return manifest


class Daemon:
    def __init__(self, work: Path) -> None:
        self.work, self.port = work, free_port()
        (work / "token").write_text(OPERATOR + "\n")
        (work / "ingest").write_text(INGEST + "\n")
        self.config = daemon_config(
            work, self.port, server={"listen": f"127.0.0.1:{self.port}",
                                     "bearer_token_file": "token", "ingest_token_file": "ingest"},
            edge={"models": [{"name": "digits", "cohort_by": ["ml.delegate"],
                              "base_path": str(work / "digits"),
                              "rollout": {"steps": [5, 50, 100], "auto_start": False}}]})
        self.process = self.start()

    def start(self) -> DaemonProcess:
        process = DaemonProcess(self.config, self.port)
        process.wait_ready()
        return process

    def restart(self) -> None:
        assert self.process.terminate()[0] == 0
        self.process.close()
        self.process = self.start()

    def assign(self, device: str, delegate: str = "cpu", token: str = INGEST) -> dict[str, object]:
        response = self.process.client.get(
            "/api/v1/edge/digits/assignment", params={"device_id": device, "ml.delegate": delegate},
            headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        return dict(response.json())

    def act(self, action: str, body: dict[str, object] | None = None) -> tuple[int, dict[str, object]]:
        response = self.process.client.post(
            f"/api/v1/edge/digits/rollout/{action}", json=body or {},
            headers={"Authorization": f"Bearer {OPERATOR}"})
        return response.status_code, response.json()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    work = tmp_path_factory.mktemp("edge-rollout")
    publish(work / "digits", 1)
    started = Daemon(work)
    try:
        yield started
    finally:
        started.process.close()


def test_devices_get_the_current_version_with_what_they_need_to_fetch_and_check_it(
        daemon: Daemon) -> None:
    answer = daemon.assign("phone-1")
    assert answer["version"] == 1 and answer["cohort"] == "ml.delegate=cpu"
    assert answer["url"] == "/api/v1/edge/digits/versions/1/model.tflite"
    file = daemon.process.client.get(str(answer["url"]),
                                     headers={"Authorization": f"Bearer {INGEST}"})
    assert file.status_code == 200
    assert hashlib.sha256(file.content).hexdigest() == answer["sha256"]
    assert len(file.content) == answer["size_bytes"]
    assert answer["ttl_seconds"] == 3600


def test_assignment_refusals_are_json_and_say_why(daemon: Daemon) -> None:
    client = daemon.process.client
    assert client.get("/api/v1/edge/digits/assignment", params={"device_id": "x"}).status_code == 401
    missing = client.get("/api/v1/edge/digits/assignment",
                         headers={"Authorization": f"Bearer {INGEST}"})
    assert missing.status_code == 400 and "device_id is required" in missing.json()["error"]
    unknown = client.get("/api/v1/edge/nope/assignment", params={"device_id": "x"},
                         headers={"Authorization": f"Bearer {INGEST}"})
    assert unknown.status_code == 404 and "no edge rollout" in unknown.json()["error"]
    other_file = client.get("/api/v1/edge/digits/versions/1/manifest.json",
                            headers={"Authorization": f"Bearer {INGEST}"})
    assert other_file.status_code == 404  # only the published model file is served
    status, body = daemon.act("advance")
    assert status == 409 and "does not apply while idle" in str(body["error"])
    status, body = daemon.act("start", {"version": 9})
    assert status == 409 and "no published version 9" in str(body["error"])


def test_a_rollout_offers_the_candidate_to_its_share_pins_a_cohort_and_survives_a_restart(
        daemon: Daemon) -> None:
    publish(daemon.work / "digits", 2)
    status, body = daemon.act("start", {"version": 2})
    assert status == 200 and (body["candidate"], body["percent"]) == (2, 5)
    on_candidate = {d for d in DEVICES if daemon.assign(d)["version"] == 2}
    assert 60 < len(on_candidate) < 140  # about 5 % of 2,000
    status, body = daemon.act("rollback_cohort", {"cohort": "ml.delegate=gpu"})
    assert status == 200 and body["pinned"] == {"ml.delegate=gpu": 1}
    assert {daemon.assign(d, "gpu")["version"] for d in sorted(on_candidate)[:20]} == {1}
    rollout = daemon.process.client.get("/api/v1/edge/digits/rollout").json()
    assert rollout["phase"] == "rolling_out" and rollout["published"] == [1, 2]
    journal = daemon.process.client.get("/api/v1/journal", params={"model": "digits"}).json()
    kinds = [e["kind"] for e in journal["entries"]]
    assert kinds.count("edge_action_intent") == kinds.count("edge_action_done") == 2

    daemon.restart()
    assert {d for d in DEVICES if daemon.assign(d)["version"] == 2} == on_candidate
    assert daemon.assign(sorted(on_candidate)[0], "gpu")["version"] == 1
    metrics = daemon.process.client.get("/metrics").text
    assert 'tfwarden_edge_rollout_percent{model="digits"} 5.0' in metrics
    assert 'tfwarden_edge_pinned_cohorts{model="digits"} 1.0' in metrics
