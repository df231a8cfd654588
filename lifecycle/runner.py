"""Turns decisions and operators' requests into actions, journaled as intent then outcome.

Per managed model (a model config file on its endpoint and ``lifecycle.enabled``):
- the status (phase, versions, weight) lives in the state store and survives restarts; each
  change is told to the listener (the detectors' role tracker) at once;
- every ``POLICY_SECONDS`` the policy decides on the current findings; actions run one at a time
  per model (a lock), unless they are dry runs or wait for an approval;
- before an action runs, its intent is journaled and kept as ``pending`` (one transaction);
  after it, the outcome is journaled, the status saved and the pending intent cleared (one
  transaction). A daemon killed (or stopped) in between finds the pending intent at start-up and
  completes it (every action drives the server to a target plan, so running it again is safe),
  journaling the outcome once.
- with replicas (``daemon.leases``) a model belongs to a unit whose lease only one replica
  holds: the policy acts only while the lease is confirmed, and the lease's fencing token is
  checked in the intent's transaction, before the server is touched (and before each config
  write: ``serving.tfserving.controller``) and in the outcome's transaction. A replica fenced
  off (it was paused past its TTL) moves nothing and journals no outcome: the intent stays
  pending for the unit's new owner, which completes it.
``reconfigure`` keeps statuses, pending approvals, decision history and in-flight actions.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, replace
from typing import Any

from tfwarden.core import failpoints, trace
from tfwarden.core.clock import Clock
from tfwarden.core.errors import (
    ActionRefused,
    LeaseLost,
    LifecycleError,
    ServingError,
    StateError,
    TfwardenError,
)
from tfwarden.core.events import (
    ActionDone,
    ActionFailed,
    ActionIntended,
    ApprovalRequested,
    DecisionTaken,
    ModelAdopted,
    OperatorActed,
)
from tfwarden.core.ports import (
    Fence,
    FindingSource,
    Journal,
    KeyValueStore,
    LifecycleMetrics,
    Policy,
    StatusListener,
)
from tfwarden.core.status import ModelStatus, Phase
from tfwarden.core.types import Decision
from tfwarden.lifecycle import reconcile
from tfwarden.lifecycle.actions import Action, action_from
from tfwarden.lifecycle.alerts import AlertBook
from tfwarden.lifecycle.effects import ModelServer, carry_out
from tfwarden.lifecycle.reoptimize import Reoptimizer
from tfwarden.lifecycle.routers.base import Router
from tfwarden.lifecycle.settings import LifecycleSettings

log = logging.getLogger("tfwarden.lifecycle")
POLICY_SECONDS = 2.0
DECISION_HISTORY = 20
NOT_MOVING = ("alert", "resolve_alert", "hold")


@dataclass(frozen=True)
class ManagedModel:
    """A model whose lifecycle tfwarden runs: its settings, server and router."""

    name: str
    settings: LifecycleSettings
    server: ModelServer
    router: Router
    unit: str = ""  # its unit of ownership (``daemon.leases``)


def status_key(model: str) -> str:
    return f"lifecycle/{model}/status"


def pending_key(model: str) -> str:
    return f"lifecycle/{model}/pending"


class LifecycleRunner:
    def __init__(self, models: Mapping[str, ManagedModel], *, store: KeyValueStore,
                 journal: Journal, clock: Clock, metrics: LifecycleMetrics, policy: Policy,
                 findings: FindingSource, alerts: AlertBook,
                 listener: StatusListener | None = None,
                 reoptimizer: Reoptimizer | None = None, fence: Fence | None = None) -> None:
        self.models = dict(models)
        self.store, self.journal, self.clock, self.metrics = store, journal, clock, metrics
        self.policy, self.findings, self.alerts = policy, findings, alerts
        self.listener, self.reoptimizer, self.fence = listener, reoptimizer, fence
        self.statuses: dict[str, ModelStatus] = {}
        self.approvals: dict[str, Decision] = {}
        self.decisions: dict[str, deque[dict[str, Any]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stranded: set[str] = set()  # an outcome the store could not take: pending, retried
        if reoptimizer is not None:
            reoptimizer.fence = self.check_lease

    def lock(self, model: str) -> asyncio.Lock:
        return self._locks.setdefault(model, asyncio.Lock())

    def busy(self, model: str) -> bool:
        """An action runs (or waits to be completed), or a reoptimization of it runs."""
        return self.lock(model).locked() or model in self._stranded or (
            self.reoptimizer is not None and self.reoptimizer.running(model))

    def may_act(self, model: str) -> bool:
        """This replica holds the lease of the model's unit (always, without replicas)."""
        managed = self.models.get(model)
        return self.fence is None or (managed is not None and self.fence.may_act(managed.unit))

    def check_lease(self, model: str, unit: str | None = None) -> None:
        """LeaseLost unless this replica's fencing token still holds ``unit`` (by default the
        model's; an action passes the one it started under, which a reload cannot change)."""
        if self.fence is None:
            return
        if unit is None:
            managed = self.models.get(model)
            if managed is None:
                raise LeaseLost(f"model {model!r} is not run by this replica")
            unit = managed.unit
        self.fence.check(unit)

    # -- start-up: adopt or resume ---------------------------------------------------------
    async def start(self, names: list[str] | None = None) -> None:
        """Adopt or resume each model (and finish an interrupted action); a model that cannot
        start keeps the error as its status and is tried again by ``retry_unstarted``."""
        for name in names if names is not None else list(self.models):
            try:
                await self._resume(name)
            except Exception as exc:  # one model must not keep the others from starting
                log.error("model %s: lifecycle not started: %s", name, exc)
                self.statuses[name] = ModelStatus(name, last_error=str(exc), since=self.clock.now())

    def unstarted(self) -> list[str]:
        return [name for name in self.models
                if (status := self.statuses.get(name)) is None or status.stable_version is None]

    async def retry_unstarted(self) -> None:
        """Try again to adopt the models that could not start (the server was down...)."""
        await self.start(self.unstarted())

    async def _resume(self, name: str) -> None:
        stored = self.store.get(status_key(name))
        self.save(ModelStatus.from_json(stored) if stored is not None else await self._adopt(
            self.models[name]))
        if self.reoptimizer is not None:
            self.reoptimizer.resume(name, self.models[name].server)
        if not await self._complete_pending(name, "a restart"):
            await self.apply_routing(name)

    async def _complete_pending(self, name: str, cause: str) -> bool:
        """Run again the action left pending (by a crash, a stop, a fenced-off replica, or an
        outcome the store could not take); False when nothing is pending."""
        pending = self.store.get(pending_key(name))
        self._stranded.discard(name)
        if pending is None:
            return False
        log.warning("model %s: completing %s interrupted by %s", name, pending["action"], cause)
        try:
            action = action_from(pending["action"], pending["params"])
        except ActionRefused as exc:  # a pending record this version cannot read: say so once
            with self.store.transaction():
                self._failed(name, pending["action"], pending["intent_id"], str(exc))
                self.store.put(pending_key(name), None, self.clock.now())
            return True
        await self.run(name, action, pending["origin"], intent_id=pending["intent_id"])
        return True

    async def apply_routing(self, name: str) -> None:
        """Write the nginx routing for the current weight (nginx routes and mirrors from the
        start and after a reload, not only after the first canary step)."""
        managed, status = self.models.get(name), self.statuses.get(name)
        if managed is None or status is None or managed.router.name != "nginx":
            return
        try:
            await managed.router.apply(name, status.weight if status.canary_version else 0)
        except TfwardenError as exc:
            log.error("model %s: nginx routing not written: %s", name, exc)

    async def _adopt(self, managed: ManagedModel) -> ModelStatus:
        """A model seen for the first time: its ``stable`` label, or the highest AVAILABLE
        version labelled stable now."""
        name, server = managed.name, managed.server
        labels = server.labels(name)
        stable = labels.get("stable")
        if stable is None:
            available = [v for v, (state, _) in (await server.states(name)).items()
                         if state == "AVAILABLE"]
            if not available:
                raise ServingError(f"model {name!r} has no AVAILABLE version to adopt")
            stable = max(available)
            await server.set_labels(name, {"stable": stable}, keep=(stable,))
            self.journal.record(ModelAdopted(name, stable))
        status = ModelStatus(name, stable_version=stable, since=self.clock.now())
        canary = labels.get("canary")
        if canary is not None and canary != stable:
            status = replace(status, phase=Phase.CANARY_LIVE, canary_version=canary)
        return status

    def save(self, status: ModelStatus) -> None:
        """Persist a model's new status; keep, export and announce it while the model is
        managed (an action that outlived a reload removing its model only persists)."""
        self.store.put(status_key(status.model), status.to_json(), self.clock.now())
        if status.model not in self.models:
            return
        self.statuses[status.model] = status
        self.metrics.model_phase(status.model, status.phase.value, status.weight)
        if self.listener is not None:
            self.listener.status_changed(status)

    # -- the policy loop -------------------------------------------------------------------
    async def tick(self) -> None:
        for name in [m for m in self._stranded if m in self.models and self.may_act(m)
                     and not self.lock(m).locked()]:
            self._spawn(self._retry(name))
        now = self.clock.now()
        statuses = {m: s for m, s in self.statuses.items()
                    if m in self.models and s.phase != Phase.PAUSED and not self.busy(m)
                    and self.may_act(m)}
        for decision in self.policy.decide(self.findings.findings(), statuses, now):
            self.handle(decision)

    def handle(self, decision: Decision) -> None:
        """Journal a decision, alert on it, and act on it (unless a dry run or awaiting an
        approval)."""
        self._record(decision)
        model = decision.model
        if decision.alert:
            self.alerts.decided(decision, self.statuses[model].canary_version)
        if decision.action in NOT_MOVING or decision.dry_run:
            return
        if decision.needs_approval:
            self.approvals[model] = decision
            self.journal.record(ApprovalRequested(decision))
            return
        self._act(decision, f"rule {decision.rule}")

    def _act(self, decision: Decision, origin: str) -> None:
        model = decision.model
        if not self.may_act(model):
            log.warning("model %s: %s held: this replica's lease is not confirmed", model,
                        decision.action)
            return
        if decision.action == "reoptimize":
            self._spawn(self._reoptimize(model, dict(decision.params), origin))
            return
        action = reconcile.decide(decision, self.statuses[model])
        if action is not None:
            self._spawn(self.run(model, action, origin))

    def _record(self, decision: Decision) -> None:
        entry = decision.to_json()
        with trace.span("policy.decision", model=decision.model, rule=decision.rule,
                        action=decision.action, params=dict(decision.params),
                        reason=decision.reason, dry_run=decision.dry_run,
                        needs_approval=decision.needs_approval,
                        findings=[f"{f['detector']}:{f['target']}:{f['verdict']}"
                                  for f in decision.findings]):
            pass
        self.journal.record(DecisionTaken(decision))
        self.decisions.setdefault(decision.model, deque(maxlen=DECISION_HISTORY)).append(entry)
        self.metrics.decision(decision.model, decision.action, decision.dry_run)
        log.info("decision %s for %s: %s %s (%s)%s", decision.rule, decision.model,
                 decision.action, dict(decision.params), decision.reason,
                 " [dry run]" if decision.dry_run else "")

    async def _retry(self, name: str) -> None:
        try:
            await self._complete_pending(name, "a state store that could not take its outcome")
        except StateError as exc:  # still away: stays stranded, tried at the next tick
            self._stranded.add(name)
            log.error("model %s: pending action not completed yet: %s", name, exc)

    async def _reoptimize(self, model: str, params: dict[str, Any], origin: str) -> None:
        if self.reoptimizer is None:
            return
        await self.reoptimizer.run(model, self.statuses[model].stable_version,
                                   self.models[model].server, params, origin)

    # -- operators -------------------------------------------------------------------------
    async def manual(self, model: str, request: str) -> dict[str, Any]:
        """An operator's request from the API (``rollback``, ``promote``, ``pause``,
        ``resume``, ``approve``); KeyError for an unknown model, ActionRefused when the request
        does not apply."""
        status = self.statuses[model]
        if request == "approve":
            decision = self.approvals.pop(model, None)
            if decision is None:
                raise ActionRefused(f"model {model!r} has no decision awaiting approval")
            if decision.action == "reoptimize":
                self._act(decision, f"approved {decision.rule}")
            elif (action := reconcile.decide(decision, status)) is not None:
                await self.run(model, action, f"approved {decision.rule}")
        else:
            action = reconcile.request(request, status)
            try:  # refused at once (409), before any intent is journaled
                reconcile.outcome(action, status, self.clock.now())
            except LifecycleError as exc:
                raise ActionRefused(str(exc)) from None
            await self.run(model, action, "operator")
        self.journal.record(OperatorActed(model, request))
        return self.statuses[model].to_json()

    # -- carrying actions out --------------------------------------------------------------
    async def run(self, model: str, action: Action, origin: str,
                  intent_id: int | None = None) -> None:
        """Journal the intent (unless resuming one), carry the action out, journal the outcome.
        Failures are journaled, alerted and kept as the status's ``last_error``; a cancelled
        action stays pending for the next start."""
        async with self.lock(model):
            managed, status, started = self.models.get(model), self.statuses.get(model), \
                self.clock.now()
            if managed is None or status is None:  # removed by a reload while this waited
                log.warning("model %s: %s dropped: the model is no longer managed", model,
                            action.name)
                return
            unit = managed.unit
            if intent_id is None:
                intent_id = self._intend(model, action, origin, status, started, unit)
            with trace.span(f"lifecycle.{action.name}", model=model, origin=origin,
                            params=action.params, intent_id=intent_id) as current:
                try:  # the table is asked first: nothing moves for an action it refuses
                    new = reconcile.outcome(action, status, started,
                                            shadow=managed.router.name == "shadow")
                    failpoints.reached(f"{action.name}.after_intent")
                    self.check_lease(model, unit)  # paused past the lease: nothing moves
                    await carry_out(action, status, managed.server, managed.router)
                    failpoints.reached(f"{action.name}.before_outcome")
                except LeaseLost as exc:
                    current.fail(str(exc))
                    self._fenced(model, action.name, intent_id, exc)
                    return
                except Exception as exc:  # whatever failed is journaled, alerted, not pending
                    current.fail(str(exc))
                    try:
                        with self.store.transaction():  # the outcome and the cleared marker
                            self.check_lease(model, unit)
                            self._failed(model, action.name, intent_id, _one_line(exc))
                            self.store.put(pending_key(model), None, self.clock.now())
                    except LeaseLost as lost:
                        self._fenced(model, action.name, intent_id, lost)
                    except StateError:
                        self._stranded.add(model)
                        raise
                else:
                    current.set(phase=new.phase.value, weight=new.weight,
                                stable_version=new.stable_version,
                                canary_version=new.canary_version)
                    try:
                        with self.store.transaction():
                            self.check_lease(model, unit)
                            self._done(model, action, intent_id, started, new, origin)
                            self.store.put(pending_key(model), None, self.clock.now())
                    except LeaseLost as lost:
                        self._fenced(model, action.name, intent_id, lost)
                    except StateError:  # pending; completed once the store takes it again
                        self._stranded.add(model)
                        raise

    def _fenced(self, model: str, action: str, intent_id: int, exc: LeaseLost) -> None:
        """This replica lost the unit mid-action: no outcome here; the intent stays pending
        for the new owner, which drives the server to the same target and journals it once."""
        log.error("model %s: %s (intent %d) fenced off, left to the unit's owner: %s", model,
                  action, intent_id, exc)
        self.metrics.action(model, action, "fenced")

    def _intend(self, model: str, action: Action, origin: str, status: ModelStatus,
                started: float, unit: str) -> int:
        """Journal the intent and keep it pending, in one transaction (a crash leaves both or
        neither). A store that cannot take them (a full disk) refuses the action before it
        starts: alerted, and raised to the caller."""
        try:
            with self.store.transaction():  # the token is checked where the intent is written
                self.check_lease(model, unit)
                intent_id = self.journal.record(ActionIntended(model, action.name, action.params,
                                                               origin, status))
                self.store.put(pending_key(model), {
                    "model": model, "action": action.name, "params": action.params,
                    "origin": origin, "from": status.to_json(), "intent_id": intent_id}, started)
        except LeaseLost as exc:
            log.warning("model %s: %s not started: %s", model, action.name, exc)
            raise
        except StateError as exc:
            self.metrics.action(model, action.name, "failure")
            self.alerts.failed(model, action.name, f"not started: {exc}")
            log.error("model %s: %s not started: %s", model, action.name, exc)
            raise
        return intent_id

    def _done(self, model: str, action: Action, intent_id: int, started: float,
              status: ModelStatus, origin: str) -> None:
        self.save(status)
        self.journal.record(ActionDone(intent_id, model, action.name, action.params,
                                       round(self.clock.now() - started, 3), status))
        self.metrics.action(model, action.name, "success")
        log.info("model %s: %s done (%s)", model, action.name, origin)
        self.alerts.settled(model, action.name)

    def _failed(self, model: str, action: str, intent_id: int, error: str) -> None:
        status = self.statuses.get(model)
        if status is not None:
            self.save(replace(status, last_error=error))
        self.journal.record(ActionFailed(intent_id, model, action, error))
        self.metrics.action(model, action, "failure")
        self.alerts.failed(model, action, error)
        log.error("model %s: %s failed: %s", model, action, error)

    async def settle(self) -> None:
        """Wait for the actions the policy loop started (tests, replays)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("lifecycle task ended with %s", _one_line(exc))  # already alerted

    # -- configuration and shutdown --------------------------------------------------------
    def reconfigure(self, models: Mapping[str, ManagedModel]) -> list[str]:
        """Take the new set of managed models: removed ones leave the loop (their status stays
        in the store), the others keep status, approvals and any action in flight (an action
        waiting for its turn runs against the new server and router). Returns the models to
        (re)start: new ones, and those that could not start before."""
        added = [name for name in models if name not in self.models]
        for name in [n for n in self.models if n not in models]:
            self.statuses.pop(name, None)
            self.approvals.pop(name, None)
            self._stranded.discard(name)  # its pending intent stays in the store
        self.models = dict(models)
        return added + [name for name in self.unstarted() if name not in added]

    async def stop(self) -> None:
        if self.reoptimizer is not None:
            self.reoptimizer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def model_json(self, model: str) -> dict[str, Any]:
        status = self.statuses[model]
        approval = self.approvals.get(model)
        return {**status.to_json(), "awaiting_approval": approval.to_json() if approval else None,
                "decisions": list(self.decisions.get(model, []))}


def _one_line(exc: BaseException) -> str:
    """Our own errors say what failed; anything else is named by its type too."""
    first = (str(exc).strip().splitlines() or [""])[0]
    line = first if isinstance(exc, TfwardenError) and first else f"{type(exc).__name__}: {first}"
    return line[:500]
