"""Each model's drift checks, run from the rows the capture endpoints received.

- the reference: a configured file, or the first ``reference_rows`` rows captured for the
  stable version (saved in the state directory, so a restart keeps it);
- input drift (``method: sequential``, the default): every new row through the sequential
  engine's anytime-valid tests in the worker (``detectors.drift.sequential``);
- input drift (``method: window``): disjoint windows against the reference (``InputWindows``);
- online drift (optional): every row through CVMDriftOnline/FETDriftOnline at the configured ERT;
- outputs: captured rows sent to the stable and canary versions (REST predict); each version's
  predictions are tested against stable's predictions on the reference inputs, and canary vs
  stable disagreement on the same rows gates the canary (``detectors.disagreement``);
- performance (optional, classifiers): each version's estimated accuracy from its class
  probabilities on those rows, against stable's on the reference inputs (CBPE, in the worker;
  ``detectors.performance``), published as detector ``performance``, target ``accuracy``.

While the worker is down, or the signature cannot be read, every drift finding is
``inconclusive``; rows keep queueing (bounded) and are checked when it is back.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfwarden.core import trace
from tfwarden.core.clock import Clock
from tfwarden.core.errors import ServingError, WorkerDown, WorkerFailed
from tfwarden.core.ports import CapturedRows, DriftMetrics, FindingSink, Roles, Row
from tfwarden.core.settings import default
from tfwarden.core.types import INCONCLUSIVE, OK, REGRESSION, Finding
from tfwarden.detectors.disagreement import Disagreement
from tfwarden.detectors.drift.client import DriftWorkerClient
from tfwarden.detectors.drift.settings import DriftSettings
from tfwarden.detectors.drift.windows import InputWindows
from tfwarden.detectors.driftverdict import sequential_drift_finding
from tfwarden.detectors.performance_settings import performance_finding
from tfwarden.serving.tfserving.client import ServingClient

log = logging.getLogger("tfwarden.drift")
MAX_PENDING_WINDOWS = 4
SEQUENTIAL_BATCH_ROWS = 5000  # rows per sequential request (bounds one request's size) ...
SEQUENTIAL_BATCH_VALUES = 200_000  # ... and values per request (a few MB of JSON)


@dataclass(frozen=True)
class DriftedModel:
    """A model with drift checks: its settings and the client of its serving endpoint."""

    name: str
    settings: DriftSettings
    client: ServingClient


@dataclass
class _State:
    model: DriftedModel
    reference_file: Path  # captured reference, saved here once complete
    windows: InputWindows
    configured: tuple[int, str] | None = None  # (worker generation, output-reference key)
    reference: dict[str, Any] | None = None
    inputs: dict[str, Any] | None = None  # latest input report
    outputs: dict[int, dict[str, Any]] = field(default_factory=dict)  # version -> latest report
    output_reference: dict[str, Any] | None = None
    output_stable: int | None = None
    disagreement: Disagreement | None = None
    performance: dict[int, dict[str, Any]] = field(default_factory=dict)  # version -> estimate
    performance_reference: dict[str, Any] | None = None  # the worker's fit (or its error)
    online: dict[str, Any] = field(default_factory=dict)
    rows_seen: int = 0
    last_detection_row: int | None = None
    last_check: float = 0.0
    problem: str = ""

    @property
    def settings(self) -> DriftSettings:
        return self.model.settings


class DriftChecks:
    """Drift checks of every model with ``drift`` settings (the worker is shared)."""

    def __init__(self, models: Mapping[str, DriftedModel], state_dir: Path,
                 worker: DriftWorkerClient, captured: CapturedRows, roles: Roles,
                 findings: FindingSink, metrics: DriftMetrics, clock: Clock) -> None:
        self.worker, self.captured, self.roles = worker, captured, roles
        self.findings, self.metrics, self.clock = findings, metrics, clock
        self.directory = state_dir / "drift"
        self.states: dict[str, _State] = {}
        self.reconfigure(models)

    def reconfigure(self, models: Mapping[str, DriftedModel]) -> None:
        """Models whose drift settings did not change keep their windows and reports."""
        kept = {name: state for name, state in self.states.items()
                if name in models and models[name].settings == state.settings}
        for state in kept.values():
            state.model = models[state.model.name]  # the client may be new
        self.states = {name: kept.get(name) or self._state(model) for name, model in models.items()}

    def _state(self, model: DriftedModel) -> _State:
        s, path = model.settings, self.directory / f"{model.name}.reference.json"
        collected: list[Row] = []
        if s.reference is None and path.exists():
            try:
                collected = json.loads(path.read_text())["rows"]
            except (OSError, ValueError, KeyError) as exc:
                log.error("model %s: ignoring saved reference %s: %s", model.name, path, exc)
        return _State(model, path, InputWindows(
            s.window_rows, s.consecutive, s.reference_rows, collect_reference=s.reference is None,
            collected=collected, max_pending_windows=MAX_PENDING_WINDOWS))

    @property
    def interval(self) -> float:
        return min((s.settings.interval_seconds for s in self.states.values()),
                   default=default(DriftSettings, "interval_seconds"))

    async def tick(self) -> None:
        now = self.clock.now()
        for name, state in self.states.items():
            if now - state.last_check < state.settings.interval_seconds:
                continue
            state.last_check = now
            try:
                await self._check(name, state, now)
            except WorkerDown as exc:
                self._all_inconclusive(name, state, str(exc), now)
            except (WorkerFailed, ServingError) as exc:
                if state.problem != str(exc):
                    log.error("model %s: drift check failed: %s", name, exc)
                state.problem = str(exc)
                state.configured = None
                self._all_inconclusive(name, state, f"drift check: {exc}", now)
        if self.worker.up and self.states:
            try:
                stats = await self.worker.stats()
                self.metrics.drift_worker(up=True, rss_bytes=stats["rss_bytes"])
            except (WorkerDown, WorkerFailed):
                pass

    # -- one model ----------------------------------------------------------------------------
    async def _check(self, name: str, state: _State, now: float) -> None:
        stable, canary = self.roles.roles(name)
        # the signature first: if it cannot be read, the captured rows stay where they are
        features = [n for s in await state.model.client.inputs(name) for n in s.feature_names()]
        added = state.windows.add(self.captured.take_new(name), stable)
        if added.dropped:
            self.metrics.captured(name, "dropped", 200, added.dropped)
        if state.windows.collecting:
            self._all_inconclusive(name, state, f"collecting the reference: "
                                   f"{len(state.windows.collected)} of "
                                   f"{state.settings.reference_rows} rows", now)
            return
        if added.completed_reference:
            self._save_reference(state, features)
        await self._configure(name, state, features)
        state.rows_seen += len(added.rows)
        if state.settings.online is not None and added.rows:
            await self._observe(name, state, added.rows, now)
        sequential = state.settings.method == "sequential"
        if sequential and added.rows:
            await self._sequential(name, state, added.rows, added.versions, now)
        checked: list[Row] = []
        while (window := state.windows.take()) is not None:
            if not sequential:
                await self._check_inputs(name, state, window, now)
            checked = window
        if state.inputs is None:
            pending = len(state.windows.pending)
            self._publish(state, ("drift", name, "inputs"), Finding(
                "drift", INCONCLUSIVE, now, model=name, target="inputs",
                reason="no rows since the reference was complete" if sequential else
                f"{pending} of {state.settings.window_rows} rows for the first check",
                evidence={"samples": pending}))
        if checked and state.settings.outputs.enabled and stable is not None:
            await self._check_outputs(name, state, checked, stable, canary, now)

    def _save_reference(self, state: _State, features: list[str]) -> None:
        state.reference_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = state.reference_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"features": features, "rows": state.windows.collected}))
        os.replace(tmp, state.reference_file)
        log.info("model %s: reference of %d captured rows saved to %s", state.model.name,
                 len(state.windows.collected), state.reference_file)

    async def _configure(self, name: str, state: _State, features: list[str]) -> None:
        s = state.settings
        output_key = f"{state.output_stable}:{(state.output_reference or {}).get('hash')}"
        if state.configured == (self.worker.generation, output_key) and self.worker.up:
            return
        if s.features is not None:
            unknown = sorted({f.name for f in s.features} - set(features))
            if unknown:
                raise WorkerFailed(f"drift.features names {unknown}, not inputs of the signature "
                                   f"({features})")
        reference: dict[str, Any] = {"path": str(s.reference), "limit": s.reference_rows} \
            if s.reference is not None else {"rows": state.windows.collected,
                                             "name": str(state.reference_file)}
        online = None if s.online is None else {
            "ert": s.online.ert, "window_sizes": list(s.online.window_sizes),
            "n_bootstraps": s.online.n_bootstraps}
        payload: dict[str, Any] = {
            "model": name, "engine": s.engine, "features": features,
            "kinds": s.kinds(features), "reference": reference, "online": online,
            "batch": s.batch.model_dump(),
            "sequential": s.sequential.model_dump() if s.method == "sequential" else None}
        if state.output_reference is not None:
            payload["outputs"] = state.output_reference
            if s.performance is not None:
                labels = s.performance.reference_labels
                payload["performance"] = {
                    "output": s.performance.output, "window_rows": s.performance.window_rows,
                    "labels": None if labels is None else str(labels)}
        answer = await self.worker.configure(payload)
        self._performance_reference(name, state, answer.get("performance"))
        if state.reference is None or state.reference["hash"] != answer["reference"]["hash"]:
            log.info("model %s: drift reference %s (%d rows, %s), engine %s", name,
                     answer["reference"]["hash"], answer["reference"]["rows"],
                     answer["reference"]["source"], s.engine)
        state.reference = answer["reference"]
        state.online["state"] = answer["online"]
        state.online["calibration_seconds"] = answer.get("calibration_seconds")
        state.problem = ""
        state.configured = (self.worker.generation, output_key)

    def _performance_reference(self, name: str, state: _State,
                               fitted: dict[str, Any] | None) -> None:
        if fitted is not None and fitted != state.performance_reference:
            if "error" in fitted:
                log.error("model %s: no performance estimate: %s", name, fitted["error"])
            else:
                log.info("model %s: performance reference of %d rows, accuracy %.3f (%s)", name,
                         fitted["rows"], fitted["reference_accuracy"],
                         fitted["reference_accuracy_source"])
        state.performance_reference = fitted

    async def _check_inputs(self, name: str, state: _State, window: list[Row],
                            now: float) -> None:
        with trace.span("drift.check", model=name, rows=len(window),
                        engine=state.settings.engine) as current:
            report = await self.worker.check(name, "inputs", window)
            current.set(drift=report["drift"], drifted_features=report["drifted_features"],
                        reference=report["reference"]["hash"], seconds=report.get("seconds"))
        report["t"] = now
        state.inputs = report
        finding = state.windows.record(name, report, now)
        self._publish(state, ("drift", name, "inputs"), finding)
        self.metrics.drift_report(name, report, drifted=finding.verdict == REGRESSION)

    async def _sequential(self, name: str, state: _State, rows: list[Row],
                          versions: list[int | None], now: float) -> None:
        # bounded in values, not rows: 5,000 rows of 784 features would exceed a frame
        step = max(1, min(SEQUENTIAL_BATCH_ROWS, SEQUENTIAL_BATCH_VALUES // max(1, len(rows[0]))))
        for begin in range(0, len(rows), step):
            part = slice(begin, begin + step)
            with trace.span("drift.sequential", model=name, rows=len(rows[part])) as current:
                report = await self.worker.sequential(name, rows[part], versions[part])
                current.set(drift=report["drift"], drifted_features=report["drifted_features"],
                            seconds=report.get("seconds"))
            report["t"] = now
            state.inputs = report
            finding = sequential_drift_finding(name, report, now)
            self._publish(state, ("drift", name, "inputs"), finding)
            self.metrics.drift_report(name, report,
                                      drifted=finding.verdict == REGRESSION)

    async def _observe(self, name: str, state: _State, rows: list[Row], now: float) -> None:
        result = await self.worker.observe(name, rows)
        state.online["state"] = result["online"]
        if result["online"] != "ready":
            reason = "online detector calibrating" if result["online"] == "calibrating" else \
                f"online calibration failed: {result.get('error_detail')}"
            self._publish(state, ("drift", name, "online"), Finding(
                "drift", INCONCLUSIVE, now, model=name, target="online", reason=reason))
            return
        state.online["calibration_seconds"] = result["calibration_seconds"]
        detections = result["detections"]
        if detections:
            state.last_detection_row = state.rows_seen - (result["rows_seen"] -
                                                          detections[-1]["t"])
            state.online["detections"] = (state.online.get("detections", []) + detections)[-20:]
        assert state.settings.online is not None
        hold = state.settings.online.hold_rows
        recent = state.last_detection_row is not None and \
            state.rows_seen - state.last_detection_row <= hold
        last = state.online.get("detections", [{}])[-1] if recent else {}
        self._publish(state, ("drift", name, "online"), Finding(
            "drift", REGRESSION if recent else OK, now, model=name, target="online",
            reason=(f"online drift in {', '.join(last.get('features', [])) or 'inputs'} after "
                    f"{last.get('run_rows')} rows" if recent else
                    f"no online detection in the last {hold} rows"),
            evidence={"samples": state.rows_seen, "detections": len(state.online.get(
                "detections", []))}))

    # -- outputs --------------------------------------------------------------------------------
    async def _predict(self, state: _State, version: int,
                       rows: list[Row]) -> tuple[list[str], list[Row]]:
        client = state.model.client
        specs = await client.inputs(state.model.name)
        return await client.predict_rows(state.model.name, version, rows, specs)

    async def _check_outputs(self, name: str, state: _State, window: list[Row], stable: int,
                             canary: int | None, now: float) -> None:
        s = state.settings.outputs
        if state.output_stable != stable or state.output_reference is None:
            sample = await self.worker.sample(name, s.reference_rows)
            names, predictions = await self._predict(state, stable, sample["rows"])
            state.output_reference = {"features": names, "rows": predictions,
                                      "indices": sample.get("indices")}
            state.output_stable = stable
            state.outputs.clear()
            state.performance.clear()
            state.configured = None
            await self._configure(name, state, sample["features"])
        rows = window[-s.rows_per_check:]
        answers: dict[int, list[Row]] = {}
        for role, version in (("stable", stable), ("canary", canary)):
            if version is None:
                continue
            names, answers[version] = await self._predict(state, version, rows)
            report = await self.worker.check(name, "outputs", answers[version])
            report["t"] = now
            state.outputs[version] = report
            self._publish(state, ("drift", name, f"outputs:{role}"),
                                  _output_finding(name, version, stable, report, len(rows), now))
            if state.settings.performance is not None:
                await self._performance(name, state, role, version, names, answers[version],
                                        now)
        if canary is None:
            state.disagreement = None
            return
        if state.disagreement is None or (state.disagreement.stable, state.disagreement.canary) \
                != (stable, canary):
            state.disagreement = Disagreement(name, stable, canary, s)
        state.disagreement.add(answers[stable], answers[canary])
        finding = state.disagreement.evaluate(now)
        self._publish(state, ("drift", name, "disagreement"), finding)
        self.metrics.drift_disagreement(name, canary, finding.effect["disagreement"])

    async def _performance(self, name: str, state: _State, role: str, version: int,
                           names: list[str], predictions: list[Row], now: float) -> None:
        """The version's estimated accuracy; a refusal (outputs that are not probabilities, no
        reference) is an inconclusive finding saying why, never a failed check."""
        settings = state.settings.performance
        assert settings is not None
        try:
            report = await self.worker.performance(name, version, names, predictions,
                                                   settings.confidence)
        except WorkerFailed as exc:
            state.performance.pop(version, None)
            finding = performance_finding(name, version, None, settings, now,
                                          reason=f"no performance estimate: {exc}"[:300])
        else:
            report["t"] = now
            state.performance[version] = report
            finding = performance_finding(name, version, report, settings, now)
        self._publish(state, ("performance", name, f"accuracy:{role}"), finding)

    def _all_inconclusive(self, name: str, state: _State, reason: str, now: float) -> None:
        stable, canary = self.roles.roles(name)
        reason = reason[:300]
        parts: list[tuple[str, str, int | None]] = [("inputs", "inputs", None)]
        if state.settings.online is not None:
            parts.append(("online", "online", None))
        if state.settings.outputs.enabled:
            parts += [(f"outputs:{role}", "outputs", version)
                      for role, version in (("stable", stable), ("canary", canary))
                      if version is not None]
            if canary is not None:
                parts.append(("disagreement", "disagreement", canary))
        for key, target, version in parts:
            self._publish(state, ("drift", name, key), Finding(
                "drift", INCONCLUSIVE, now, model=name, version=version, target=target,
                reason=reason))
        performance = state.settings.performance
        if performance is not None and state.settings.outputs.enabled:
            for role, version in (("stable", stable), ("canary", canary)):
                if version is not None:
                    self._publish(state, ("performance", name, f"accuracy:{role}"),
                                  performance_finding(name, version, None, performance, now,
                                                      reason=reason))

    def _publish(self, state: _State, key: tuple[str, str, str], finding: Finding) -> None:
        """Publish unless a reload removed or replaced the model's checks while this one ran
        (its finding would outlive them: no detector stands behind a drift finding)."""
        if self.states.get(state.model.name) is state:
            self.findings.publish(key, finding)

    # -- API ------------------------------------------------------------------------------------
    def report(self, name: str) -> dict[str, Any] | None:
        state = self.states.get(name)
        if state is None:
            return None
        s = state.settings
        collecting = None
        if state.windows.collecting:
            collecting = {"rows": len(state.windows.collected), "needed": s.reference_rows}
        return {
            "model": name, "method": s.method, "engine": s.engine,
            "reference": state.reference, "collecting_reference": collecting,
            "window_rows": s.window_rows, "pending_rows": len(state.windows.pending),
            "windows_checked": state.windows.windows,
            "consecutive_drifted": state.windows.consecutive,
            "inputs": state.inputs,
            "outputs": {str(v): r for v, r in sorted(state.outputs.items())},
            "disagreement": None if state.disagreement is None else
            state.disagreement.evaluate(self.clock.now()).to_json(),
            "online": state.online or None,
            "performance": None if s.performance is None else {
                "reference": state.performance_reference,
                "versions": {str(v): r for v, r in sorted(state.performance.items())}},
            "problem": state.problem or None,
            "worker": self.worker.status(),
        }

    def calibration_inputs(self, name: str) -> Path | tuple[list[str], list[Row]] | None:
        """The model's drift reference (``core.ports.CalibrationSource``): a configured
        .npy/.npz/.csv file, or the captured rows saved in the state directory."""
        state = self.states.get(name)
        if state is not None and state.settings.reference is not None:
            return state.settings.reference if state.settings.reference.suffix in (
                ".npy", ".npz", ".csv") else None
        path = self.directory / f"{name}.reference.json"
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return list(saved.get("features", [])), list(saved.get("rows", []))


def _output_finding(model: str, version: int, stable: int, report: dict[str, Any], rows: int,
                    now: float) -> Finding:
    drifted = report["drifted_features"]
    return Finding(
        "drift", REGRESSION if report["drift"] else OK, now, model=model, version=version,
        target="outputs",
        reason=(f"v{version} output drift in {', '.join(drifted)} against stable v{stable}'s "
                f"predictions on the reference" if drifted else
                f"v{version} outputs match the reference predictions")[:300],
        effect={"drifted_features": drifted},
        evidence={"samples": rows, "features": {
            f["name"]: {"p_value": f["p_adjusted"], "statistic": f["statistic"]}
            for f in report["features"]}})
