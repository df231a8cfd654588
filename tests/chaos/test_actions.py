"""Chaos suite: every lifecycle action, interrupted at every step inside it, by a crash, a stop,
a reload, a failing gRPC reload, a failing nginx and a full state disk; then a restart and the
invariants. Real processes: one devserver and one nginx for the module, a `tfwarden run` per
case (a fresh model name and state directory each, so cases cannot leak into each other).

Faults inside the daemon come from its failpoints (``tfwarden.core.failpoints``); the failing
reload is the devserver's injected reload fault, the failing nginx a wrapper that exits 1, and
the full disk a 4 MiB tmpfs under the state directory filled up at the step (or, where nothing
can be mounted, ``RLIMIT_FSIZE`` 0: writes that grow a file fail, EFBIG).

Invariants, checked after the restart has settled every pending intent:
- ``stable`` always serves a loaded version (predicts through the label answer);
- no label points at a version that is not AVAILABLE;
- every intent has exactly one outcome, and no outcome lacks its intent;
- no action runs twice (one intent per request, and none more while the daemon idles on);
- a watcher predicting through ``stable`` all along saw zero failed requests.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from tests.helpers import TESTDATA, DaemonProcess, DevServer, Nginx, daemon_config, free_port
from tests.integration.test_controller import StableWatcher
from tfwarden.serving.devserver.grpcsvc import RELOAD_FAULT_FILE
from tfwarden.serving.tfserving.modelconfig import read_config

pytestmark = pytest.mark.integration
MODEL = TESTDATA / "tfserving" / "saved_model_half_plus_two_cpu" / "00000123"
TOKEN = "chaos-token"
OUTCOMES = ("action_done", "action_failed")

# action -> its steps (failpoints inside it, in order) and whether it touches nginx
STEPS: dict[str, tuple[str, ...]] = {
    "stage_canary": ("after_intent", "after_router", "after_server", "before_outcome"),
    "set_weight": ("after_intent", "after_router", "before_outcome"),
    "promote": ("after_intent", "after_router", "after_server", "before_outcome"),
    "rollback": ("after_intent", "after_router", "after_server", "before_outcome"),
    "unload_previous": ("after_intent", "after_server", "before_outcome"),
}
# how many gRPC reloads each action sends (a failing reload is tried at each one)
RELOADS = {"stage_canary": 2, "set_weight": 0, "promote": 1, "rollback": 1, "unload_previous": 1}
SIGNALS = ("kill", "term", "hup", "disk")


def _cases() -> Iterator[Any]:
    for action, steps in STEPS.items():
        for step in steps:
            for fault in SIGNALS:
                yield pytest.param(action, fault, step, id=f"{action}-{fault}-{step}")
        for nth in range(RELOADS[action]):
            yield pytest.param(action, "grpc", str(nth), id=f"{action}-grpc-reload{nth + 1}")
        if action != "unload_previous":  # it changes no routing
            yield pytest.param(action, "nginx", "", id=f"{action}-nginx")


@dataclass
class Stack:
    work: Path
    dev: DevServer
    nginx: Nginx
    can_mount: bool
    cases: Counter[str]


def _can_mount(where: Path) -> bool:
    where.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)],
                          capture_output=True, timeout=30)
    if done.returncode != 0:
        return False
    subprocess.run(["umount", str(where)], check=True, timeout=30)
    return True


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("chaos")
    shutil.copytree(MODEL, work / "models" / "seed" / "1")
    (work / "models.config").write_text(
        f'model_config_list {{ config {{ name: "seed" base_path: "{work / "models" / "seed"}" '
        'model_platform: "tensorflow" } }')
    dev = DevServer(f"--model_config_file={work / 'models.config'}", workdir=work)
    dev.wait_ready()
    nginx = Nginx(work)
    wrapper = work / "nginx-wrapper"
    wrapper.write_text(f"#!/bin/sh\nif [ -e {work}/nginx-fail ]; then\n"
                       f"  echo 'nginx: [emerg] injected failure' >&2; exit 1\nfi\n"
                       f"exec {nginx.binary} \"$@\"\n")
    wrapper.chmod(0o755)
    nginx.binary = str(wrapper)
    (work / "token").write_text(TOKEN)
    cases: Counter[str] = Counter()
    try:
        yield Stack(work, dev, nginx, _can_mount(work / "mount-test"), cases)
    finally:
        nginx.stop()
        dev.stop()
        print(f"\nchaos matrix: {sum(cases.values())} cases, invariants held in each: "
              + ", ".join(f"{k} {v}" for k, v in sorted(cases.items())))


class Case:
    """One model and one daemon configuration for one chaos case."""

    def __init__(self, stack: Stack, action: str, fault: str, step: str) -> None:
        self.stack, self.action, self.fault, self.step = stack, action, fault, step
        self.name = f"m{abs(hash((action, fault, step))) % 10**8}"
        self.work = stack.work / self.name
        self.base = self.work / "models" / self.name
        shutil.copytree(MODEL, self.base / "1")
        self.port = free_port()
        self.state = self.work / "state"
        self.state.mkdir(parents=True)
        self.mounted = fault == "disk" and stack.can_mount
        if self.mounted:
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(self.state)],
                           check=True, timeout=30)
        rules = self.work / "rules.yaml"
        rules.write_text(_rules(action))
        self.config = daemon_config(
            self.work, self.port, stack.dev, model_config_file=str(stack.work / "models.config"),
            models=[{"name": self.name, "lifecycle": {
                "version_poll_seconds": 1, "router": "nginx",
                "keep_previous_seconds": 1 if action == "unload_previous" else 3600}}],
            nginx={"conf": str(stack.nginx.conf), "prefix": str(stack.work),
                   "include_dir": str(stack.nginx.include), "binary": stack.nginx.binary},
            policies={"ruleset": str(rules)},
            server={"listen": f"127.0.0.1:{self.port}", "bearer_token_file": str(stack.work / "token")})
        self._serve_only_this_model()
        self.watcher = StableWatcher(stack.dev.grpc_address, self.name, pause=0.005)
        self.daemon: DaemonProcess | None = None

    def _serve_only_this_model(self) -> None:
        """The devserver serves this case's model alone, version 1, no label (as a server that
        tfwarden has never seen): earlier cases' models are unloaded."""
        config_file = self.stack.work / "models.config"
        config_file.write_text(
            f'model_config_list {{ config {{ name: "{self.name}" base_path: "{self.base}" '
            'model_platform: "tensorflow" model_version_policy { specific { versions: 1 } } } }')
        _reload(self.stack.dev.grpc_address, read_config(config_file))

    # -- the daemon ------------------------------------------------------------------------
    def start(self, failpoints: str = "") -> DaemonProcess:
        env = {"TFWARDEN_FAILPOINTS": failpoints} if failpoints else {}
        self.daemon = DaemonProcess(self.config, self.port, env)
        self.daemon.wait_ready()
        return self.daemon

    def status(self) -> dict[str, Any]:
        assert self.daemon is not None
        try:
            response = self.daemon.client.get(f"/api/v1/models/{self.name}")
        except httpx.TransportError:
            return {}
        return response.json() if response.status_code == 200 else {}

    def journal(self) -> list[dict[str, Any]]:
        assert self.daemon is not None
        try:
            response = self.daemon.client.get(
                "/api/v1/journal", params={"model": self.name, "limit": 1000})
        except httpx.TransportError:  # stopping or stopped
            return []
        entries: list[dict[str, Any]] = response.json()["entries"] \
            if response.status_code == 200 else []
        return entries

    def request(self, what: str) -> None:
        assert self.daemon is not None
        try:
            self.daemon.client.post(f"/api/v1/models/{self.name}/{what}",
                                    headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        except httpx.TransportError:
            pass  # the daemon died in the middle of the request: that is the point

    def wait(self, predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                log = self.daemon.stderr()[-4000:] if self.daemon else ""
                raise AssertionError(f"{self.action}/{self.fault}/{self.step}: {what} not reached "
                                     f"in {timeout}s: {self.status()}\n{log}")
            time.sleep(0.1)

    def alive(self) -> bool:
        return self.daemon is not None and self.daemon.proc.poll() is None

    def new_version(self, version: int) -> None:
        staging = self.base.parent / f".staging-{version}"
        shutil.copytree(MODEL, staging)
        staging.rename(self.base / str(version))

    def close(self) -> None:
        self.watcher.stop.set()
        if self.daemon is not None:
            self.daemon.close()
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.state)], timeout=30)


