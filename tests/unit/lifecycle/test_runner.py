"""The lifecycle runner on fakes: adoption, the policy loop, intents and outcomes, failures,
operators' requests, approvals, cancellation that stays pending, and reload in place."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fakes import FakeClock, FakeServer, MemoryStateStore, RecordingRouter
from tfwarden.core.errors import ActionRefused, LeaseLost, StateError
from tfwarden.core.ports import Fence
from tfwarden.core.status import ModelStatus, Phase
from tfwarden.core.types import Finding
from tfwarden.daemon.recorder import Recorder
from tfwarden.daemon.state import EventJournal
from tfwarden.detectors.roles import RoleTracker
from tfwarden.lifecycle.actions import Promote, SetWeight
from tfwarden.lifecycle.alerts import AlertBook
from tfwarden.lifecycle.notifiers.base import Alert
from tfwarden.lifecycle.runner import LifecycleRunner, ManagedModel, pending_key, status_key
from tfwarden.lifecycle.settings import LifecycleSettings
from tfwarden.lifecycle.watcher import VersionWatcher
from tfwarden.policies.engine import PolicyEngine
from tfwarden.policies.rules import RuleSet

RULES = """rules:
  - name: rollback-on-regression
    when:
      status: {phase: [canary_live]}
      any: [{detector: latency, verdict: regression, role: canary}]
    action: rollback
    alert: page
  - name: step
    when:
      status: {phase: [canary_live], weight_below: 100}
      all: [{detector: latency, verdict: ok, role: canary}]
    action: set_weight
    params: {steps: [50, 100]}
  - name: promote
    when:
      status: {phase: [canary_live], weight_at_least: 100}
      all: [{detector: latency, verdict: ok, role: canary}]
    action: promote
    guards: {require_approval: true}
