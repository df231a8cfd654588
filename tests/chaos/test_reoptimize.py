"""Chaos for the ``reoptimize`` action: the daemon crashes, stops, reloads or finds its state disk
full right after the start is journaled (the optimizer worker is running) and right before the
outcome (the variant is published); after a restart every start has exactly one outcome, no
variant is published twice, and ``stable`` never fails a request. The failing gRPC reload and
nginx do not apply: a reoptimization reloads neither (its variant becomes a canary through the
new-version watcher, whose staging the action matrix covers)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.chaos.test_actions import _can_mount, _reload, _states
from tests.helpers import DaemonProcess, DevServer, daemon_config, free_port
from tests.integration.test_controller import StableWatcher
from tfwarden.optimizers.publish import PROVENANCE
from tfwarden.serving.tfserving.modelconfig import read_config

pytestmark = pytest.mark.integration
REOPTIMIZED = ("reoptimized", "reoptimize_failed", "reoptimize_rejected")
RULES = """rules:
  - name: reoptimize-stable
    when: {status: {phase: [stable], in_phase_for_seconds: 1}}
    action: reoptimize
    params: {method: dynamic}
    guards: {cooldown_seconds: 3600}
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("chaos-reoptimize")
    subprocess.run([sys.executable, "-m", "tfwarden.optimizers.models", str(work / "built"),
                    "--epochs", "3"], check=True, timeout=300, capture_output=True)
    (work / "models.config").write_text(
        f'model_config_list {{ config {{ name: "seed" base_path: "{work / "built" / "m"}" '
        'model_platform: "tensorflow" } }')
    dev = DevServer(f"--model_config_file={work / 'models.config'}", "--prefer_tflite_model=true",
                    workdir=work)
    dev.wait_ready()
    try:
        yield {"work": work, "dev": dev, "can_mount": _can_mount(work / "mount-test")}
    finally:
        dev.stop()


@pytest.mark.parametrize("step", ["after_intent", "before_outcome"])
@pytest.mark.parametrize("fault", ["kill", "term", "hup", "disk"])
def test_an_interrupted_reoptimization_has_one_outcome(served: dict[str, Any], fault: str,
                                                      step: str) -> None:
    work, dev = served["work"], served["dev"]
    name = f"r{fault}{step.replace('_', '')}"
    case = work / name
    base = case / "models" / name
    shutil.copytree(work / "built" / "m" / "1", base / "1")
    state = case / "state"
    state.mkdir(parents=True)
    mounted = fault == "disk" and served["can_mount"]
    if mounted:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(state)], check=True,
                       timeout=30)
    (case / "rules.yaml").write_text(RULES)
    (work / "models.config").write_text(
        f'model_config_list {{ config {{ name: "{name}" base_path: "{base}" '
        'model_platform: "tensorflow" model_version_policy { specific { versions: 1 } } } }')
    _reload(dev.grpc_address, read_config(work / "models.config"))
    port = free_port()
    config = daemon_config(
        case, port, dev, model_config_file=str(work / "models.config"),
        models=[{"name": name, "lifecycle": {"version_poll_seconds": 1, "auto_canary": False},
                 "optimize": {"method": "dynamic", "golden": str(work / "built" / "golden.npz")}}],
        policies={"ruleset": "rules.yaml"})
    what = {"disk": "fill" if mounted else "fsize"}.get(fault, fault)
    watcher = StableWatcher(dev.grpc_address, name, width=64, pause=0.005)
    daemon = DaemonProcess(config, port, {"TFWARDEN_FAILPOINTS": f"reoptimize.{step}={what}"})
    try:
        daemon.wait_ready()
        _wait(lambda: _status(daemon, name).get("stable_version") == 1, "adoption", daemon)
        watcher.start()
        watcher.wait_served(1)
        if fault in ("kill", "term"):
            daemon.proc.wait(timeout=240)
        elif fault == "hup":
            _wait(lambda: _unsettled(_journal(daemon, name)) == [] and
                  _journal(daemon, name, "reoptimize_started"), "an outcome", daemon, 240)
        else:
            _wait(lambda: f"failpoint reoptimize.{step}" in daemon.stderr(), "the fault", daemon,
                  240)
            time.sleep(1.0)
        if daemon.proc.poll() is None:
            daemon.proc.send_signal(signal.SIGTERM)
            daemon.proc.wait(timeout=30)
        daemon.close()
        (state / "failpoint-fill").unlink(missing_ok=True)

        daemon = DaemonProcess(config, port)
        daemon.wait_ready()
        _wait(lambda: _journal(daemon, name, "reoptimize_started") and
              _unsettled(_journal(daemon, name)) == [], "every start settled", daemon, 240)
        journal = _journal(daemon, name)
        starts = [e["id"] for e in journal if e["kind"] == "reoptimize_started"]
        outcomes = Counter(e["payload"]["intent_id"] for e in journal if e["kind"] in REOPTIMIZED)
        assert set(outcomes) == set(starts) and set(outcomes.values()) == {1}, journal
        published = [v for v in base.iterdir() if (v / PROVENANCE).is_file()]
        assert len(published) <= 1, published  # never published twice
        if step == "before_outcome":  # the variant was published before the fault
            assert len(published) == 1
            assert [e["payload"]["version"] for e in journal if e["kind"] == "reoptimized"] \
                == [int(published[0].name)]
        labels = dict(next(c for c in read_config(work / "models.config").model_config_list.config
                           if c.name == name).version_labels)
        states = _states(dev.grpc_address, name)
        assert labels.get("stable") == 1 and states.get(1) == "AVAILABLE", (labels, states)
        watcher.stop.set()
        watcher.join(timeout=10)
        assert watcher.calls > 0 and watcher.failures == [], watcher.failures[:5]
    finally:
        watcher.stop.set()
        daemon.close()
        if mounted:
            subprocess.run(["umount", "-l", str(state)], timeout=30)


def _status(daemon: DaemonProcess, name: str) -> dict[str, Any]:
    try:
        response = daemon.client.get(f"/api/v1/models/{name}")
    except httpx.TransportError:
        return {}
    return response.json() if response.status_code == 200 else {}


def _journal(daemon: DaemonProcess, name: str, kind: str | None = None) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"model": name, "limit": 1000}
    if kind:
        params["kind"] = kind
    try:
        response = daemon.client.get("/api/v1/journal", params=params)
    except httpx.TransportError:
        return []
    entries: list[dict[str, Any]] = response.json()["entries"] if response.status_code == 200 \
        else []
    return entries


def _unsettled(journal: list[dict[str, Any]]) -> list[int]:
    settled = {e["payload"]["intent_id"] for e in journal if e["kind"] in REOPTIMIZED}
    return [e["id"] for e in journal if e["kind"] == "reoptimize_started" and e["id"] not in settled]


def _wait(predicate: Any, what: str, daemon: DaemonProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout}s\n{daemon.stderr()[-4000:]}")
        time.sleep(0.2)