def _reload(address: str, config: Any) -> None:
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        request = model_management_pb2.ReloadConfigRequest()
        request.config.CopyFrom(config)
        model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
            request, timeout=120)


def _rules(action: str) -> str:
    if action == "set_weight":  # once, 3 s after a canary is live (time to arm a fault)
        return ("rules:\n  - name: step\n    when: {status: {phase: [canary_live], "
                "weight_below: 50, in_phase_for_seconds: 3}}\n    action: set_weight\n"
                "    params: {steps: [50]}\n")
    return ("rules:\n  - name: never\n    when: {status: {phase: [paused]}}\n"
            "    action: hold\n")


# -- the matrix ------------------------------------------------------------------------------
@pytest.mark.parametrize(("action", "fault", "step"), list(_cases()))
def test_an_interrupted_action_keeps_every_invariant(stack: Stack, action: str, fault: str,
                                                    step: str) -> None:
    case = Case(stack, action, fault, step)
    try:
        _run(case)
        _settle_after_restart(case)
        _check_invariants(case)
        stack.cases[f"{fault}"] += 1
    finally:
        case.close()
        for flag in (stack.work / "nginx-fail", stack.work / RELOAD_FAULT_FILE):
            flag.unlink(missing_ok=True)


def _run(case: Case) -> None:
    """Bring the model to where ``action`` applies, arm the fault, start the action, and wait
    until the fault has had its effect."""
    action, fault, step = case.action, case.fault, case.step
    armed = ""
    if fault in SIGNALS:
        what = "fill" if fault == "disk" and case.mounted else "fsize" if fault == "disk" else fault
        armed = f"{action}.{step}={what}"
    daemon = case.start(armed)
    case.wait(lambda: case.status().get("stable_version") == 1, "adoption")
    case.watcher.start()
    case.watcher.wait_served(1)
    if action != "stage_canary":  # the others need a canary (and unload, a promotion)
        case.new_version(2)
        case.wait(lambda: case.status().get("canary_version") == 2, "canary staged")
    if action == "unload_previous":
        case.request("promote")
        case.wait(lambda: case.status().get("stable_version") == 2, "promotion")
        case.watcher.wait_served(2)

    if fault == "grpc":
        (case.stack.work / RELOAD_FAULT_FILE).write_text(json.dumps(
            {"code": "UNAVAILABLE", "message": "injected reload failure", "skip": int(step)}))
    elif fault == "nginx":
        (case.stack.work / "nginx-fail").write_text("")

    intents_before = _count(case.journal(), "action_intent", action)
    if action == "stage_canary":
        case.new_version(2)
    elif action in ("promote", "rollback"):
        case.request(action)
    # set_weight and unload_previous start on their own (the rule, the keep time)
    case.wait(lambda: not case.alive() or _count(case.journal(), "action_intent", action)
              > intents_before, f"{action} started")
    _wait_for_the_fault(case, daemon)


