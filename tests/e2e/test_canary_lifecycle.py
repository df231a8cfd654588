"""End to end on 127.0.0.1: devserver + tfwarden with lifecycle and policies.

A new version directory with a latency fault is staged as a canary, found to regress and rolled
back; a healthy one goes through the weight steps and is promoted; while probes cannot reach
the server the canary is held, not rolled back, and analysis resumes when data returns.
Throughout, a watcher asserts that every request to the `stable` label succeeds."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import TESTDATA, DaemonProcess, DevServer, daemon_config, free_port
from tests.integration.test_controller import StableWatcher

pytestmark = pytest.mark.integration
MODEL = TESTDATA / "tfserving" / "saved_model_half_plus_two_cpu" / "00000123"
FAST_RULES = """rules:
  - name: rollback-canary-on-regression
    when:
      status: {phase: [canary_live]}
      any:
        - {detector: latency, verdict: regression, role: canary}
        - {detector: errors, verdict: regression, role: canary}
    action: rollback
    alert: page
    guards: {cooldown_seconds: 5}
  - name: hold-canary-while-inconclusive
    when:
      status: {phase: [canary_live]}
      any:
        - {detector: latency, verdict: inconclusive, role: canary, for_seconds: 3}
    action: hold
    alert: ticket
    guards: {cooldown_seconds: 30}
  - name: step-canary-weight
    when:
      status: {phase: [canary_live], weight_below: 100}
      all:
        - {detector: latency, verdict: ok, role: canary, min_samples: 60, for_seconds: 2}
        - {detector: errors, verdict: ok, role: canary, min_samples: 60, for_seconds: 2}
    action: set_weight
    params: {steps: [50, 100]}
    guards: {cooldown_seconds: 2}
  - name: promote-after-last-step
    when:
      status: {phase: [canary_live], weight_at_least: 100}
      all:
        - {detector: latency, verdict: ok, role: canary, for_seconds: 3}
        - {detector: errors, verdict: ok, role: canary, for_seconds: 3}
    action: promote
    alert: info
"""


SHADOW_RULE = """  - name: promote-shadow-canary
    when:
      status: {phase: [canary_shadow]}
      all:
        - {detector: latency, verdict: ok, role: canary, min_samples: 60, for_seconds: 3}
        - {detector: errors, verdict: ok, role: canary, min_samples: 60, for_seconds: 3}
    action: promote