"""


class Findings:
    def __init__(self) -> None:
        self.current: list[Finding] = []

    def findings(self) -> list[Finding]:
        return self.current

    def say(self, verdict: str, version: int) -> None:
        self.current = [Finding("latency", verdict, 0.0, model="m", version=version,
                                target="canary", evidence={"pairs": 500})]


class Sent:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def submit(self, alerts: list[Alert]) -> None:
        self.alerts += alerts


class Harness:
    """A runner for model ``m`` on a FakeServer with versions 1 and 2 loaded."""

    def __init__(self, tmp_path: Path, store: MemoryStateStore | None = None,
                 fence: Fence | None = None) -> None:
        self.clock, self.store = FakeClock(), store or MemoryStateStore()
        self.server = FakeServer(tmp_path / "m", versions={1: "AVAILABLE", 2: "AVAILABLE"})
        for version in (1, 2):
            self.server.add_version_dir(version)
        self.router, self.findings, self.sent, self.roles = RecordingRouter(), Findings(), \
            Sent(), RoleTracker()
        journal = EventJournal(self.store, self.clock, Recorder())
        self.alerts = AlertBook(self.sent, journal, self.clock, {"team": "ml"})
        self.runner = LifecycleRunner(
            {"m": ManagedModel("m", LifecycleSettings(), self.server, self.router, "serving/dev")},
            store=self.store, journal=journal, clock=self.clock, metrics=Recorder(),
            policy=PolicyEngine(RuleSet.model_validate(yaml.safe_load(RULES))),
            findings=self.findings, alerts=self.alerts, listener=self.roles, fence=fence)
        self.watcher = VersionWatcher(self.runner)

    @property
    def status(self) -> ModelStatus:
        return self.runner.statuses["m"]

    def kinds(self) -> list[str]:
        return self.store.kinds()

    async def tick(self) -> None:
        """One policy evaluation, then wait for the actions it started."""
        self.clock.advance(2.0)
        await self.runner.tick()
        await self.runner.settle()


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def test_a_new_model_is_adopted_at_its_highest_available_version(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    run(h.runner.start)
    assert (h.status.phase, h.status.stable_version) == (Phase.STABLE, 2)
    assert h.server.model_labels == {"stable": 2}
    assert h.kinds() == ["lifecycle_adopted"]
    assert h.roles.roles("m") == (2, None)  # the role tracker heard it at once
    assert h.store.get(status_key("m"))["stable_version"] == 2


def test_new_version_canary_steps_then_waits_for_approval(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.server.model_labels = {"stable": 1}

    async def scenario() -> None:
        await h.runner.start()
        h.server.add_version_dir(3)
        await h.watcher.new_versions()
        assert (h.status.phase, h.status.canary_version) == (Phase.CANARY_LIVE, 3)
        assert h.roles.roles("m") == (1, 3) and h.router.applied == [("m", 0)]
        h.findings.say("ok", 3)
        await h.tick()
        await h.tick()
        assert h.status.weight == 100 and h.router.applied[-2:] == [("m", 50), ("m", 100)]
        await h.tick()  # promote needs an approval
        assert h.status.phase == Phase.CANARY_LIVE and "m" in h.runner.approvals
        await h.runner.manual("m", "approve")
        assert (h.status.phase, h.status.stable_version, h.status.previous_good) == \
            (Phase.STABLE, 3, 1)
        assert h.server.model_labels == {"stable": 3, "canary": 3}
        assert h.roles.roles("m") == (3, None)

    run(scenario)
    assert h.kinds() == ["new_version", "action_intent", "action_done",
                         "decision", "action_intent", "action_done",
                         "decision", "action_intent", "action_done",
                         "decision", "awaiting_approval",
                         "action_intent", "action_done", "manual_action"]
    assert h.store.get(pending_key("m")) is None


def test_a_regressing_canary_is_rolled_back_with_an_alert_fired_then_resolved(
        tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.server.model_labels = {"stable": 1, "canary": 2}

    async def scenario() -> None:
        await h.runner.start()
        assert (h.status.phase, h.status.canary_version) == (Phase.CANARY_LIVE, 2)
        h.findings.say("regression", 2)
        await h.tick()

    run(scenario)
    assert (h.status.phase, h.status.stable_version, h.status.rejected) == \
        (Phase.ROLLED_BACK, 1, (2,))
    assert h.server.model_labels == {"stable": 1} and h.server.versions[2] == "END"
    assert h.kinds() == ["decision", "alert", "action_intent", "action_done", "alert"]
    fired, resolved = h.sent.alerts
    assert fired.labels["rule"] == "rollback-on-regression" and fired.labels["team"] == "ml"
    assert fired.ends_at is None and resolved.ends_at is not None


def test_a_failed_action_is_journaled_alerted_and_leaves_the_status(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.server.model_labels = {"stable": 1, "canary": 2}
    h.server.fail_on.add("promote")

    async def scenario() -> None:
        await h.runner.start()
        await h.runner.run("m", Promote(2), "test")

    run(scenario)
    assert (h.status.phase, h.status.canary_version) == (Phase.CANARY_LIVE, 2)
    assert "promote refused" in h.status.last_error
    assert h.kinds() == ["action_intent", "action_failed", "alert"]
    assert h.sent.alerts[0].labels["alertname"] == "TfwardenActionFailed"
    assert h.store.get(pending_key("m")) is None


def test_a_refused_routing_change_fails_the_action(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.server.model_labels = {"stable": 1}

    async def scenario() -> None:
        await h.runner.start()
        h.server.add_version_dir(3)
        h.router.fail = True
        await h.watcher.new_versions()

    run(scenario)
    assert h.status.phase == Phase.STABLE and "routing of 'm' refused" in h.status.last_error
    assert h.kinds()[-2:] == ["action_failed", "alert"]


def test_operators_pause_and_resume_and_refusals_say_why(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.server.model_labels = {"stable": 1, "canary": 2}

    async def scenario() -> None:
        await h.runner.start()
        await h.runner.manual("m", "pause")
        assert (h.status.phase, h.status.paused_from) == (Phase.PAUSED, Phase.CANARY_LIVE)
        with pytest.raises(ActionRefused, match="already paused"):
            await h.runner.manual("m", "pause")
        h.findings.say("regression", 2)
        await h.tick()  # paused: the policy does not see the model
        assert h.status.phase == Phase.PAUSED
        await h.runner.manual("m", "resume")
        assert h.status.phase == Phase.CANARY_LIVE
        with pytest.raises(ActionRefused, match="no decision awaiting approval"):
            await h.runner.manual("m", "approve")

    run(scenario)
    assert h.kinds() == ["action_intent", "action_done", "manual_action",
                         "action_intent", "action_done", "manual_action"]


def test_a_cancelled_action_stays_pending_and_a_restart_finishes_it_once(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.server.model_labels = {"stable": 1, "canary": 2}

    async def stopped_mid_promotion() -> None:
        await h.runner.start()
        moving, blocked = asyncio.Event(), asyncio.Event()
        promote = h.server.promote

        async def hang(model: str, version: int) -> None:
            moving.set()
            await blocked.wait()
            await promote(model, version)

        h.server.promote = hang  # type: ignore[method-assign]
        task = asyncio.get_running_loop().create_task(h.runner.run("m", Promote(2), "test"))
        await asyncio.wait_for(moving.wait(), 30)
        task.cancel()  # SIGTERM during the label move
        await asyncio.gather(task, return_exceptions=True)

    run(stopped_mid_promotion)
    pending = h.store.get(pending_key("m"))
    assert pending is not None and pending["action"] == "promote"
    restarted = Harness(tmp_path, store=h.store)
    restarted.server.model_labels = {"stable": 1, "canary": 2}
    run(restarted.runner.start)
    assert restarted.status.stable_version == 2 and restarted.store.get(pending_key("m")) is None
    outcomes = [e for e in restarted.store.entries(limit=100) if e.kind == "action_done"]
    assert len(outcomes) == 1 and outcomes[0].payload["intent_id"] == pending["intent_id"]


def test_reconfigure_keeps_statuses_approvals_and_policy_memory(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.server.model_labels = {"stable": 1, "canary": 2}

    async def scenario() -> None:
        await h.runner.start()
        h.findings.say("ok", 2)
        await h.tick()
        await h.tick()
        await h.tick()
        assert "m" in h.runner.approvals
        memory = h.runner.policy.memory  # type: ignore[attr-defined]
        fired = dict(memory.last_fired)
        other = FakeServer(tmp_path / "n", versions={4: "AVAILABLE"})
        other.add_version_dir(4)
        to_start = h.runner.reconfigure({
            "m": ManagedModel("m", LifecycleSettings(auto_canary=False), h.server, h.router),
            "n": ManagedModel("n", LifecycleSettings(), other, RecordingRouter())})
        assert to_start == ["n"]
        await h.runner.start(to_start)
        h.runner.policy.reconfigure(h.runner.policy.ruleset, dry_run=False)  # type: ignore[attr-defined]
        assert h.runner.policy.memory is memory and memory.last_fired == fired  # type: ignore[attr-defined]
        assert "m" in h.runner.approvals and h.status.weight == 100
        assert h.runner.statuses["n"].stable_version == 4

    run(scenario)


def test_a_refused_request_touches_nothing_and_says_why(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.server.model_labels = {"stable": 1}

    async def scenario() -> None:
        await h.runner.start()
        h.runner.save(ModelStatus("m", Phase.ROLLING_BACK, stable_version=1))  # a move in flight
        with pytest.raises(ActionRefused, match="cannot go from rolling_back to paused"):
            await h.runner.manual("m", "pause")

    run(scenario)
    assert [c[0] for c in h.server.calls if c[0] != "states"] == [] and h.router.applied == []
    assert "action_intent" not in h.kinds()


def test_a_promoted_version_is_rolled_back_after_a_rejected_canary(tmp_path: Path) -> None:
    h = Harness(tmp_path)  # promoted v2 over v1, then a canary v3 was rolled back
    h.store.put(status_key("m"), ModelStatus(
        "m", Phase.ROLLED_BACK, stable_version=2, previous_good=1, rejected=(3,)).to_json(), 0.0)
    h.server.model_labels = {"stable": 2}

    async def scenario() -> None:
        await h.runner.start()
        await h.runner.manual("m", "rollback")

    run(scenario)
    assert (h.status.phase, h.status.stable_version, h.status.rejected) == \
        (Phase.STABLE, 1, (3, 2))
    assert h.server.model_labels == {"stable": 1}


def test_a_model_that_could_not_start_is_tried_again(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.server.fail_on.add("states")  # the server is down: nothing to adopt

    async def scenario() -> None:
        await h.runner.start()
        assert h.status.stable_version is None and "states refused" in h.status.last_error
        await h.watcher.new_versions()
        assert h.status.stable_version is None
        h.server.fail_on.clear()
        await h.watcher.new_versions()  # the version poll retries the adoption

    run(scenario)
    assert (h.status.phase, h.status.stable_version, h.status.last_error) == (Phase.STABLE, 2, "")


def test_an_unexpected_error_fails_the_action_and_leaves_nothing_pending(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.server.model_labels = {"stable": 1, "canary": 2}

    async def broken(model: str, version: int) -> None:
        raise RuntimeError("config file parse error")

    async def scenario() -> None:
        await h.runner.start()
        h.server.promote = broken  # type: ignore[method-assign]
        await h.runner.run("m", Promote(2), "test")

    run(scenario)
    assert h.status.last_error == "RuntimeError: config file parse error"
    assert h.kinds()[-2:] == ["action_failed", "alert"]
    assert h.store.get(pending_key("m")) is None


def test_an_unreadable_pending_intent_is_failed_once_and_the_model_starts(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.server.model_labels = {"stable": 1}
    h.store.put(pending_key("m"), {"action": "teleport", "params": {}, "origin": "old",
                                   "intent_id": 7}, 0.0)
    run(h.runner.start)
    assert h.status.stable_version == 1 and h.store.get(pending_key("m")) is None
    failed = [e for e in h.store.entries(limit=50) if e.kind == "action_failed"]
    assert len(failed) == 1 and failed[0].payload["intent_id"] == 7


def test_a_step_without_a_canary_is_refused_before_any_routing(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.server.model_labels = {"stable": 1}

    async def scenario() -> None:
        await h.runner.start()
        await h.runner.run("m", SetWeight(50), "test")

    run(scenario)
    assert h.router.applied == [] and "no canary to send traffic to" in h.status.last_error


def test_a_version_that_fails_to_stage_backs_off_and_the_hour_has_a_limit(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.server.model_labels = {"stable": 1}
    h.server.fail_on.add("stage_canary")

    async def polls(seconds: float, every: float = 5.0) -> None:
        for _ in range(int(seconds / every)):
            await h.watcher.new_versions()
            h.clock.advance(every)

    async def scenario() -> None:
        await h.runner.start()
        h.server.add_version_dir(3)
        await polls(60)  # tries at 0, 10 and 30 s (backoff 10, 20, then 40 s)

    run(scenario)
    staged = [c for c in h.server.calls if c[0] == "stage_canary"]
    assert len(staged) == 3 and h.kinds().count("new_version") == 1
    assert h.kinds().count("action_failed") == 3
    # the backoff allows tries at 70, 150, 310, 630, 1270, 2550 s; the hourly limit (6) holds
    # back those at 630-2550 s until the try at 0 s is an hour old: 7 tries by 3660 s
    run(lambda: polls(3600, every=10))
    assert len([c for c in h.server.calls if c[0] == "stage_canary"]) == 7


class FullDiskStore(MemoryStateStore):
    """A store whose writes fail (ENOSPC) once ``full`` is set, as SQLite's would."""

    def __init__(self) -> None:
        super().__init__()
        self.full = False

    def put(self, key: str, value: Any, t: float) -> None:
        if self.full:
            raise StateError("state.db: database or disk is full")
        super().put(key, value, t)


