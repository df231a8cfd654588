"""Runs the staged rollouts of edge models: decides from the per-cohort findings, journals each
change as intent then outcome, answers devices which version to run.

Per edge model with ``rollout`` configured:
- its status (``tfwarden.lifecycle.edge.EdgeRollout``) lives in the state store and survives
  restarts; a model seen for the first time adopts the newest published version (a version
  directory under ``base_path`` with ``manifest.json``) as current;
- every tick, with ``auto_start``, a newer published version that was never rolled back starts
  a rollout; a rolling-out model's findings go through ``edge.decide``;
- an action journals its intent and keeps it pending (one transaction), then saves the new
  status, journals the outcome and clears the pending intent (one transaction). The status is
  all an edge action changes (devices read it through ``assignment``), so a daemon that died in
  between finds the intent at start-up and applies it once;
- with replicas (``daemon.leases``) a rollout is a unit only one replica owns: the others
  follow its status from the store (to answer devices) and write nothing; the owner's fencing
  token is checked in the intent's and the outcome's transactions, and a replica that takes the
  unit over completes the intent its previous owner left pending;
- regressions, halts and rollbacks alert like the server-side decisions; a rollback or a
  completed rollout resolves them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tfwarden.core import failpoints, trace
from tfwarden.core.clock import Clock
from tfwarden.core.errors import ActionRefused, LeaseLost, LifecycleError, StateError
from tfwarden.core.events import EdgeActionDone, EdgeActionFailed, EdgeActionIntended, EdgeAdopted
from tfwarden.core.ports import (
    EdgeFindingSource,
    EdgeRolloutListener,
    EdgeRolloutMetrics,
    Fence,
    Journal,
    KeyValueStore,
)
from tfwarden.core.types import REGRESSION, Decision
from tfwarden.lifecycle import edge
from tfwarden.lifecycle.alerts import AlertBook
from tfwarden.lifecycle.edge import (
    EdgeAction,
    EdgePhase,
    EdgeRollout,
    EdgeRolloutSettings,
    StartRollout,
    edge_action_from,
)

log = logging.getLogger("tfwarden.edge")
MANIFEST = "manifest.json"
ALERTING = {"rollback": "page", "rollback_cohort": "page", "halt": "ticket"}


@dataclass(frozen=True)
class EdgeModel:
    """An edge model whose rollouts tfwarden runs."""

    name: str
    settings: EdgeRolloutSettings
    base_path: Path  # version directories, each with the optimizer's manifest.json
    download_url: str  # template: {model} {version} {file}; relative URLs are the daemon's own
    unit: str = ""  # its unit of ownership (``daemon.leases``)


def rollout_key(model: str) -> str:
    return f"edge/{model}/rollout"


def pending_key(model: str) -> str:
    return f"edge/{model}/pending"


def published(base_path: Path) -> dict[int, dict[str, Any]]:
    """Version -> manifest of every version directory with a readable manifest.json."""
    out: dict[int, dict[str, Any]] = {}
    if not base_path.is_dir():
        return out
    for directory in base_path.iterdir():
        name = directory.name
        if name.isascii() and name.isdigit() and len(name) <= 18 and \
                (directory / MANIFEST).is_file():
            try:
                manifest = json.loads((directory / MANIFEST).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(manifest, dict) and isinstance(manifest.get("file"), str):
                out[int(directory.name)] = manifest
    return out


class EdgeRolloutRunner:
    def __init__(self, models: Mapping[str, EdgeModel], *, store: KeyValueStore,
                 journal: Journal, clock: Clock, metrics: EdgeRolloutMetrics,
                 verdicts: EdgeFindingSource, alerts: AlertBook,
                 listener: EdgeRolloutListener | None = None, fence: Fence | None = None) -> None:
        self.models = dict(models)
        self.fence = fence
        self._owning: set[str] = set()  # models started as their unit's owner
        self.store, self.journal, self.clock, self.metrics = store, journal, clock, metrics
        self.verdicts, self.alerts, self.listener = verdicts, alerts, listener
        self.statuses: dict[str, EdgeRollout] = {}
        self.manifests: dict[str, dict[int, dict[str, Any]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, model: str) -> asyncio.Lock:
        return self._locks.setdefault(model, asyncio.Lock())

    # -- start-up ----------------------------------------------------------------------------
    async def start(self, names: list[str] | None = None) -> None:
        """Resume or adopt each model; finish an action a restart interrupted."""
        for name in names if names is not None else list(self.models):
            stored = self.store.get(rollout_key(name))
            self.refresh(name)
            if not self.may_act(name):
                self._follow(name, stored)
                continue
            self._owning.add(name)
            if stored is not None:  # the cohort evidence was in memory: the step counts anew
                self.save(replace(EdgeRollout.from_json(stored), step_devices=0))
            else:
                versions = self.manifests.get(name, {})
                current = max(versions, default=None)
                self.save(EdgeRollout(name, current=current, since=self.clock.now(),
                                      reason="adopted" if current else "no published version"))
                if current is not None:
                    self.journal.record(EdgeAdopted(name, current))
            pending = self.store.get(pending_key(name))
            if pending is not None:
                log.warning("edge model %s: completing %s interrupted by a restart", name,
                            pending["action"])
                try:
                    action = edge_action_from(pending["action"], pending["params"])
                except ActionRefused as exc:
                    with self.store.transaction():
                        self._failed(name, pending["action"], pending["intent_id"], str(exc))
                        self.store.put(pending_key(name), None, self.clock.now())
                    continue
                await self.run(name, action, pending["origin"], intent_id=pending["intent_id"])

    def may_act(self, name: str) -> bool:
        model = self.models.get(name)
        return self.fence is None or (model is not None and self.fence.may_act(model.unit))

    def _check(self, name: str) -> None:
        model = self.models.get(name)
        if self.fence is not None:
            if model is None:
                raise LeaseLost(f"edge model {name!r} is not run here")
            self.fence.check(model.unit)

    def _follow(self, name: str, stored: Any) -> None:
        """Another replica owns the rollout: take its status as stored, write nothing."""
        if stored is None or name not in self.models:
            return
        status = EdgeRollout.from_json(stored)
        if self.statuses.get(name) != status:
            self.statuses[name] = status
            if self.listener is not None:
                self.listener.rollout_changed(name, status.current, status.candidate)

    def refresh(self, name: str) -> None:
        """Re-read the published versions of a model (manifests are small JSON files)."""
        model = self.models.get(name)
        if model is not None:
            self.manifests[name] = published(model.base_path)

    def save(self, status: EdgeRollout) -> None:
        self.store.put(rollout_key(status.model), status.to_json(), self.clock.now())
        if status.model not in self.models:
            return
        self.statuses[status.model] = status
        self.metrics.edge_rollout(status.model, status.phase.value, status.percent,
                                  len(status.pinned))
        if self.listener is not None:
            self.listener.rollout_changed(status.model, status.current, status.candidate)

    # -- the policy loop ---------------------------------------------------------------------
    async def tick(self) -> None:
        now = self.clock.now()
        for name, model in list(self.models.items()):
            if self.lock(name).locked():
                continue
            if not self.may_act(name):
                self._owning.discard(name)
                self._follow(name, self.store.get(rollout_key(name)))
                continue
            if name not in self._owning:  # taken over: resume, finish what was pending
                await self.start([name])
            status = self.statuses.get(name)
            if status is None:
                continue
            action = self._next(name, model, status, now)
            if action is not None:
                try:
                    await self.run(name, action, "policy")
                except LeaseLost as exc:
                    log.warning("edge model %s: %s not started: %s", name, action.name, exc)

    def _next(self, name: str, model: EdgeModel, status: EdgeRollout,
              now: float) -> EdgeAction | None:
        if status.current is None:  # nothing was published at the first start
            self.refresh(name)
            versions = self.manifests.get(name, {})
            if versions:
                current = max(versions)
                self.save(replace(status, current=current, since=now, reason="adopted"))
                self.journal.record(EdgeAdopted(name, current))
            return None
        if status.phase in (EdgePhase.IDLE, EdgePhase.ROLLED_BACK):
            if not model.settings.auto_start:
                return None
            self.refresh(name)
            newer = [v for v in self.manifests.get(name, {})
                     if v > status.current and v not in status.rejected]
            return StartRollout(max(newer)) if newer else None
        findings = self.verdicts.findings(name, now)
        return edge.decide(status, findings, model.settings,
                           self.verdicts.candidate_devices(name), now)

    # -- operators ---------------------------------------------------------------------------
    async def manual(self, model: str, request: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """An operator's request (``start``, ``advance``, ``halt``, ``resume``, ``rollback``,
        ``rollback_cohort``, ``unpin``); KeyError for a model without rollouts, ActionRefused
        (nothing journaled) when it does not apply."""
        status = self.statuses[model]
        action = edge_action_from(request, params)
        if isinstance(action, StartRollout):
            self.refresh(model)
            if action.version not in self.manifests.get(model, {}):
                raise ActionRefused(f"edge model {model!r} has no published version "
                                    f"{action.version} (a directory with {MANIFEST})")
        try:
            edge.outcome(action, status, self.models[model].settings, self.clock.now())
        except LifecycleError as exc:
            raise ActionRefused(str(exc)) from None
        await self.run(model, action, "operator")
        return self.statuses[model].to_json()

    # -- carrying actions out ----------------------------------------------------------------
    async def run(self, name: str, action: EdgeAction, origin: str,
                  intent_id: int | None = None) -> None:
        """Journal the intent (unless resuming one), apply the action, journal the outcome."""
        async with self.lock(name):
            model, status = self.models.get(name), self.statuses.get(name)
            if model is None or status is None:
                return
            now = self.clock.now()
            devices = self.verdicts.candidate_devices(name)
            findings = [f.to_json() for f in self.verdicts.findings(name, now)
                        if f.verdict == REGRESSION]
            if intent_id is None:
                intent_id = self._intend(name, action, origin, status)
            with trace.span(f"edge.{action.name}", model=name, origin=origin,
                            params=action.params, intent_id=intent_id) as current:
                try:
                    failpoints.reached(f"edge_{action.name}.after_intent")
                    new = edge.outcome(action, status, model.settings, now, devices)
                    failpoints.reached(f"edge_{action.name}.before_outcome")
                except Exception as exc:
                    current.fail(str(exc))
                    try:
                        with self.store.transaction():
                            self._check(name)
                            self._failed(name, action.name, intent_id, str(exc)[:500])
                            self.store.put(pending_key(name), None, self.clock.now())
                    except LeaseLost as lost:
                        log.error("edge model %s: %s fenced off: %s", name, action.name, lost)
                    return
                try:
                    self._outcome(name, action, intent_id, new, findings)
                except LeaseLost as lost:
                    log.error("edge model %s: %s fenced off, left to the rollout's owner: %s",
                              name, action.name, lost)
                    return
            self.metrics.edge_action(name, action.name, "success")
            log.info("edge model %s: %s %s (%s): %s", name, action.name, action.params, origin,
                     new.reason)
            self._alert(name, action, new, origin, findings)

    def _outcome(self, name: str, action: EdgeAction, intent_id: int, new: EdgeRollout,
                 findings: list[dict[str, Any]]) -> None:
        with self.store.transaction():
            self._check(name)
            self.save(new)
            self.journal.record(EdgeActionDone(intent_id, name, action.name,
                                               action.params, new.to_json(), tuple(findings)))
            self.store.put(pending_key(name), None, self.clock.now())

    def _intend(self, name: str, action: EdgeAction, origin: str, status: EdgeRollout) -> int:
        try:
            with self.store.transaction():
                self._check(name)
                intent_id = self.journal.record(EdgeActionIntended(
                    name, action.name, action.params, origin, status.to_json()))
                self.store.put(pending_key(name), {
                    "model": name, "action": action.name, "params": action.params,
                    "origin": origin, "intent_id": intent_id}, self.clock.now())
        except StateError as exc:
            self.metrics.edge_action(name, action.name, "failure")
            self.alerts.failed(name, f"edge {action.name}", f"not started: {exc}")
            raise
        return intent_id

    def _failed(self, name: str, action: str, intent_id: int, error: str) -> None:
        self.journal.record(EdgeActionFailed(intent_id, name, action, error))
        self.metrics.edge_action(name, action, "failure")
        self.alerts.failed(name, f"edge {action}", error)
        log.error("edge model %s: %s failed: %s", name, action, error)

    def _alert(self, name: str, action: EdgeAction, new: EdgeRollout, origin: str,
               findings: list[dict[str, Any]]) -> None:
        severity = ALERTING.get(action.name)
        if severity is not None:
            version = action.params.get("version") or new.candidate or \
                (new.rejected[-1] if new.rejected else None)
            self.alerts.decided(Decision(
                self.clock.now(), f"edge-{action.name.replace('_', '-')}", name, action.name,
                {"version": version, **action.params}, f"{new.reason} ({origin})",
                tuple(findings), alert=severity), version)
        if action.name == "rollback" or (action.name == "advance" and new.candidate is None):
            self.alerts.settled(name, "rollback")

    # -- devices -----------------------------------------------------------------------------
    def assignment(self, name: str, device_hash: str, cohort: str) -> dict[str, Any]:
        """What a device of ``cohort`` should run: version, file, URL, sha256, size, TTL.
        KeyError: no such edge model; LifecycleError: nothing published to run."""
        model, status = self.models[name], self.statuses[name]
        version, why = edge.assign(status, cohort, edge.bucket(name, device_hash))
        manifest = self.manifests.get(name, {}).get(version) if version is not None else None
        if manifest is None and version is not None:
            self.refresh(name)
            manifest = self.manifests.get(name, {}).get(version)
        if version is None or manifest is None:
            raise LifecycleError(f"edge model {name!r} has no published version to run"
                                 if version is None else
                                 f"edge model {name!r}: version {version} has no {MANIFEST}")
        file = manifest["file"]
        return {"model": name, "version": version, "file": file,
                "url": model.download_url.format(model=name, version=version, file=file),
                "sha256": manifest.get("sha256"), "size_bytes": manifest.get("size_bytes"),
                "ttl_seconds": model.settings.assignment_ttl_seconds, "cohort": cohort,
                "reason": why, "rollout": status.phase.value}

    def file(self, name: str, version: int) -> Path:
        """The model file of a published version (KeyError when there is none)."""
        manifest = self.manifests.get(name, {}).get(version)
        if manifest is None:
            self.refresh(name)
            manifest = self.manifests[name][version]
        path = self.models[name].base_path / str(version) / Path(manifest["file"]).name
        if not path.is_file():
            raise KeyError(version)
        return path

    def evidence_lost(self, names: list[str]) -> None:
        """The cohort evidence of ``names`` started afresh (their verdict settings changed):
        announce their versions again and count the step's devices from zero."""
        for name in names:
            status = self.statuses.get(name)
            if status is not None and self.may_act(name):
                self.save(replace(status, step_devices=0))

    def reconfigure(self, models: Mapping[str, EdgeModel]) -> list[str]:
        """New set of models: removed ones leave (their status stays stored); returns the new
        ones to start."""
        added = [name for name in models if name not in self.models]
        for name in [n for n in self.models if n not in models]:
            self.statuses.pop(name, None)
            if self.listener is not None:
                self.listener.rollout_changed(name, None, None)
        self.models = dict(models)
        return added

    def status_json(self, name: str) -> dict[str, Any]:
        status = self.statuses[name]
        return {**status.to_json(), "published": sorted(self.manifests.get(name, {})),
                "steps": self.models[name].settings.steps,
                "candidate_devices": self.verdicts.candidate_devices(name)}
