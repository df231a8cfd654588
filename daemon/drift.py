"""Data drift in the daemon: the drift worker's client and the per-model drift checks.

The detectors live in a worker subprocess (``tfwarden.detectors.drift.worker``): alibi-detect loads TensorFlow
(about 1 GB), which the daemon never does. ``DriftWorker`` starts it, talks framed JSON over its
stdin/stdout with a timeout per request, and restarts it with exponential backoff when it dies or
hangs; meanwhile every drift finding is ``inconclusive``.

``DriftSupervisor`` runs each model's checks from the rows the capture endpoints received:

- the reference: a configured file, or the first ``reference_rows`` rows captured for the
  stable version (saved in the state directory, so a restart keeps it);
- input drift: disjoint windows of ``window_rows`` new rows against the reference; the finding
  says ``regression`` after ``consecutive`` drifted windows in a row (repeated tests on a fixed
  reference would otherwise alarm too often), ``ok`` after a clean window;
- online drift (optional): every row through CVMDriftOnline/FETDriftOnline at the configured ERT;
- outputs: captured rows sent to the stable and canary versions (REST predict); each version's
  predictions are tested against stable's predictions on the reference inputs, and canary vs
  stable disagreement on the same rows gates the canary (``detectors.disagreement``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tfwarden.core import framing
from tfwarden.core.clock import Clock
from tfwarden.core.errors import CaptureRejected, FrameError, WorkerDown
from tfwarden.core.errors import WorkerFailed as WorkerError
from tfwarden.core.types import INCONCLUSIVE, OK, REGRESSION, Finding
from tfwarden.daemon import tracing
from tfwarden.daemon.capture import CaptureService
from tfwarden.daemon.config import Config, DriftConfig, DriftWorkerConfig, ModelConfig
from tfwarden.daemon.recorder import Recorder
from tfwarden.detectors.disagreement import Disagreement, DisagreementSettings
from tfwarden.detectors.driftverdict import input_drift_finding
from tfwarden.probes.capture import flatten_prediction, rows_to_instances

log = logging.getLogger("tfwarden.drift")
MAX_PENDING_WINDOWS = 4
OUTPUT_BATCH = 100


class DriftWorker:
    """The drift worker process: started on first use, restarted with backoff."""

    def __init__(self, state_dir: Path, settings: DriftWorkerConfig, recorder: Recorder,
                 command: list[str] | None = None) -> None:
        self.command = command or [sys.executable, "-m", "tfwarden.detectors.drift.worker",
                                   "--state-dir", str(state_dir)]
        self.settings, self.recorder = settings, recorder
        self.proc: asyncio.subprocess.Process | None = None
        self.generation = 0  # grows with each start; detectors must be configured again
        self.restarts = 0
        self.last_error = ""
        self._lock = asyncio.Lock()
        self._next_start = 0.0
        self._backoff = 1.0
        self._ids = 0

    @property
    def up(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def _ensure(self) -> None:
        if self.up:
            return
        if self.proc is not None:  # died between requests
            await self._failed(f"exited with status {self.proc.returncode}")
        now = time.monotonic()
        if now < self._next_start:
            raise WorkerDown(f"drift worker down ({self.last_error}); restarting in "
                             f"{self._next_start - now:.0f}s")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
        self.proc = await asyncio.create_subprocess_exec(
            *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env=env, limit=framing.MAX_FRAME)
        self.generation += 1
        self.recorder.drift_worker(up=True)
        log.info("drift worker started (pid %d, generation %d)", self.proc.pid, self.generation)

    async def _failed(self, reason: str) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        self.last_error = reason
        self.restarts += 1
        self._next_start = time.monotonic() + self._backoff
        log.error("drift worker failed (%s); restarting in %.0fs", reason, self._backoff)
        self._backoff = min(self._backoff * 2, self.settings.restart_backoff_max_seconds)
        self.recorder.drift_worker(up=False, restarted=True)

    async def request(self, op: str, timeout: float | None = None, **payload: Any) -> dict[str, Any]:
        async with self._lock:
            await self._ensure()
            proc = self.proc
            assert proc is not None and proc.stdin is not None and proc.stdout is not None
            self._ids += 1
            try:
                proc.stdin.write(framing.encode({"op": op, "id": self._ids, **payload}))
                await proc.stdin.drain()
                async with asyncio.timeout(timeout or self.settings.request_timeout_seconds):
                    header = await proc.stdout.readexactly(framing.HEADER.size)
                    data = await proc.stdout.readexactly(framing.length(header))
                response = framing.decode(data)
            except TimeoutError:
                await self._failed(f"no answer to {op} in "
                                   f"{timeout or self.settings.request_timeout_seconds:.0f}s")
                raise WorkerDown(f"drift worker down ({self.last_error})") from None
            except (asyncio.IncompleteReadError, ConnectionError, FrameError) as exc:
                await proc.wait() if isinstance(exc, asyncio.IncompleteReadError) else None
                await self._failed(f"exited with status {proc.returncode}" if proc.returncode
                                   is not None else f"protocol error: {exc}")
                raise WorkerDown(f"drift worker down ({self.last_error})") from None
            self._backoff = 1.0
            if response.get("id") != self._ids:
                await self._failed("answer out of order")
                raise WorkerDown("drift worker down (answer out of order)")
            if "error" in response:
                raise WorkerError(str(response["error"]))
            return response

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 3.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        self.recorder.drift_worker(up=False)


@dataclass
class _ModelState:
    model: ModelConfig
    settings: DriftConfig
    reference_file: Path  # captured reference, saved here once complete
    captured_reference: list[list[float | str]] = field(default_factory=list)
    configured: tuple[int, str] | None = None  # (worker generation, output-reference key)
    reference: dict[str, Any] | None = None
    pending: list[list[float | str]] = field(default_factory=list)
    consecutive: int = 0
    windows: int = 0
    inputs: dict[str, Any] | None = None  # latest input report
    outputs: dict[int, dict[str, Any]] = field(default_factory=dict)  # version -> latest report
    output_reference: dict[str, Any] | None = None
    output_stable: int | None = None
    disagreement: Disagreement | None = None
    online: dict[str, Any] = field(default_factory=dict)
    rows_seen: int = 0
    last_detection_row: int | None = None
    last_check: float = 0.0
    problem: str = ""


class DriftSupervisor:
    """Drift checks of one configuration generation (the worker outlives it)."""

    def __init__(self, config: Config, worker: DriftWorker, capture: CaptureService,
                 recorder: Recorder, clock: Clock, http: httpx.AsyncClient,
                 roles: Callable[[str], tuple[int | None, int | None]],
                 publish: Callable[[tuple[str, str, Any], Finding], None]) -> None:
        self.config, self.worker, self.capture = config, worker, capture
        self.recorder, self.clock, self.http = recorder, clock, http
        self.roles, self.publish = roles, publish
        directory = config.state_dir / "drift"
        self.states = {m.name: _ModelState(m, m.drift, directory / f"{m.name}.reference.json")
                       for m in config.models if m.drift is not None}
        for state in self.states.values():
            if state.settings.reference is None and state.reference_file.exists():
                try:
                    saved = json.loads(state.reference_file.read_text())
                    state.captured_reference = saved["rows"]
                except (OSError, ValueError, KeyError) as exc:
                    log.error("model %s: ignoring saved reference %s: %s", state.model.name,
                              state.reference_file, exc)

    @property
    def interval(self) -> float:
        return min((s.settings.interval_seconds for s in self.states.values()), default=10.0)

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
            except WorkerError as exc:
                if state.problem != str(exc):
                    log.error("model %s: drift check failed: %s", name, exc)
                state.problem = str(exc)
                state.configured = None
                self._all_inconclusive(name, state, f"drift worker: {exc}", now)
            except CaptureRejected as exc:
                self._all_inconclusive(name, state, exc.message, now)
        if self.worker.up and self.states:
            try:
                stats = await self.worker.request("stats", timeout=5.0)
                self.recorder.drift_worker(up=True, rss_bytes=stats["rss_bytes"])
            except (WorkerDown, WorkerError):
                pass

    # -- one model ----------------------------------------------------------------------------
    async def _check(self, name: str, state: _ModelState, now: float) -> None:
        stable, canary = self.roles(name)
        # the signature first: if it cannot be read, the captured rows stay where they are
        features = [n for s in await self.capture.specs(name) for n in s.feature_names()]
        new = self.capture.take_new(name)
        if state.settings.reference is None and len(state.captured_reference) < \
                state.settings.reference_rows:
            rest = []
            for version, row in new:
                if len(state.captured_reference) < state.settings.reference_rows and \
                        version in (None, stable):
                    state.captured_reference.append(row)
                else:
                    rest.append((version, row))
            if len(state.captured_reference) < state.settings.reference_rows:
                self._all_inconclusive(name, state, f"collecting the reference: "
                                       f"{len(state.captured_reference)} of "
                                       f"{state.settings.reference_rows} rows", now)
                return
            self._save_reference(state, features)
            new = rest
        rows = [row for _, row in new]
        state.pending += rows  # kept for the next check should the worker be down now
        limit = MAX_PENDING_WINDOWS * state.settings.window_rows
        if len(state.pending) > limit:
            self.recorder.captured(name, "dropped", 200, len(state.pending) - limit)
            del state.pending[:len(state.pending) - limit]
        await self._configure(name, state, features, stable)
        state.rows_seen += len(rows)
        if state.settings.online is not None and rows:
            await self._observe(name, state, rows, now)
        checked: list[list[float | str]] = []
        while len(state.pending) >= state.settings.window_rows:
            window = state.pending[:state.settings.window_rows]
            del state.pending[:state.settings.window_rows]
            await self._check_inputs(name, state, window, now)
            checked = window
        if state.inputs is None:
            self.publish(("drift", name, "inputs"), Finding(
                "drift", INCONCLUSIVE, now, model=name, target="inputs",
                reason=f"{len(state.pending)} of {state.settings.window_rows} rows for the "
                       f"first check", evidence={"samples": len(state.pending)}))
        if checked and state.settings.outputs.enabled and stable is not None:
            await self._check_outputs(name, state, checked, stable, canary, now)

    def _save_reference(self, state: _ModelState, features: list[str]) -> None:
        state.reference_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = state.reference_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"features": features, "rows": state.captured_reference}))
        os.replace(tmp, state.reference_file)
        log.info("model %s: reference of %d captured rows saved to %s", state.model.name,
                 len(state.captured_reference), state.reference_file)

    async def _configure(self, name: str, state: _ModelState, features: list[str],
                         stable: int | None) -> None:
        s = state.settings
        output_key = f"{state.output_stable}:{(state.output_reference or {}).get('hash')}"
        if state.configured == (self.worker.generation, output_key) and self.worker.up:
            return
        kinds = None
        if s.features is not None:
            by_name = {f.name: f.kind for f in s.features}
            unknown = sorted(set(by_name) - set(features))
            if unknown:
                raise WorkerError(f"drift.features names {unknown}, not inputs of the signature "
                                  f"({features})")
            kinds = [by_name.get(f, "numeric") for f in features]
        reference: dict[str, Any] = {"path": str(s.reference), "limit": s.reference_rows} \
            if s.reference is not None else {"rows": state.captured_reference,
                                             "name": str(state.reference_file)}
        online = None if s.online is None else {
            "ert": s.online.ert, "window_sizes": tuple(s.online.window_sizes),
            "n_bootstraps": s.online.n_bootstraps}
        payload: dict[str, Any] = {
            "model": name, "engine": s.engine, "features": features, "kinds": kinds,
            "reference": reference, "online": online,
            "batch": {"p_value": s.p_value, "correction": s.correction,
                      "multivariate": s.multivariate}}
        if state.output_reference is not None:
            payload["outputs"] = state.output_reference
        answer = await self.worker.request("configure", timeout=max(
            120.0, self.worker.settings.request_timeout_seconds), **payload)
        if state.reference is None or state.reference["hash"] != answer["reference"]["hash"]:
            log.info("model %s: drift reference %s (%d rows, %s), engine %s", name,
                     answer["reference"]["hash"], answer["reference"]["rows"],
                     answer["reference"]["source"], s.engine)
        state.reference = answer["reference"]
        state.online["state"] = answer["online"]
        state.online["calibration_seconds"] = answer.get("calibration_seconds")
        state.problem = ""
        state.configured = (self.worker.generation, output_key)

    async def _check_inputs(self, name: str, state: _ModelState,
                            window: list[list[float | str]], now: float) -> None:
        with tracing.span("drift.check", model=name, rows=len(window),
                          engine=state.settings.engine) as current:
            report = await self.worker.request("check", model=name, part="inputs", rows=window)
            current.set(drift=report["drift"], drifted_features=report["drifted_features"],
                        reference=report["reference"]["hash"], seconds=report.get("seconds"))
        state.windows += 1
        state.consecutive = state.consecutive + 1 if report["drift"] else 0
        report["t"] = now
        state.inputs = report
        finding = input_drift_finding(name, report, state.consecutive,
                                      state.settings.consecutive, state.windows, now)
        self.publish(("drift", name, "inputs"), finding)
        self.recorder.drift_report(name, report, drifted=finding.verdict == REGRESSION)

    async def _observe(self, name: str, state: _ModelState, rows: list[list[float | str]],
                       now: float) -> None:
        result = await self.worker.request("observe", model=name, rows=rows)
        state.online["state"] = result["online"]
        if result["online"] != "ready":
            reason = "online detector calibrating" if result["online"] == "calibrating" else \
                f"online calibration failed: {result.get('error_detail')}"
            self.publish(("drift", name, "online"), Finding(
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
        self.publish(("drift", name, "online"), Finding(
            "drift", REGRESSION if recent else OK, now, model=name, target="online",
            reason=(f"online drift in {', '.join(last.get('features', [])) or 'inputs'} after "
                    f"{last.get('run_rows')} rows" if recent else
                    f"no online detection in the last {hold} rows"),
            evidence={"samples": state.rows_seen, "detections": len(state.online.get(
                "detections", []))}))

    # -- outputs --------------------------------------------------------------------------------
    async def _predict(self, name: str, version: int,
                       rows: list[list[float | str]]) -> tuple[list[str], list[list[float | str]]]:
        endpoint = self.config.serving[self.states[name].model.serving]
        assert endpoint.rest_url is not None
        specs = await self.capture.specs(name)
        url = f"{str(endpoint.rest_url).rstrip('/')}/v1/models/{name}/versions/{version}:predict"
        names: list[str] = []
        outputs: list[list[float | str]] = []
        for start in range(0, len(rows), OUTPUT_BATCH):
            body = {"instances": rows_to_instances(rows[start:start + OUTPUT_BATCH], specs)}
            try:
                response = await self.http.post(url, json=body, timeout=endpoint.timeout_seconds)
            except httpx.HTTPError as exc:
                raise WorkerError(f"predict on v{version} failed: {exc!r}") from None
            if response.status_code != 200:
                raise WorkerError(f"predict on v{version}: HTTP {response.status_code} "
                                  f"{response.text[:200]}")
            for prediction in response.json().get("predictions", []):
                names, values = flatten_prediction(prediction)
                outputs.append(values)
        return names, outputs

    async def _check_outputs(self, name: str, state: _ModelState, window: list[list[float | str]],
                             stable: int, canary: int | None, now: float) -> None:
        s = state.settings.outputs
        if state.output_stable != stable or state.output_reference is None:
            sample = await self.worker.request("sample", model=name, n=s.reference_rows)
            names, predictions = await self._predict(name, stable, sample["rows"])
            state.output_reference = {"features": names, "rows": predictions}
            state.output_stable = stable
            state.outputs.clear()
            state.configured = None
            await self._configure(name, state, sample["features"], stable)
        rows = window[-s.rows_per_check:]
        answers: dict[int, list[list[float | str]]] = {}
        for role, version in (("stable", stable), ("canary", canary)):
            if version is None:
                continue
            _, answers[version] = await self._predict(name, version, rows)
            report = await self.worker.request("check", model=name, part="outputs",
                                               rows=answers[version])
            report["t"] = now
            state.outputs[version] = report
            drifted = report["drifted_features"]
            self.publish(("drift", name, f"outputs:{role}"), Finding(
                "drift", REGRESSION if report["drift"] else OK, now, model=name, version=version,
                target="outputs",
                reason=(f"v{version} output drift in {', '.join(drifted)} against stable "
                        f"v{stable}'s predictions on the reference" if drifted else
                        f"v{version} outputs match the reference predictions")[:300],
                effect={"drifted_features": drifted},
                evidence={"samples": len(rows), "features": {
                    f["name"]: {"p_value": f["p_adjusted"], "statistic": f["statistic"]}
                    for f in report["features"]}}))
        if canary is None:
            state.disagreement = None
            return
        if state.disagreement is None or (state.disagreement.stable, state.disagreement.canary) \
                != (stable, canary):
            state.disagreement = Disagreement(name, stable, canary, DisagreementSettings(
                s.disagreement_threshold, s.min_rows, s.atol, s.rtol))
        state.disagreement.add(answers[stable], answers[canary])
        finding = state.disagreement.evaluate(now)
        self.publish(("drift", name, "disagreement"), finding)
        self.recorder.drift_disagreement(name, canary, finding.effect["disagreement"])

    def _all_inconclusive(self, name: str, state: _ModelState, reason: str, now: float) -> None:
        stable, canary = self.roles(name)
        self.publish(("drift", name, "inputs"), Finding(
            "drift", INCONCLUSIVE, now, model=name, target="inputs", reason=reason[:300]))
        if state.settings.online is not None:
            self.publish(("drift", name, "online"), Finding(
                "drift", INCONCLUSIVE, now, model=name, target="online", reason=reason[:300]))
        if state.settings.outputs.enabled:
            for role, version in (("stable", stable), ("canary", canary)):
                if version is not None:
                    self.publish(("drift", name, f"outputs:{role}"), Finding(
                        "drift", INCONCLUSIVE, now, model=name, version=version,
                        target="outputs", reason=reason[:300]))
            if canary is not None:
                self.publish(("drift", name, "disagreement"), Finding(
                    "drift", INCONCLUSIVE, now, model=name, version=canary,
                    target="disagreement", reason=reason[:300]))

    # -- API ------------------------------------------------------------------------------------
    def report(self, name: str) -> dict[str, Any] | None:
        state = self.states.get(name)
        if state is None:
            return None
        s = state.settings
        collecting = None
        if s.reference is None and len(state.captured_reference) < s.reference_rows:
            collecting = {"rows": len(state.captured_reference), "needed": s.reference_rows}
        return {
            "model": name, "engine": s.engine,
            "reference": state.reference, "collecting_reference": collecting,
            "window_rows": s.window_rows, "pending_rows": len(state.pending),
            "windows_checked": state.windows, "consecutive_drifted": state.consecutive,
            "inputs": state.inputs,
            "outputs": {str(v): r for v, r in sorted(state.outputs.items())},
            "disagreement": None if state.disagreement is None else
            state.disagreement.evaluate(self.clock.now()).to_json(),
            "online": state.online or None,
            "problem": state.problem or None,
            "worker": {"up": self.worker.up, "generation": self.worker.generation,
                       "restarts": self.worker.restarts, "last_error": self.worker.last_error},
        }