def test_a_full_disk_refuses_the_action_before_anything_moves(tmp_path: Path) -> None:
    store = FullDiskStore()
    h = Harness(tmp_path, store=store)
    h.server.model_labels = {"stable": 1, "canary": 2}

    async def scenario() -> None:
        await h.runner.start()
        store.full = True
        with pytest.raises(StateError, match="disk is full"):
            await h.runner.run("m", Promote(2), "test")

    run(scenario)
    assert "action_intent" not in h.kinds()  # the intent went with its pending marker
    assert h.server.model_labels == {"stable": 1, "canary": 2} and h.router.applied == []
    assert not [call for call in h.server.calls if call[0] == "promote"]
    assert [a.labels["alertname"] for a in h.sent.alerts] == ["TfwardenActionFailed"]
    store.full = False
    assert h.store.get(pending_key("m")) is None


def test_an_outcome_that_cannot_be_kept_leaves_the_intent_pending_for_one_outcome(
        tmp_path: Path) -> None:
    store = FullDiskStore()
    h = Harness(tmp_path, store=store)
    h.server.model_labels = {"stable": 1, "canary": 2}

    async def scenario() -> None:
        await h.runner.start()
        promote = h.server.promote

        async def promote_then_fill_the_disk(model: str, version: int) -> None:
            await promote(model, version)
            store.full = True

        h.server.promote = promote_then_fill_the_disk  # type: ignore[method-assign]
        with pytest.raises(StateError):
            await h.runner.run("m", Promote(2), "test")

    run(scenario)
    assert "action_done" not in h.kinds()  # not journaled without its cleared marker
    store.full = False
    pending = h.store.get(pending_key("m"))
    assert pending is not None and pending["action"] == "promote"
    restarted = Harness(tmp_path, store=store)
    restarted.server.model_labels = dict(h.server.model_labels)
    run(restarted.runner.start)
    outcomes = [e for e in store.entries(limit=100) if e.kind == "action_done"]
    assert len(outcomes) == 1 and outcomes[0].payload["intent_id"] == pending["intent_id"]
    assert restarted.status.stable_version == 2 and store.get(pending_key("m")) is None


