"""Staged edge rollouts on fakes: the transition table, the policy, sticky assignment, and the
runner (adoption from published manifests, auto start, intent then outcome, a cohort pinned
while the rollout goes on, rollback for everyone past the pin limit, a restart that finishes an
interrupted action once, operators' refusals that journal nothing)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.fakes import FakeClock, MemoryStateStore
from tfwarden.core.errors import ActionRefused, LifecycleError
from tfwarden.core.types import INCONCLUSIVE, OK, REGRESSION, Finding
from tfwarden.daemon.recorder import Recorder
from tfwarden.daemon.state import EventJournal
from tfwarden.lifecycle import edge
from tfwarden.lifecycle.alerts import AlertBook
from tfwarden.lifecycle.edge import (
    Advance,
    EdgePhase,
    EdgeRollout,
    EdgeRolloutSettings,
    Halt,
    ResumeRollout,
    RollbackAll,
    RollbackCohort,
    StartRollout,
    Unpin,
)
from tfwarden.lifecycle.edgerunner import EdgeModel, EdgeRolloutRunner, pending_key, rollout_key
from tfwarden.lifecycle.notifiers.base import Alert

SETTINGS = EdgeRolloutSettings(steps=[5, 50, 100], min_step_seconds=60, min_devices=10,
                               max_pinned_cohorts=2)


def finding(verdict: str, cohort: str, version: int = 2) -> Finding:
    return Finding("edge_latency", verdict, 0.0, model="digits", version=version, target=cohort,
                   reason=f"cohort {cohort}: inference time 2.00x")


def rolling(**changes: object) -> EdgeRollout:
    status = edge.outcome(StartRollout(2), EdgeRollout("digits", current=1), SETTINGS, 100.0)
    return EdgeRollout.from_json({**status.to_json(), **changes})


# -- the table -----------------------------------------------------------------------------------
def test_a_rollout_steps_through_its_percentages_and_completes() -> None:
    status = rolling()
    assert (status.phase, status.candidate, status.percent) == (EdgePhase.ROLLING_OUT, 2, 5)
    status = edge.outcome(Advance(), status, SETTINGS, 200.0, devices=30)
    assert (status.percent, status.step, status.step_devices) == (50, 1, 30)
    status = edge.outcome(Advance(), status, SETTINGS, 300.0)
    status = edge.outcome(Advance(), status, SETTINGS, 400.0)
    assert (status.phase, status.current, status.candidate, status.percent) == \
        (EdgePhase.IDLE, 2, None, 0)


def test_halt_resume_rollback_pin_and_unpin() -> None:
    status = edge.outcome(Halt("looks odd"), rolling(), SETTINGS, 200.0)
    assert status.phase == EdgePhase.HALTED and status.percent == 5
    status = edge.outcome(ResumeRollout(), status, SETTINGS, 300.0)
    status = edge.outcome(RollbackCohort("gpu"), status, SETTINGS, 300.0)
    assert status.pinned == {"gpu": 1} and status.phase == EdgePhase.ROLLING_OUT
    status = edge.outcome(RollbackAll(), status, SETTINGS, 400.0)
    assert (status.phase, status.candidate, status.rejected) == (EdgePhase.ROLLED_BACK, None, (2,))
    status = edge.outcome(Unpin("gpu"), status, SETTINGS, 500.0)
    assert status.pinned == {}


@pytest.mark.parametrize(("action", "status"), [
    (Advance(), EdgeRollout("digits", current=1)),
    (ResumeRollout(), rolling()),
    (StartRollout(3), rolling()),
    (StartRollout(1), EdgeRollout("digits", current=1)),
    (Unpin("never-pinned"), rolling()),
])
def test_actions_that_do_not_apply_are_refused(action: edge.EdgeAction, status: EdgeRollout) -> None:
    with pytest.raises(LifecycleError):
        edge.outcome(action, status, SETTINGS, 0.0)


def test_steps_must_climb_to_100() -> None:
    for steps in ([5, 50], [50, 5, 100], [0, 100], [5, 5, 100]):
        with pytest.raises(ValidationError, match="steps must be increasing"):
            EdgeRolloutSettings(steps=steps)


def test_journaled_actions_read_back_and_bad_ones_are_named() -> None:
    assert edge.edge_action_from("rollback_cohort", {"cohort": "gpu"}) == RollbackCohort("gpu")
    assert edge.edge_action_from("start", {"version": "3"}) == StartRollout(3)
    with pytest.raises(ActionRefused, match="unknown edge action 'explode'"):
        edge.edge_action_from("explode", {})
    with pytest.raises(ActionRefused, match="rollback_cohort: parameters"):
        edge.edge_action_from("rollback_cohort", {"cohort": 7})


# -- the policy ----------------------------------------------------------------------------------
def test_a_regressing_cohort_is_pinned_and_past_the_limit_everyone_rolls_back() -> None:
    findings = [finding(OK, "cpu"), finding(REGRESSION, "gpu")]
    assert edge.decide(rolling(), findings, SETTINGS, 50, 1000.0) == \
        RollbackCohort("gpu", "edge_latency: cohort gpu: inference time 2.00x")
    pinned = rolling(pinned={"gpu": 1, "npu": 1})
    findings.append(finding(REGRESSION, "wasm"))
    assert isinstance(edge.decide(pinned, findings, SETTINGS, 50, 1000.0), RollbackAll)
    halt = SETTINGS.model_copy(update={"on_regression": "halt"})
    assert isinstance(edge.decide(rolling(), findings, halt, 50, 1000.0), Halt)


def test_a_step_advances_after_its_time_and_its_devices_and_thin_cohorts_hold_nothing() -> None:
    status = rolling()  # step began at t=100 with 0 devices
    thin = [finding(INCONCLUSIVE, "rare"), finding(OK, "cpu")]
    assert edge.decide(status, thin, SETTINGS, 9, 1000.0) is None  # too few devices
    assert edge.decide(status, thin, SETTINGS, 10, 150.0) is None  # too early
    assert edge.decide(status, thin, SETTINGS, 10, 160.0) == Advance()
    stale = [finding(REGRESSION, "gpu", version=7)]  # another version's finding: not ours
    assert edge.decide(status, stale, SETTINGS, 10, 160.0) == Advance()
    pinned = rolling(pinned={"gpu": 1})  # a pinned cohort's regression is handled already
    assert edge.decide(pinned, [finding(REGRESSION, "gpu")], SETTINGS, 10, 160.0) == Advance()


# -- assignment ----------------------------------------------------------------------------------
def test_assignment_is_sticky_as_the_share_grows_and_pins_win() -> None:
    devices = [f"device-{i}" for i in range(10_000)]
    buckets = {d: edge.bucket("digits", d) for d in devices}
    five = rolling()
    fifty = edge.outcome(Advance(), five, SETTINGS, 200.0)
    on_5 = {d for d in devices if edge.assign(five, "cpu", buckets[d])[0] == 2}
    on_50 = {d for d in devices if edge.assign(fifty, "cpu", buckets[d])[0] == 2}
    assert 400 < len(on_5) < 600 and 4700 < len(on_50) < 5300
    assert on_5 <= on_50  # nobody on the candidate goes back as the rollout grows
    pinned = edge.outcome(RollbackCohort("cpu"), fifty, SETTINGS, 300.0)
    assert {edge.assign(pinned, "cpu", buckets[d])[0] for d in devices} == {1}
    assert edge.bucket("digits", "device-1") != edge.bucket("other-model", "device-1") or \
        edge.bucket("digits", "device-2") != edge.bucket("other-model", "device-2")


# -- the runner ----------------------------------------------------------------------------------
class Verdicts:
    def __init__(self) -> None:
        self.current: list[Finding] = []
        self.devices = 0
        self.told: list[tuple[str, int | None, int | None]] = []

    def findings(self, model: str, now: float) -> list[Finding]:
        return self.current

    def candidate_devices(self, model: str) -> int:
        return self.devices

    def rollout_changed(self, model: str, current: int | None, candidate: int | None) -> None:
        self.told.append((model, current, candidate))


class Sent:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def submit(self, alerts: list[Alert]) -> None:
        self.alerts += alerts


def publish(base: Path, version: int) -> None:
    directory = base / str(version)
    directory.mkdir(parents=True)
    (directory / "model.tflite").write_bytes(b"tflite" * version)
    (directory / "manifest.json").write_text(json.dumps({
        "file": "model.tflite", "sha256": f"{version:064x}", "size_bytes": 6 * version}))


class Harness:
    def __init__(self, tmp_path: Path, store: MemoryStateStore | None = None) -> None:
        self.base = tmp_path / "digits"
        self.clock, self.store = FakeClock(), store or MemoryStateStore()
        self.verdicts, self.sent = Verdicts(), Sent()
        journal = EventJournal(self.store, self.clock, Recorder())
        self.runner = EdgeRolloutRunner(
            {"digits": EdgeModel("digits", SETTINGS, self.base, "/files/{model}/{version}/{file}")},
            store=self.store, journal=journal, clock=self.clock, metrics=Recorder(),
            verdicts=self.verdicts, alerts=AlertBook(self.sent, journal, self.clock),
            listener=self.verdicts)

    @property
    def status(self) -> EdgeRollout:
        return self.runner.statuses["digits"]

    def tick(self, seconds: float = 2.0) -> None:
        self.clock.advance(seconds)
        asyncio.run(self.runner.tick())


def test_the_runner_adopts_starts_pins_a_cohort_and_completes(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    publish(h.base, 1)
    asyncio.run(h.runner.start())
    assert (h.status.current, h.status.phase) == (1, EdgePhase.IDLE)
    publish(h.base, 2)
    h.tick()
    assert (h.status.candidate, h.status.percent) == (2, 5)
    assert h.verdicts.told[-1] == ("digits", 1, 2)
    h.verdicts.current = [finding(REGRESSION, "gpu")]
    h.tick()
    assert h.status.pinned == {"gpu": 1} and h.status.phase == EdgePhase.ROLLING_OUT
    assert h.sent.alerts[-1].labels["action"] == "rollback_cohort"
    assert h.sent.alerts[-1].labels["severity"] == "page"
    gpu = h.runner.assignment("digits", "any-device", "gpu")
    assert (gpu["version"], gpu["url"], gpu["size_bytes"]) == (1, "/files/digits/1/model.tflite", 6)
    for devices in (10, 15, 20, 30):  # each step needs 10 new candidate devices
        h.verdicts.devices = devices
        h.tick(61)
    assert h.status.candidate is None
    assert (h.status.current, h.status.candidate, h.status.pinned) == (2, None, {"gpu": 1})
    assert h.runner.assignment("digits", "any-device", "cpu")["version"] == 2
    assert h.runner.assignment("digits", "any-device", "gpu")["version"] == 1
    kinds = h.store.kinds()
    assert kinds.count("edge_action_intent") == kinds.count("edge_action_done") == 5
    done = [e for e in h.store.entries(kind="edge_action_done")]
    assert done[1].payload["action"] == "rollback_cohort"
    assert done[1].payload["findings"][0]["target"] == "gpu"


def test_past_the_pin_limit_it_rolls_back_for_everyone_and_never_restarts_that_version(
        tmp_path: Path) -> None:
    h = Harness(tmp_path)
    publish(h.base, 1)
    asyncio.run(h.runner.start())
    publish(h.base, 2)
    h.tick()
    for cohort in ("a", "b", "c"):
        h.verdicts.current = [finding(REGRESSION, cohort)]
        h.tick()
    assert (h.status.phase, h.status.pinned, h.status.rejected) == \
        (EdgePhase.ROLLED_BACK, {"a": 1, "b": 1}, (2,))
    h.tick()
    assert h.status.phase == EdgePhase.ROLLED_BACK  # v2 is not offered again
    assert h.runner.assignment("digits", "x", "c")["version"] == 1


def test_a_restart_finishes_an_interrupted_action_once(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    publish(h.base, 1)
    publish(h.base, 2)
    asyncio.run(h.runner.start())
    assert h.status.current == 2
    # a daemon that died between the intent and the outcome of a pin
    h.store.put(rollout_key("digits"), rolling().to_json(), 0.0)
    h.store.put(pending_key("digits"), {"model": "digits", "action": "rollback_cohort",
                                        "params": {"cohort": "gpu"}, "origin": "policy",
                                        "intent_id": 99}, 0.0)
    again = Harness(tmp_path, h.store)
    asyncio.run(again.runner.start())
    assert again.status.pinned == {"gpu": 1}
    assert h.store.get(pending_key("digits")) is None
    assert [e.payload["intent_id"] for e in h.store.entries(kind="edge_action_done")] == [99]


def test_operators_requests_that_do_not_apply_journal_nothing(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    publish(h.base, 1)
    asyncio.run(h.runner.start())
    before = h.store.kinds()
    with pytest.raises(ActionRefused, match="no published version 5"):
        asyncio.run(h.runner.manual("digits", "start", {"version": 5}))
    with pytest.raises(ActionRefused, match="advance does not apply while idle"):
        asyncio.run(h.runner.manual("digits", "advance", {}))
    assert h.store.kinds() == before
    publish(h.base, 2)
    settings = h.runner.models["digits"].settings.model_copy(update={"auto_start": False})
    h.runner.models["digits"] = EdgeModel("digits", settings, h.base, "/{file}")
    h.tick()
    assert h.status.phase == EdgePhase.IDLE  # auto_start off
    answer = asyncio.run(h.runner.manual("digits", "start", {"version": 2}))
    assert answer["candidate"] == 2 and answer["percent"] == 5


def test_a_cohort_an_operator_unpins_is_not_pinned_again_in_this_rollout(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    publish(h.base, 1)
    asyncio.run(h.runner.start())
    publish(h.base, 2)
    h.tick()
    h.verdicts.current = [finding(REGRESSION, "gpu")]
    h.tick()
    assert h.status.pinned == {"gpu": 1}
    asyncio.run(h.runner.manual("digits", "unpin", {"cohort": "gpu"}))
    h.tick()  # the finding still stands: the operator's word wins for this rollout
    assert h.status.pinned == {} and h.status.overridden == ("gpu",)


def test_a_model_with_nothing_published_at_start_adopts_its_first_version(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    asyncio.run(h.runner.start())
    assert h.status.current is None
    publish(h.base, 1)
    h.tick()
    assert h.status.current == 1 and h.status.phase == EdgePhase.IDLE
    publish(h.base, 2)
    h.tick()
    assert h.status.candidate == 2


def test_versions_must_be_positive_integers_and_odd_directories_are_ignored(tmp_path: Path) -> None:
    for bad in (1e999, True, 2.5, -1, "²", "x"):
        with pytest.raises(ActionRefused, match="start: parameters"):
            edge.edge_action_from("start", {"version": bad})
    h = Harness(tmp_path)
    publish(h.base, 1)
    (h.base / "²").mkdir()
    (h.base / "²" / "manifest.json").write_text("{}")
    asyncio.run(h.runner.start())
    assert sorted(h.runner.manifests["digits"]) == [1]
