"""Chaos for the edge rollout actions: the daemon is killed, stopped or reloaded right after an
action's intent is journaled and right before its outcome; after a restart without faults every
intent has exactly one outcome, nothing is pending, the action took effect once, and every
device is assigned what the rollout's status says (the same devices as before the fault)."""

from __future__ import annotations

import hashlib
import json
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import DaemonProcess, daemon_config, free_port

pytestmark = pytest.mark.integration
DEVICES = [f"device-{i}" for i in range(400)]
# the action under test, and what runs before it (each by the operators' API)
SCENARIOS: dict[str, tuple[list[tuple[str, dict[str, Any]]], dict[str, Any]]] = {
    "start": ([], {"version": 2}),
    "advance": ([("start", {"version": 2})], {}),
    "halt": ([("start", {"version": 2})], {}),
    "rollback_cohort": ([("start", {"version": 2})], {"cohort": "ml.delegate=gpu"}),
    "rollback": ([("start", {"version": 2}), ("halt", {})], {}),
}


def publish(base: Path, version: int) -> None:
    directory = base / str(version)
    directory.mkdir(parents=True)
    data = f"model {version}".encode()
    (directory / "model.tflite").write_bytes(data)
    (directory / "manifest.json").write_text(json.dumps(
        {"file": "model.tflite", "size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}))


def _post(daemon: DaemonProcess, action: str, body: dict[str, Any]) -> int | None:
    try:
        return daemon.client.post(f"/api/v1/edge/digits/rollout/{action}", json=body).status_code
    except httpx.TransportError:
        return None  # killed while answering


def _wait_rollout(daemon: DaemonProcess) -> None:
    """The rollouts start (and finish a pending action) just after the daemon is ready."""
    deadline = time.monotonic() + 10
    while daemon.client.get("/api/v1/edge/digits/rollout").status_code != 200:
        assert time.monotonic() < deadline, daemon.stderr()[-2000:]
        time.sleep(0.05)


def _assignments(daemon: DaemonProcess) -> dict[tuple[str, str], int]:
    return {(d, delegate): daemon.client.get("/api/v1/edge/digits/assignment", params={
        "device_id": d, "ml.delegate": delegate}).json()["version"]
        for d in DEVICES for delegate in ("cpu", "gpu")}


@pytest.mark.parametrize("step", ["after_intent", "before_outcome"])
@pytest.mark.parametrize("fault", ["kill", "term", "hup"])
@pytest.mark.parametrize("action", list(SCENARIOS))
def test_an_interrupted_edge_action_has_one_outcome(tmp_path: Path, action: str, fault: str,
                                                    step: str) -> None:
    publish(tmp_path / "digits", 1)
    port = free_port()
    config = daemon_config(tmp_path, port, edge={"models": [{
        "name": "digits", "cohort_by": ["ml.delegate"], "base_path": "digits",
        "rollout": {"steps": [5, 50, 100], "auto_start": False}}]})
    before, params = SCENARIOS[action]
    daemon = DaemonProcess(config, port, env={
        "TFWARDEN_FAILPOINTS": f"edge_{action}.{step}={fault}"})
    try:
        daemon.wait_ready()
        _wait_rollout(daemon)  # v1 adopted as current
        publish(tmp_path / "digits", 2)
        for name, body in before:
            assert _post(daemon, name, body) == 200
        _post(daemon, action, params)
        if fault == "hup":  # a reload: the daemon goes on; the action completes in it
            time.sleep(0.5)
            daemon.proc.send_signal(signal.SIGTERM)
        daemon.proc.wait(timeout=15)
    finally:
        daemon.close()

    again = DaemonProcess(config, port)
    try:
        again.wait_ready()
        _wait_rollout(again)
        deadline = time.monotonic() + 10
        while True:
            entries = again.client.get("/api/v1/journal", params={
                "model": "digits", "limit": 1000}).json()["entries"]
            intents = [e for e in entries if e["kind"] == "edge_action_intent"]
            outcomes = [e for e in entries if e["kind"] in ("edge_action_done",
                                                            "edge_action_failed")]
            if len(outcomes) == len(intents) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert Counter(e["payload"]["intent_id"] for e in outcomes) == \
            Counter(e["id"] for e in intents), again.stderr()[-2000:]
        assert [e["payload"]["action"] for e in intents] == [n for n, _ in before] + [action]
        assert all(e["kind"] == "edge_action_done" for e in outcomes)
        status = again.client.get("/api/v1/edge/digits/rollout").json()
        expected = {"start": ("rolling_out", 5, {}), "advance": ("rolling_out", 50, {}),
                    "halt": ("halted", 5, {}), "rollback": ("rolled_back", 0, {}),
                    "rollback_cohort": ("rolling_out", 5, {"ml.delegate=gpu": 1})}[action]
        assert (status["phase"], status["percent"], status["pinned"]) == expected
        assigned = _assignments(again)
        on_candidate = {d for (d, delegate), v in assigned.items() if v == 2}
        if action == "rollback":
            assert not on_candidate
        else:
            assert on_candidate and all(assigned[(d, "gpu")] == 1 for d in DEVICES) == \
                (action == "rollback_cohort")
    finally:
        again.close()