def test_an_outcome_the_store_could_not_take_is_completed_once_it_can(tmp_path: Path) -> None:
    """No restart needed (a PostgreSQL that was away comes back): the policy loop completes
    the pending intent, and nothing else starts on the model meanwhile."""
    store = FullDiskStore()
    h = Harness(tmp_path, store=store)
    h.server.model_labels = {"stable": 1, "canary": 2}

    async def scenario() -> None:
        await h.runner.start()
        promote = h.server.promote

        async def promote_then_lose_the_store(model: str, version: int) -> None:
            await promote(model, version)
            store.full = True

        h.server.promote = promote_then_lose_the_store  # type: ignore[method-assign]
        with pytest.raises(StateError):
            await h.runner.run("m", Promote(2), "test")
        h.server.promote = promote  # type: ignore[method-assign]
        assert h.runner.busy("m")  # the policy and the watcher leave it alone
        await h.tick()  # still away: stays pending
        assert "action_done" not in h.kinds()
        store.full = False
        await h.tick()

    run(scenario)
    outcomes = [e for e in store.entries(limit=100) if e.kind == "action_done"]
    intents = [e for e in store.entries(limit=100) if e.kind == "action_intent"]
    assert len(intents) == 1 and len(outcomes) == 1
    assert outcomes[0].payload["intent_id"] == intents[0].id
    assert h.status.stable_version == 2 and store.get(pending_key("m")) is None
    assert not h.runner.busy("m")