"""


def lifecycle_config(work: Path, dev: DevServer, port: int, rest_url: str | None = None,
                     router: str = "labels") -> Path:
    return daemon_config(
        work, port, dev, model_config_file="./models.config",
        serving={"rest_url": rest_url or dev.rest_url},
        models=[{"name": "m", "golden_requests": "golden.jsonl",
                 "probe": {"address": "labels", "labels": ["stable", "canary"],
                           "rate_per_second": 20, "timeout_seconds": 1},
                 "lifecycle": {"version_poll_seconds": 1, "keep_previous_seconds": 3600,
                               "router": router}}],
        policies={"ruleset": "rules.yaml"})


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    base = tmp_path / "models" / "m"
    shutil.copytree(MODEL, base / "1")
    (tmp_path / "models.config").write_text(
        f'model_config_list {{ config {{ name: "m" base_path: "{base}" '
        'model_platform: "tensorflow" model_version_policy { specific { versions: 1 } } } }')
    (tmp_path / "golden.jsonl").write_text(json.dumps(
        {"request": {"instances": [2.0]}, "expected": {"predictions": [3.0]}}) + "\n")
    (tmp_path / "rules.yaml").write_text(FAST_RULES + SHADOW_RULE)
    dev = DevServer(f"--model_config_file={tmp_path / 'models.config'}", workdir=tmp_path)
    dev.wait_ready()
    port = free_port()
    daemon = DaemonProcess(lifecycle_config(tmp_path, dev, port), port)
    daemon.wait_ready()
    watcher = StableWatcher(dev.grpc_address)
    yield {"dev": dev, "daemon": daemon, "base": base, "work": tmp_path, "watcher": watcher,
           "port": port}
    watcher.stop.set()
    daemon.terminate()
    daemon.close()
    dev.stop()


def status(daemon: DaemonProcess) -> dict[str, Any]:
    response = daemon.client.get("/api/v1/models/m")
    return response.json() if response.status_code == 200 else {}


def wait_for(predicate: Any, timeout: float, what: str, daemon: DaemonProcess) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout}s: {status(daemon)}\n"
                                 f"{daemon.stderr()[-3000:]}")
        time.sleep(0.25)


def journal(daemon: DaemonProcess, kind: str) -> list[dict[str, Any]]:
    return daemon.client.get("/api/v1/journal", params={"kind": kind, "limit": 1000}).json()["entries"]


def new_version(base: Path, version: int, faults: dict[str, Any] | None = None) -> None:
    staging = base.parent / f".staging-{version}"
    shutil.copytree(MODEL, staging)
    if faults:
        (staging / "devserver-faults.json").write_text(json.dumps(faults))
    staging.rename(base / str(version))  # TF Serving must never see a partial version


def test_slow_canary_rolled_back_then_healthy_one_promoted(stack: dict[str, Any]) -> None:
    daemon, base, watcher = stack["daemon"], stack["base"], stack["watcher"]
    wait_for(lambda: status(daemon).get("stable_version") == 1, 30, "adoption", daemon)
    watcher.start()
    watcher.wait_served(1)

    new_version(base, 2, {"latency": {"fixed_ms": 40}})
    # how fast: bench/rollback.py (the 60 s here only guard against a hang)
    wait_for(lambda: status(daemon).get("phase") == "rolled_back", 60, "rollback", daemon)
    current = status(daemon)
    assert current["stable_version"] == 1 and current["canary_version"] is None
    assert current["rejected"] == [2]
    decisions = [e["payload"] for e in journal(daemon, "decision")]
    rollback = next(d for d in decisions if d["action"] == "rollback")
    assert rollback["findings"][0]["detector"] == "latency"
    assert rollback["findings"][0]["effect"]["median_ratio"] > 1  # the canary was the slower
    alerts = [e["payload"] for e in journal(daemon, "alert")]
    assert {"firing", "resolved"} <= {a["state"] for a in alerts if a.get("action") == "rollback"}

    new_version(base, 3)
    wait_for(lambda: status(daemon).get("stable_version") == 3, 90, "promotion", daemon)
    current = status(daemon)
    assert current["phase"] == "stable" and current["previous_good"] == 1
    actions = [(e["payload"]["action"], e["payload"].get("params")) for e in journal(daemon, "action_done")]
    assert ("set_weight", {"weight": 50}) in actions and ("set_weight", {"weight": 100}) in actions
    assert actions[-1] == ("promote", {"version": 3})
    intents = journal(daemon, "action_intent")
    done = journal(daemon, "action_done")
    assert len(intents) == len(done)  # every intent has exactly one outcome
    watcher.wait_served(3)
    watcher.stop.set()
    watcher.join(timeout=10)
    assert watcher.failures == []
    assert watcher.served >= {1, 3}
    assert 2 not in watcher.served  # the slow canary never served the stable label


def test_probe_outage_holds_the_canary_and_analysis_resumes(stack: dict[str, Any]) -> None:
    daemon, base, work, dev = stack["daemon"], stack["base"], stack["work"], stack["dev"]
    wait_for(lambda: status(daemon).get("stable_version") == 1, 30, "adoption", daemon)
    config = work / "tfwarden.yaml"
    good = config.read_text()
    dead = f"http://127.0.0.1:{free_port()}"  # predict probes cannot reach the server
    lifecycle_config(work, dev, stack["port"], rest_url=dead)
    assert daemon.client.post("/-/reload").json()["ok"]
    new_version(base, 2)
    wait_for(lambda: any(d["payload"]["action"] == "hold" for d in journal(daemon, "decision")),
             60, "hold", daemon)
    current = status(daemon)
    assert current["phase"] == "canary_live" and current["canary_version"] == 2
    assert not any(d["payload"]["action"] == "rollback" for d in journal(daemon, "decision"))
    holds = [a["payload"] for a in journal(daemon, "alert") if a["payload"].get("action") == "hold"]
    assert holds and holds[0]["severity"] == "ticket"
    config.write_text(good)
    assert daemon.client.post("/-/reload").json()["ok"]
    wait_for(lambda: status(daemon).get("stable_version") == 2, 90, "promotion after outage",
             daemon)
    assert not any(d["payload"]["action"] == "rollback" for d in journal(daemon, "decision"))


def test_shadow_canary_judged_on_replayed_requests_then_promoted(stack: dict[str, Any]) -> None:
    daemon, base, work, dev = stack["daemon"], stack["base"], stack["work"], stack["dev"]
    wait_for(lambda: status(daemon).get("stable_version") == 1, 30, "adoption", daemon)
    lifecycle_config(work, dev, stack["port"], router="shadow")
    assert daemon.client.post("/-/reload").json()["ok"]
    new_version(base, 2)
    wait_for(lambda: status(daemon).get("phase") == "canary_shadow", 30, "shadow canary", daemon)
    wait_for(lambda: status(daemon).get("stable_version") == 2, 60, "promotion", daemon)
    actions = [e["payload"]["action"] for e in journal(daemon, "action_done")]
    assert "set_weight" not in actions  # no live traffic steps for a shadow canary
    assert actions[-1] == "promote"