def _wait_for_the_fault(case: Case, daemon: DaemonProcess) -> None:
    """A crash or a stop: the process is gone. Otherwise: the action's outcome is journaled,
    or (a full disk) the failpoint fired and the daemon had a moment to hit the wall."""
    if case.fault in ("kill", "term"):
        daemon.proc.wait(timeout=60)
        return
    if case.fault == "disk":
        case.wait(lambda: f"failpoint {case.action}.{case.step}" in daemon.stderr(),
                  "the disk filling up")
        time.sleep(1.0)
        return
    case.wait(lambda: _count(case.journal(), OUTCOMES, case.action) > 0, "an outcome")


def _settle_after_restart(case: Case) -> None:
    """Clear the fault, restart the daemon without failpoints, and wait until every intent has
    its outcome."""
    for flag in (case.stack.work / "nginx-fail", case.stack.work / RELOAD_FAULT_FILE):
        flag.unlink(missing_ok=True)
    assert case.daemon is not None
    if case.alive():
        case.daemon.proc.send_signal(signal.SIGTERM)
        case.daemon.proc.wait(timeout=30)
    case.daemon.close()
    (case.state / "failpoint-fill").unlink(missing_ok=True)
    case.start()
    case.wait(lambda: _unsettled(case.journal()) == [], "every intent settled")