class Switch:
    """A fence whose lease the test takes away."""

    def __init__(self) -> None:
        self.held = True
        self.checks: list[str] = []

    def may_act(self, unit: str) -> bool:
        return self.held

    def check(self, unit: str) -> None:
        self.checks.append(unit)
        if not self.held:
            raise LeaseLost(f"unit {unit!r}: replica 'r1' (token 1) is fenced off: replica 'r2' "
                            "holds it with token 2")


def test_without_the_lease_nothing_is_journaled_and_nothing_moves(tmp_path: Path) -> None:
    fence = Switch()
    h = Harness(tmp_path, fence=fence)
    h.server.model_labels = {"stable": 1, "canary": 2}

    async def scenario() -> None:
        await h.runner.start()
        fence.held = False
        with pytest.raises(LeaseLost):
            await h.runner.run("m", Promote(2), "test")

    run(scenario)
    assert "action_intent" not in h.kinds() and h.store.get(pending_key("m")) is None
    assert not [c for c in h.server.calls if c[0] == "promote"] and h.router.applied == []
    assert fence.checks == ["serving/dev"]
    assert h.sent.alerts == []  # another replica's unit is no failure to page for


def test_a_lease_lost_mid_action_leaves_the_intent_to_the_new_owner(tmp_path: Path) -> None:
    fence = Switch()
    h = Harness(tmp_path, fence=fence)
    h.server.model_labels = {"stable": 1, "canary": 2}

    async def scenario() -> None:
        await h.runner.start()
        promote = h.server.promote

        async def promote_then_lose_the_lease(model: str, version: int) -> None:
            await promote(model, version)
            fence.held = False  # paused past the lease right after the server moved

        h.server.promote = promote_then_lose_the_lease  # type: ignore[method-assign]
        await h.runner.run("m", Promote(2), "test")

    run(scenario)
    assert "action_done" not in h.kinds() and "action_failed" not in h.kinds()
    pending = h.store.get(pending_key("m"))
    assert pending is not None and pending["action"] == "promote"
    owner = Harness(tmp_path, store=h.store, fence=Switch())  # the new owner takes it over
    owner.server.model_labels = dict(h.server.model_labels)
    run(owner.runner.start)
    outcomes = [e for e in h.store.entries(limit=100) if e.kind == "action_done"]
    assert len(outcomes) == 1 and outcomes[0].payload["intent_id"] == pending["intent_id"]


