"""Turns policy decisions into actions on TF Serving, journaled as intent then outcome.

Per model (with a model config file on its endpoint and ``lifecycle.enabled``):
- the status (phase, versions, weight) lives in the state store and survives restarts;
- every ``POLICY_SECONDS`` the policies are evaluated on the current findings; lifecycle
  decisions run one at a time per model through the TF Serving controller, unless they are dry
  runs or wait for an approval;
- before an action runs, its intent is journaled and kept as ``pending``; after it, the outcome
  is journaled and the pending intent cleared. A daemon killed in between finds the pending
  intent at start-up and completes it (every action drives the server to a target plan, so
  running it again is safe), journaling the outcome once;
- new numeric version directories under the model's base path start a canary
  (``lifecycle.auto_canary``), except versions already rolled back.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from tfwarden.core.clock import Clock
from tfwarden.core.errors import OptimizeError, RouterError, ServingError
from tfwarden.core.status import ModelStatus, Phase, transition
from tfwarden.core.types import Decision, Finding
from tfwarden.daemon import tracing
from tfwarden.daemon.config import Config, ModelConfig
from tfwarden.daemon.recorder import Recorder
from tfwarden.daemon.state import StateStore
from tfwarden.lifecycle.notifiers.base import Alert
from tfwarden.lifecycle.notifiers.dispatch import Dispatcher
from tfwarden.lifecycle.routers.base import LabelsRouter, Router, ShadowRouter
from tfwarden.lifecycle.routers.nginx import NginxRouter
from tfwarden.optimizers.gate import Tolerances
from tfwarden.optimizers.methods import METHODS
from tfwarden.optimizers.pipeline import Request, Runner, optimize
from tfwarden.optimizers.publish import optimized_from
from tfwarden.policies.engine import PolicyMemory, evaluate, remember
from tfwarden.policies.rules import RuleSet
from tfwarden.serving.tfserving.controller import TFServingController, current_plan, read_config

log = logging.getLogger("tfwarden.lifecycle")
POLICY_SECONDS = 2.0
MIN_CAPTURED_ROWS = 100
MANUAL_ACTIONS = ("rollback", "promote", "pause", "resume", "approve")


def representative_fallback(model: ModelConfig, state_dir: Path) -> Path | None:
    """int8 calibration inputs when ``optimize.representative`` is not set: the model's drift
    reference file (.npy/.npz/.csv), else the reference captured for drift (saved as JSON in the
    state directory, written out as CSV)."""
    drift = model.drift
    if drift is not None and drift.reference is not None and \
            drift.reference.suffix in (".npy", ".npz", ".csv"):
        return drift.reference
    saved = state_dir / "drift" / f"{model.name}.reference.json"
    try:
        captured = json.loads(saved.read_text())
    except (OSError, ValueError):
        return None
    return calibration_csv(state_dir / "optimize" / f"{model.name}-drift-reference.csv",
                           captured.get("features", []), captured.get("rows", []))


def calibration_csv(path: Path, features: list[str], rows: list[list[Any]]) -> Path | None:
    """Rows as a CSV file the optimizer worker reads as calibration inputs; None when there are
    too few of them or any is not numeric."""
    if len(rows) < MIN_CAPTURED_ROWS or any(isinstance(v, str) for r in rows for v in r):
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(features)
        writer.writerows(rows)
    return path


def _status_key(model: str) -> str:
    return f"lifecycle/{model}/status"


def _pending_key(model: str) -> str:
    return f"lifecycle/{model}/pending"


class LifecycleRunner:
    def __init__(self, config: Config, ruleset: RuleSet, store: StateStore, recorder: Recorder,
                 clock: Clock, dispatcher: Dispatcher,
                 journal: Any, findings: Any, captured: Any = None) -> None:
        self.config, self.ruleset, self.store = config, ruleset, store
        self.recorder, self.clock, self.dispatcher = recorder, clock, dispatcher
        self._journal, self._findings = journal, findings
        # model, version -> (feature names, captured rows): the inputs of `recalibrate`
        self._captured: Any = captured or (lambda model, version: ([], []))
        self.memory = PolicyMemory()
        self.models: dict[str, ModelConfig] = {}
        self.controllers: dict[str, TFServingController] = {}
        self.routers: dict[str, Router] = {}
        self.statuses: dict[str, ModelStatus] = {}
        self.approvals: dict[str, Decision] = {}
        self.decisions: dict[str, list[dict[str, Any]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._active_alerts: dict[tuple[str, str], Alert] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.optimizer = Runner()  # one optimizer worker at a time, killed on stop
        self._reoptimizing: dict[str, bool] = {}
        for model in config.models:
            endpoint = config.serving.get(model.serving)
            if (model.lifecycle.enabled and endpoint is not None and endpoint.model_config_file
                    and endpoint.grpc_address):
                self.models[model.name] = model
                self.controllers[model.name] = TFServingController(
                    endpoint.grpc_address, endpoint.model_config_file,
                    delivery=endpoint.config_delivery, timeout_seconds=endpoint.timeout_seconds)
                self._locks[model.name] = asyncio.Lock()
                self.routers[model.name] = router_for(config, model)

    # -- start-up: adopt or resume ---------------------------------------------------------
    async def start(self) -> None:
        for name in self.models:
            try:
                await self._resume(name)
            except ServingError as exc:
                log.error("model %s: lifecycle not started: %s", name, exc)
                self.statuses[name] = ModelStatus(name, last_error=str(exc), since=self.clock.now())

    async def _resume(self, name: str) -> None:
        stored = self.store.get(_status_key(name))
        controller = self.controllers[name]
        if stored is not None:
            self.statuses[name] = ModelStatus.from_json(stored)
        else:
            plan = current_plan(read_config(controller.config_file), name)
            stable = plan.labels.get("stable")
            if stable is None:  # adopt: pin the highest AVAILABLE version as stable
                available = [v for v, (state, _) in (await controller.states(name)).items()
                             if state == 30]
                if not available:
                    raise ServingError(f"model {name!r} has no AVAILABLE version to adopt")
                stable = max(available)
                await controller.set_labels(name, {"stable": stable}, keep=(stable,))
                self._journal("lifecycle_adopted", {"model": name, "stable_version": stable}, name)
            canary = plan.labels.get("canary")
            status = ModelStatus(name, stable_version=stable, since=self.clock.now())
            if canary is not None and canary != stable:
                status = replace(status, phase=Phase.CANARY_LIVE, canary_version=canary)
            self._save(status)
        pending = self.store.get(_pending_key(name))
        if pending is None and self.routers[name].name == "nginx":
            # nginx routes (and mirrors) from the start, not only after the first canary step
            status = self.statuses[name]
            try:
                await self.routers[name].apply(name, status.weight if status.canary_version else 0)
            except RouterError as exc:
                log.error("model %s: nginx routing not written at start-up: %s", name, exc)
        if pending is not None:
            log.warning("model %s: completing %s interrupted by a restart", name, pending["action"])
            await self._run(name, pending["action"], pending["params"], pending["origin"],
                            intent_id=pending["intent_id"])

    def _save(self, status: ModelStatus) -> None:
        self.statuses[status.model] = status
        self.store.put(_status_key(status.model), status.to_json(), self.clock.now())
        self.recorder.model_phase(status.model, status.phase.value, status.weight)

    # -- the policy loop -------------------------------------------------------------------
    async def tick(self) -> None:
        now = self.clock.now()
        findings: list[Finding] = self._findings()
        remember(self.memory, findings, now)
        statuses = {m: s for m, s in self.statuses.items()
                    if s.phase != Phase.PAUSED and not self._locks[m].locked()}
        dry_run = self.config.policies.dry_run
        for decision in evaluate(self.ruleset, findings, statuses, now, self.memory, dry_run):
            self._record_decision(decision)
            if decision.alert:
                self._alert(decision)
            if decision.action in ("alert", "resolve_alert", "hold"):
                continue
            if decision.action == "reoptimize":
                if not decision.dry_run:
                    self._spawn(self._reoptimize(decision.model, dict(decision.params),
                                                 f"rule {decision.rule}"))
                continue
            if decision.dry_run:
                continue
            if decision.needs_approval:
                self.approvals[decision.model] = decision
                self._journal("awaiting_approval", decision.to_json(), decision.model)
                continue
            self._spawn(self._run(decision.model, decision.action, dict(decision.params),
                                  f"rule {decision.rule}"))

    def _record_decision(self, decision: Decision) -> None:
        entry = decision.to_json()
        with tracing.span("policy.decision", model=decision.model, rule=decision.rule,
                          action=decision.action, params=dict(decision.params),
                          reason=decision.reason, dry_run=decision.dry_run,
                          needs_approval=decision.needs_approval,
                          findings=[f"{f['detector']}:{f['target']}:{f['verdict']}"
                                    for f in decision.findings]):
            pass
        self._journal("decision", entry, decision.model)
        history = self.decisions.setdefault(decision.model, [])
        history.append(entry)
        del history[:-20]
        self.recorder.decision(decision.model, decision.action, decision.dry_run)
        log.info("decision %s for %s: %s %s (%s)%s", decision.rule, decision.model,
                 decision.action, dict(decision.params), decision.reason,
                 " [dry run]" if decision.dry_run else "")

    async def watch_versions(self) -> None:
        """Start a canary for a new version directory (lifecycle.auto_canary)."""
        for name, model in self.models.items():
            status = self.statuses.get(name)
            if (not model.lifecycle.auto_canary or status is None or status.stable_version is None
                    or status.phase not in (Phase.STABLE, Phase.ROLLED_BACK)
                    or self._locks[name].locked()):
                continue
            newest = self._newest_version(name)
            if newest is not None and newest > status.stable_version and \
                    newest not in status.rejected:
                self._journal("new_version", {"model": name, "version": newest}, name)
                await self._run(name, "stage_canary", {"version": newest}, "new version directory")

    def _newest_version(self, name: str) -> int | None:
        try:
            config = read_config(self.controllers[name].config_file)
        except ServingError:
            return None
        entry = next((c for c in config.model_config_list.config if c.name == name), None)
        if entry is None:
            return None
        try:
            children = list(Path(entry.base_path).iterdir())
        except OSError:
            return None
        versions = [int(c.name) for c in children if c.name.isdigit() and (
            (c / "saved_model.pb").is_file() or (c / "model.tflite").is_file())]
        return max(versions) if versions else None

    # -- actions ---------------------------------------------------------------------------
    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def manual(self, model: str, action: str) -> dict[str, Any]:
        """An operator's action from the API; raises KeyError/ValueError for bad requests."""
        status = self.statuses[model]
        if action == "pause":
            self._save(transition(status, Phase.PAUSED, self.clock.now(), paused_from=status.phase))
        elif action == "resume":
            if status.phase != Phase.PAUSED or status.paused_from is None:
                raise ValueError(f"model {model!r} is not paused")
            self._save(transition(status, status.paused_from, self.clock.now(), paused_from=None))
        elif action == "approve":
            decision = self.approvals.pop(model, None)
            if decision is None:
                raise ValueError(f"model {model!r} has no decision awaiting approval")
            if decision.action == "reoptimize":
                self._spawn(self._reoptimize(model, dict(decision.params),
                                             f"approved {decision.rule}"))
            else:
                await self._run(model, decision.action, dict(decision.params),
                                f"approved {decision.rule}")
        elif action == "promote":
            if status.canary_version is None:
                raise ValueError(f"model {model!r} has no canary to promote")
            await self._run(model, "promote", {"version": status.canary_version}, "operator")
        elif action == "rollback":
            target = status.stable_version if status.canary_version is not None else \
                status.previous_good
            if target is None:
                raise ValueError(f"model {model!r} has nothing to roll back to")
            await self._run(model, "rollback", {"to_version": target}, "operator")
        self._journal("manual_action", {"model": model, "action": action}, model)
        return self.statuses[model].to_json()

    async def _run(self, model: str, action: str, params: dict[str, Any], origin: str,
                   intent_id: int | None = None) -> None:
        async with self._locks[model]:
            now = self.clock.now()
            if intent_id is None:
                intent = {"model": model, "action": action, "params": params, "origin": origin,
                          "from": self.statuses[model].to_json()}
                intent_id = self._journal("action_intent", intent, model)
                self.store.put(_pending_key(model), {**intent, "intent_id": intent_id}, now)
            started = self.clock.now()
            traced = tracing.span(f"lifecycle.{action}", model=model, origin=origin,
                                  params=params, intent_id=intent_id)
            try:
                with traced as current:
                    try:
                        status = await self._execute(model, action, params)
                    except (ServingError, RouterError) as exc:
                        current.fail(str(exc))
                        raise
                    current.set(phase=status.phase.value, weight=status.weight,
                                stable_version=status.stable_version,
                                canary_version=status.canary_version)
            except (ServingError, RouterError) as exc:
                failed = replace(self.statuses[model], last_error=str(exc))
                self._save(failed)
                self._journal("action_failed", {"intent_id": intent_id, "model": model,
                                                "action": action, "error": str(exc)}, model)
                self.recorder.action(model, action, "failure")
                self._alert_failure(model, action, str(exc))
                log.error("model %s: %s failed: %s", model, action, exc)
            else:
                self._save(status)
                self._journal("action_done", {"intent_id": intent_id, "model": model,
                                              "action": action, "params": params,
                                              "seconds": round(self.clock.now() - started, 3),
                                              "status": status.to_json()}, model)
                self.recorder.action(model, action, "success")
                log.info("model %s: %s done (%s)", model, action, origin)
                self._resolve_after(model, action)
            finally:
                self.store.put(_pending_key(model), None, self.clock.now())

    async def _execute(self, model: str, action: str, params: dict[str, Any]) -> ModelStatus:
        controller, status, now = self.controllers[model], self.statuses[model], self.clock.now()
        router = self.routers[model]
        if action == "stage_canary":
            version = int(params["version"])
            await router.apply(model, 0)
            await controller.stage_canary(model, version)
            phase = Phase.CANARY_SHADOW if router.name == "shadow" else Phase.CANARY_LIVE
            return transition(status, phase, now, canary_version=version, weight=0,
                              last_error="")
        if action == "set_weight":  # labels router: clients pick labels; weight is informative
            await router.apply(model, int(params["weight"]))
            return transition(status, Phase.CANARY_LIVE, now, weight=int(params["weight"]))
        if action == "promote":
            version = int(params["version"])
            await controller.promote(model, version)
            await router.apply(model, 0)  # stable and canary are the same version now
            if status.phase == Phase.CANARY_SHADOW:  # the table goes through canary_live
                status = transition(status, Phase.CANARY_LIVE, now)
            promoting = transition(status, Phase.PROMOTING, now)
            return transition(promoting, Phase.STABLE, now, stable_version=version,
                              previous_good=status.stable_version, canary_version=None, weight=0,
                              promoted_at=now, last_error="")
        if action == "rollback":
            rolling = transition(status, Phase.ROLLING_BACK, now)
            await router.apply(model, 0)  # traffic off the canary first
            if status.canary_version is not None and status.phase != Phase.STABLE:
                target = status.stable_version
                assert target is not None
                await controller.rollback(model, target)
                return transition(rolling, Phase.ROLLED_BACK, now, canary_version=None, weight=0,
                                  rejected=(*status.rejected, status.canary_version),
                                  last_error="")
            target = int(params.get("to_version") or status.previous_good or 0)
            await controller.rollback(model, target)
            bad = status.stable_version
            return transition(rolling, Phase.STABLE, now, stable_version=target,
                              previous_good=None, promoted_at=None, last_error="",
                              rejected=(*status.rejected, bad) if bad is not None else status.rejected)
        raise ServingError(f"unknown action {action!r}")

    async def unload_previous(self) -> None:
        """After ``keep_previous_seconds`` from a promotion, unload the previous version."""
        now = self.clock.now()
        for name, model in self.models.items():
            status = self.statuses.get(name)
            if (status is None or status.phase != Phase.STABLE or status.promoted_at is None
                    or status.previous_good is None or self._locks[name].locked()
                    or now - status.promoted_at < model.lifecycle.keep_previous_seconds):
                continue
            async with self._locks[name]:
                stable = status.stable_version
                assert stable is not None
                await self.controllers[name].set_labels(name, {"stable": stable}, keep=())
                self._save(replace(status, previous_good=None))
                self._journal("previous_unloaded", {"model": name, "version": status.previous_good},
                              name)

    # -- alerts ----------------------------------------------------------------------------
    def _alert(self, decision: Decision) -> None:
        status = self.statuses.get(decision.model)
        version = decision.params.get("from_version", decision.params.get("version",
                                      status.canary_version if status else None))
        alert = Alert(labels={**self.config.alerting.labels,
                              "alertname": "TfwardenDecision", "rule": decision.rule,
                              "model": decision.model, "version": str(version or ""),
                              "severity": decision.alert or "info", "action": decision.action},
                      annotations={"summary": f"{decision.action} {decision.model}: "
                                              f"{decision.reason}"[:500],
                                   "description": str([f.get("effect") for f in decision.findings])[:1000]},
                      starts_at=decision.t)
        for key in [k for k in self._active_alerts if k[0] == decision.model and k[1] != decision.rule]:
            self._send_resolved(self._active_alerts.pop(key))
        self._active_alerts[(decision.model, decision.rule)] = alert
        self._journal("alert", {"state": "firing", **dict(alert.labels),
                                "summary": alert.annotations["summary"]}, decision.model)
        self.dispatcher.submit([alert])

    def _alert_failure(self, model: str, action: str, error: str,
                       severity: str = "page") -> None:
        alert = Alert(labels={**self.config.alerting.labels,
                              "alertname": "TfwardenActionFailed", "model": model,
                              "action": action, "severity": severity},
                      annotations={"summary": f"{action} of {model} failed: {error}"[:500]},
                      starts_at=self.clock.now())
        self._journal("alert", {"state": "firing", **dict(alert.labels)}, model)
        self.dispatcher.submit([alert])

    def _resolve_after(self, model: str, action: str) -> None:
        """A completed rollback or promotion resolves that model's decision alerts."""
        if action not in ("rollback", "promote"):
            return
        for key in [k for k in self._active_alerts if k[0] == model]:
            self._send_resolved(self._active_alerts.pop(key))

    def _send_resolved(self, alert: Alert) -> None:
        resolved = replace(alert, ends_at=self.clock.now())
        self._journal("alert", {"state": "resolved", **dict(alert.labels)}, alert.labels.get("model"))
        self.dispatcher.submit([resolved])

    # -- reoptimize --------------------------------------------------------------------------
    async def _reoptimize(self, model: str, params: dict[str, Any], origin: str) -> None:
        """Optimize the stable version in workers; a published variant becomes a canary through
        the new-version watcher (auto_canary) and the normal rules, never promoted directly."""
        settings = self.models[model].optimize
        status = self.statuses[model]
        method = str(params.get("method") or (settings.method if settings else "int8"))
        if settings is None:
            self._journal("reoptimize_refused", {"model": model, "origin": origin, "reason":
                          "models[].optimize is not configured"}, model)
            return
        if self._reoptimizing.get(model):
            return
        try:
            entry = next(c for c in read_config(self.controllers[model].config_file)
                         .model_config_list.config if c.name == model)
        except (ServingError, StopIteration) as exc:
            self._journal("reoptimize_refused", {"model": model, "reason": str(exc)}, model)
            return
        base = Path(entry.base_path)
        stable = status.stable_version
        existing = optimized_from(base, stable, method) if stable is not None else None
        if stable is None or existing is not None:
            self._journal("reoptimize_skipped", {
                "model": model, "method": method, "stable_version": stable,
                "reason": f"version {existing} is already {method} of v{stable}" if existing
                else "no stable version"}, model)
            return
        request = Request(
            source=base / str(stable), method=method, base=base, golden=settings.golden,
            representative=settings.representative, train=settings.train,
            params={**settings.params, **{k: v for k, v in params.items() if k != "method"}},
            tolerances=Tolerances(min_top1_agreement=settings.min_top1_agreement,
                                  max_accuracy_drop_points=settings.max_accuracy_drop_points,
                                  max_abs_error=settings.max_abs_error),
            timeout_seconds=settings.timeout_seconds)
        if method == "recalibrate":
            request.representative = self._captured_file(model, stable)
            if request.representative is None:
                self._journal("reoptimize_refused", {"model": model, "reason": "recalibrate "
                              f"needs at least {MIN_CAPTURED_ROWS} captured rows of v{stable}"},
                              model)
                return
        elif request.representative is None and METHODS[method].data == "representative":
            request.representative = representative_fallback(
                self.models[model], self.config.state_dir) or self._captured_file(model, stable)
            if request.representative is None:
                self._journal("reoptimize_refused", {"model": model, "reason": f"{method} needs "
                              "representative inputs: optimize.representative, a drift "
                              "reference, or captured rows"}, model)
                return
        self._reoptimizing[model] = True
        intent = self._journal("reoptimize_started", {"model": model, "method": method,
                                                      "source_version": stable,
                                                      "origin": origin}, model)
        try:
            with tracing.span("optimize", model=model, method=method, source_version=stable,
                              origin=origin) as current:
                try:
                    report = await optimize(request, self.optimizer, {"origin": origin},
                                            trace_step=tracing.span)
                except OptimizeError as exc:
                    current.fail(str(exc))
                    raise
                current.set(accepted=report.accepted, version=report.version,
                            reasons=report.reasons)
        except OptimizeError as exc:
            self._journal("reoptimize_failed", {"intent_id": intent, "model": model,
                                                "error": str(exc)}, model)
            self._alert_failure(model, f"reoptimize ({method})", str(exc), "ticket")
            return
        finally:
            self._reoptimizing[model] = False
        summary = {"intent_id": intent, **report.to_json()}
        if report.accepted:
            self._journal("reoptimized", summary, model)
            log.info("model %s: %s of v%s published as version %s", model, method, stable,
                     report.version)
        else:
            self._journal("reoptimize_rejected", summary, model)
            log.warning("model %s: %s candidate of v%s rejected: %s", model, method, stable,
                        "; ".join(report.reasons))
            self._alert_failure(model, f"reoptimize ({method})",
                                "candidate rejected: " + "; ".join(report.reasons), "ticket")

    def _captured_file(self, model: str, version: int) -> Path | None:
        """The captured rows of ``version`` (and unversioned mirrored rows) as a CSV file."""
        features, rows = self._captured(model, version)
        return calibration_csv(self.config.state_dir / "optimize" /
                               f"{model}-v{version}-captured.csv", features, rows)

    async def stop(self) -> None:
        self.optimizer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for controller in self.controllers.values():
            await controller.close()

    def model_json(self, model: str) -> dict[str, Any]:
        status = self.statuses[model]
        return {**status.to_json(), "awaiting_approval": (self.approvals[model].to_json()
                                                          if model in self.approvals else None),
                "decisions": self.decisions.get(model, [])}


def router_for(config: Config, model: ModelConfig) -> Router:
    """The configured traffic router of one model."""
    if model.lifecycle.router == "nginx":
        nginx, endpoint = config.nginx, config.serving[model.serving]
        assert nginx is not None and endpoint.rest_url is not None
        return NginxRouter(include_dir=nginx.include_dir, conf=nginx.conf, prefix=nginx.prefix,
                           upstream=str(endpoint.rest_url), binary=nginx.binary,
                           mirror_url=str(nginx.mirror_url) if nginx.mirror_url else None,
                           mirror_percent=nginx.mirror_percent)
    if model.lifecycle.router == "shadow":
        return ShadowRouter()
    return LabelsRouter()
