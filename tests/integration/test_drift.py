"""Drift checks in a running daemon against a devserver: input drift, output drift, canary
disagreement, the worker crashing and coming back, and online calibration reused after restart."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import TESTDATA, DaemonProcess, DevServer, daemon_config, free_port

pytestmark = pytest.mark.integration
TWO = TESTDATA / "tfserving" / "saved_model_half_plus_two_cpu" / "00000123"
THREE = TESTDATA / "tfserving" / "saved_model_half_plus_three" / "00000123"


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"condition not met in time: {what}"
        time.sleep(0.25)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("drift")
    for name, versions in (("m", {1: TWO, 2: THREE}), ("a", {1: TWO})):
        for version, source in versions.items():
            shutil.copytree(source, work / "models" / name / str(version))
    (work / "models.config").write_text(
        'model_config_list { '
        f'config {{ name: "m" base_path: "{work}/models/m" model_platform: "tensorflow" '
        'model_version_policy { all {} } } '
        f'config {{ name: "a" base_path: "{work}/models/a" model_platform: "tensorflow" }} }}')
    dev = DevServer(f"--model_config_file={work / 'models.config'}", workdir=work)
    dev.wait_ready()
    rng = np.random.default_rng(11)
    np.savez(work / "reference.npz", x=rng.normal(size=(1000, 1)))
    np.save(work / "reference-a.npy", rng.normal(size=(300, 1)))
    port = free_port()
    config = daemon_config(
        work, port, dev,
        models=[{"name": "m", "drift": {
                    "method": "window", "engine": "scipy", "reference": "reference.npz", "window_rows": 200,
                    "consecutive": 2, "interval_seconds": 0.5,
                    "outputs": {"rows_per_check": 100, "min_rows": 100, "reference_rows": 300}}},
                {"name": "a", "drift": {
                    "engine": "alibi", "reference": "reference-a.npy", "window_rows": 100,
                    "interval_seconds": 0.5,
                    "online": {"ert": 150, "window_sizes": [10], "n_bootstraps": 3000},
                    "outputs": {"enabled": False}}}],
        capture={"client_rows_per_second": 100000},
        detection={"drift_worker": {"request_timeout_seconds": 60,
                                    "restart_backoff_max_seconds": 2}})
    daemon = DaemonProcess(config, port)
    daemon.wait_ready()
    state = {"dev": dev, "daemon": daemon, "work": work, "config": config, "port": port,
             "rng": rng}
    yield state
    current = state["daemon"]  # a test may have restarted it
    if current.proc.poll() is None:
        current.terminate()
    current.close()
    dev.stop()


def post_rows(daemon: DaemonProcess, model: str, rows: np.ndarray) -> None:
    for start in range(0, len(rows), 100):
        response = daemon.client.post(f"/api/v1/samples/{model}", json={
            "features": ["x"], "rows": rows[start:start + 100].tolist()})
        assert response.status_code == 200, response.text


def finding(daemon: DaemonProcess, model: str, target: str,
            version: int | None = None) -> dict[str, Any] | None:
    for item in daemon.client.get("/api/v1/findings").json()["findings"]:
        if item["detector"] == "drift" and item["model"] == model and item["target"] == target \
                and item["version"] == version:
            return dict(item)
    return None


def verdict_is(daemon: DaemonProcess, model: str, target: str, verdict: str,
               version: int | None = None) -> Callable[[], bool]:
    def check() -> bool:
        found = finding(daemon, model, target, version)
        return found is not None and found["verdict"] == verdict
    return check


def worker_pid(daemon: DaemonProcess) -> int:
    children = Path(f"/proc/{daemon.proc.pid}/task/{daemon.proc.pid}/children").read_text().split()
    for pid in children:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"tfwarden.detectors.drift.worker" in cmdline:
            return int(pid)
    raise AssertionError("no drift worker child")


def test_stationary_inputs_are_ok_and_a_shift_is_found(setup: dict[str, Any]) -> None:
    daemon, rng = setup["daemon"], setup["rng"]
    post_rows(daemon, "m", rng.normal(size=(400, 1)))
    wait_for(verdict_is(daemon, "m", "inputs", "ok"), what="inputs ok on null data")
    report = daemon.client.get("/api/v1/models/m/drift").json()
    assert report["engine"] == "scipy" and report["reference"]["rows"] == 1000
    feature = report["inputs"]["features"][0]
    assert feature["name"] == "x" and feature["test"] == "ks" and feature["p_adjusted"] > 0.01
    shifted = rng.normal(size=(400, 1)) + 0.5
    post_rows(daemon, "m", shifted)
    found = wait_for(lambda: (f := finding(daemon, "m", "inputs")) and
                     f["verdict"] == "regression" and f, what="input drift")
    assert found["effect"]["drifted_features"] == ["x"]
    assert found["evidence"]["consecutive"] >= 2
    metrics = {(f.name, tuple(sorted(s.labels.items()))): s.value for f in
               text_string_to_metric_families(daemon.client.get("/metrics").text)
               for s in f.samples}
    assert metrics[("tfwarden_drift_detected", (("model", "m"),))] == 1
    assert metrics[("tfwarden_drift_p_value", (("feature", "x"), ("model", "m")))] < 1e-6
    assert daemon.client.get("/api/v1/status").json()["process"]["heavy_modules_loaded"] == []


def test_canary_disagreement_and_output_drift(setup: dict[str, Any]) -> None:
    daemon, rng = setup["daemon"], setup["rng"]
    post_rows(daemon, "m", rng.normal(size=(600, 1)))
    # v1 = x/2 + 2 (stable), v2 = x/2 + 3 (canary): every prediction differs
    found = wait_for(lambda: (f := finding(daemon, "m", "disagreement", 2)) and
                     f["verdict"] == "regression" and f, what="disagreement")
    assert found["effect"]["disagreement"] == 1.0
    wait_for(verdict_is(daemon, "m", "outputs", "regression", 2), what="canary output drift")
    wait_for(verdict_is(daemon, "m", "outputs", "ok", 1), what="stable outputs ok")
    report = daemon.client.get("/api/v1/models/m/drift").json()
    assert set(report["outputs"]) == {"1", "2"}
    assert report["outputs"]["2"]["features"][0]["name"] == "output"


def test_worker_crash_makes_findings_inconclusive_and_it_comes_back(
        setup: dict[str, Any]) -> None:
    daemon, rng = setup["daemon"], setup["rng"]
    generation = daemon.client.get("/api/v1/models/m/drift").json()["worker"]["generation"]
    os.kill(worker_pid(daemon), signal.SIGKILL)
    wait_for(lambda: "drift worker down" in (finding(daemon, "m", "inputs") or {}).get(
        "reason", ""), what="inconclusive while down")
    assert finding(daemon, "m", "inputs")["verdict"] == "inconclusive"
    assert daemon.client.get("/-/ready").status_code == 200
    post_rows(daemon, "m", rng.normal(size=(400, 1)))
    wait_for(verdict_is(daemon, "m", "inputs", "ok"), what="checks resume")
    worker = daemon.client.get("/api/v1/models/m/drift").json()["worker"]
    assert worker["generation"] > generation and worker["up"]


def test_online_detector_calibrates_in_the_background_and_reuses_it(
        setup: dict[str, Any]) -> None:
    daemon, rng = setup["daemon"], setup["rng"]
    state = setup["work"] / "state" / "drift" / "calibration"

    def online_state() -> str:
        post_rows(daemon, "a", rng.normal(size=(20, 1)))
        return str((daemon.client.get("/api/v1/models/a/drift").json()["online"] or {}).get(
            "state"))
    wait_for(lambda: online_state() == "ready", timeout=120, what="online calibrated")
    assert [p.name.split("-")[0] for p in state.glob("*.npy")] == ["cvm"]
    calibrated = daemon.client.get("/api/v1/models/a/drift").json()["online"]
    assert calibrated["calibration_seconds"] > 0  # computed in the background child
    mtime = next(state.glob("*.npy")).stat().st_mtime_ns
    post_rows(daemon, "a", rng.normal(size=(400, 1)) + 2.0)
    found = wait_for(lambda: (f := finding(daemon, "a", "online")) and
                     f["verdict"] == "regression" and f, timeout=30, what="online drift")
    assert "x" in found["reason"]
    alibi = daemon.client.get("/api/v1/models/a/drift").json()
    # model a runs the default sequential tests on its inputs beside the online detector
    assert alibi["engine"] == "alibi" and alibi["method"] == "sequential"
    assert alibi["inputs"]["features"][0]["test"] == "e-cusum"
    inputs = wait_for(lambda: (f := finding(daemon, "a", "inputs")) and
                      f["verdict"] == "regression" and f, timeout=30, what="sequential drift")
    assert inputs["evidence"]["value"] >= inputs["evidence"]["threshold"]
    # restart the daemon: the calibrated thresholds are read back, not computed again
    daemon.terminate()
    daemon.close()
    restarted = DaemonProcess(setup["config"], setup["port"])
    setup["daemon"] = restarted
    restarted.wait_ready()
    wait_for(lambda: online_state_of(restarted, rng) == "ready", timeout=60,
             what="online ready after restart")
    online = restarted.client.get("/api/v1/models/a/drift").json()["online"]
    assert online["calibration_seconds"] is None  # read from the cache, no calibration run
    assert [p.stat().st_mtime_ns for p in state.glob("*.npy")] == [mtime]


def online_state_of(daemon: DaemonProcess, rng: np.random.Generator) -> str:
    post_rows(daemon, "a", rng.normal(size=(20, 1)))
    return str((daemon.client.get("/api/v1/models/a/drift").json()["online"] or {}).get("state"))