def _check_invariants(case: Case) -> None:
    journal = case.journal()
    # every intent has exactly one outcome; no outcome without its intent
    intents = {e["id"] for e in journal if e["kind"] == "action_intent"}
    outcomes = Counter(e["payload"]["intent_id"] for e in journal if e["kind"] in OUTCOMES)
    assert set(outcomes) == intents and set(outcomes.values()) <= {1}, (journal, outcomes)
    # no action runs twice: the action was carried out (done) once at most, and nothing asks
    # for it again once done, also while the daemon idles on (a failed automatic action may be
    # tried again under a new intent: that is a new attempt, with its own outcome)
    assert _count(journal, "action_intent", case.action) >= 1, journal
    time.sleep(1.5)
    journal = case.journal()
    done = Counter(_key(e) for e in journal if e["kind"] == "action_done")
    assert set(done.values()) <= {1}, done
    for entry in journal:
        if entry["kind"] == "action_intent" and _key(entry) in done:
            first_done = min(e["id"] for e in journal
                             if e["kind"] == "action_done" and _key(e) == _key(entry))
            assert entry["id"] < first_done, ("asked again after it was done", entry)
    if case.fault in ("kill", "term", "hup"):  # nothing failed: the one intent completes
        assert _count(journal, "action_intent", case.action) == 1, journal
        assert _count(journal, "action_done", case.action) == 1, journal
    # labels only on AVAILABLE versions; stable serves
    config = read_config(case.stack.work / "models.config")
    (entry,) = [c for c in config.model_config_list.config if c.name == case.name]
    labels = dict(entry.version_labels)
    states = _states(case.stack.dev.grpc_address, case.name)
    assert "stable" in labels, labels
    assert all(states.get(v) == "AVAILABLE" for v in labels.values()), (labels, states)
    with httpx.Client(timeout=10) as client:
        for label in labels:
            answer = client.post(
                f"{case.stack.dev.rest_url}/v1/models/{case.name}/labels/{label}:predict",
                json={"instances": [2.0]})
            assert answer.status_code == 200, (label, answer.text)
    status = case.status()
    assert status.get("stable_version") == labels["stable"], (status, labels)
    canary = labels.get("canary")  # after a promotion both labels name the new stable
    assert status.get("canary_version") == (None if canary == labels["stable"] else canary), \
        (status, labels)
    # the stable-label watcher never failed
    case.watcher.stop.set()
    case.watcher.join(timeout=10)
    assert case.watcher.calls > 0 and case.watcher.failures == [], case.watcher.failures[:5]


def _states(address: str, model: str) -> dict[int, str]:
    """version -> state name, as the server reports them (GetModelStatus)."""
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            request, timeout=10)
    return {v.version: get_model_status_pb2.ModelVersionStatus.State.Name(v.state)
            for v in response.model_version_status}


def _count(journal: list[dict[str, Any]], kinds: str | tuple[str, ...], action: str) -> int:
    kinds = (kinds,) if isinstance(kinds, str) else kinds
    return sum(1 for e in journal if e["kind"] in kinds and e["payload"].get("action") == action)


def _key(entry: dict[str, Any]) -> str:
    payload = entry["payload"]
    return f"{payload.get('action')} {json.dumps(payload.get('params'), sort_keys=True)}"


def _unsettled(journal: list[dict[str, Any]]) -> list[int]:
    settled = {e["payload"]["intent_id"] for e in journal if e["kind"] in OUTCOMES}
    return [e["id"] for e in journal if e["kind"] == "action_intent" and e["id"] not in settled]