def test_a_reload_that_drops_the_model_mid_action_still_journals_its_outcome(
        tmp_path: Path) -> None:
    fence = Switch()
    h = Harness(tmp_path, fence=fence)
    h.server.model_labels = {"stable": 1, "canary": 2}

    async def scenario() -> None:
        await h.runner.start()
        promote = h.server.promote

        async def promote_then_reload(model: str, version: int) -> None:
            h.runner.reconfigure({})  # the model left the configuration meanwhile
            await promote(model, version)

        h.server.promote = promote_then_reload  # type: ignore[method-assign]
        await h.runner.run("m", Promote(2), "test")

    run(scenario)
    assert h.kinds().count("action_done") == 1 and h.store.get(pending_key("m")) is None


def test_a_pause_waits_for_the_running_action_and_is_not_overwritten(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.server.model_labels = {"stable": 1, "canary": 2}

    async def scenario() -> None:
        await h.runner.start()
        applying, release = asyncio.Event(), asyncio.Event()
        apply = h.router.apply

        async def slow_apply(model: str, weight: int) -> None:
            applying.set()
            await release.wait()
            await apply(model, weight)

        h.router.apply = slow_apply  # type: ignore[method-assign]
        step = asyncio.get_running_loop().create_task(h.runner.run("m", SetWeight(50), "rule"))
        await asyncio.wait_for(applying.wait(), 30)  # the step holds the model's lock
        pause = asyncio.get_running_loop().create_task(h.runner.manual("m", "pause"))
        await asyncio.sleep(0.01)
        assert not pause.done()  # the operator's request waits for the model's lock
        release.set()
        await asyncio.gather(step, pause)

    run(scenario)
    assert (h.status.phase, h.status.weight) == (Phase.PAUSED, 50)
    assert h.store.get(status_key("m"))["phase"] == "paused"


def test_the_previous_version_is_unloaded_once_as_an_action_after_the_keep_time(
        tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.server.model_labels = {"stable": 1, "canary": 2}

    async def scenario() -> None:
        await h.runner.start()
        await h.runner.manual("m", "promote")
        await h.watcher.unload_previous()  # too early: version 1 stays for a rollback
        assert h.server.versions.get(1) == "AVAILABLE" and h.status.previous_good == 1
        h.clock.advance(LifecycleSettings().keep_previous_seconds + 1)
        await h.watcher.unload_previous()
        await h.watcher.unload_previous()  # nothing left to unload

    run(scenario)
    assert h.server.versions[1] == "END" and h.server.model_labels == {"stable": 2}
    assert [c[0] for c in h.server.calls].count("set_labels") == 1
    assert h.status.previous_good is None and h.store.get(pending_key("m")) is None
    unloads = [e for e in h.store.entries(limit=100) if e.payload.get("action") == "unload_previous"]
    assert [e.kind for e in unloads] == ["action_intent", "action_done"]
