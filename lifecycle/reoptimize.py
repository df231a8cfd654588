"""The ``reoptimize`` action: optimize the stable version in workers and publish the result.

A published variant becomes a canary through the new-version watcher (``auto_canary``) and the
normal rules; it is never promoted directly. int8 calibration inputs come from
``optimize.representative``, else the model's drift reference, else the rows captured for the
stable version; ``recalibrate`` always uses the captured rows.

With replicas, ``fence`` (set by the lifecycle runner) is asked in the start's and the
outcome's transactions and just before the candidate is published: a replica that lost the
model's unit meanwhile publishes nothing and journals no outcome; the unit's new owner gives the
pending start its outcome (``resume``).
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from tfwarden.core import failpoints, trace
from tfwarden.core.errors import LeaseLost, OptimizeError, ServingError
from tfwarden.core.events import (
    Event,
    Reoptimized,
    ReoptimizeFailed,
    ReoptimizeRefused,
    ReoptimizeRejected,
    ReoptimizeSkipped,
    ReoptimizeStarted,
)
from tfwarden.core.ports import CalibrationSource, CapturedRows, Journal, KeyValueStore, Row
from tfwarden.optimizers.methods import METHODS
from tfwarden.optimizers.pipeline import Request, Runner, optimize
from tfwarden.optimizers.publish import optimized_from
from tfwarden.optimizers.settings import OptimizeSettings

log = logging.getLogger("tfwarden.lifecycle")
MIN_CAPTURED_ROWS = 100


def pending_key(model: str) -> str:
    return f"reoptimize/{model}/pending"


class HasBasePath(Protocol):
    def base_path(self, model: str) -> Path: ...


class FailureAlerts(Protocol):
    def failed(self, model: str, action: str, error: str, severity: str = "page") -> None: ...


def calibration_csv(path: Path, features: list[str], rows: list[Row]) -> Path | None:
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


class Reoptimizer:
    def __init__(self, models: Mapping[str, OptimizeSettings], work_dir: Path, journal: Journal,
                 alerts: FailureAlerts, store: KeyValueStore, captured: CapturedRows | None = None,
                 calibration: CalibrationSource | None = None, runner: Runner | None = None) -> None:
        self.models, self.work_dir, self.journal, self.alerts = dict(models), work_dir, journal, alerts
        self.store = store
        self.captured, self.calibration = captured, calibration
        self.runner = runner or Runner()  # one optimizer worker at a time, killed on stop
        self._running: set[str] = set()
        self.fence: Callable[[str], None] | None = None  # raises LeaseLost: another replica's

    def running(self, model: str) -> bool:
        return model in self._running

    def _check(self, model: str) -> None:
        if self.fence is not None:
            self.fence(model)

    def reconfigure(self, models: Mapping[str, OptimizeSettings]) -> None:
        self.models = dict(models)

    def cancel(self) -> None:
        self.runner.cancel()

    async def run(self, model: str, stable: int | None, server: HasBasePath,
                  params: Mapping[str, Any], origin: str) -> None:
        """Optimize ``model``'s stable version (journaled: started, then reoptimized, rejected
        or failed; refused or skipped when it cannot or need not run)."""
        settings = self.models.get(model)
        if settings is None:
            self.journal.record(ReoptimizeRefused(model, "models[].optimize is not configured",
                                                  origin))
            return
        if model in self._running:
            return
        method = str(params.get("method") or settings.method)
        request = self._request(model, stable, server, settings, method, params)
        if request is None:
            return
        self._running.add(model)
        assert stable is not None
        intent: int | None = None
        try:
            intent = self._start(model, method, stable, origin)
            failpoints.reached("reoptimize.after_intent")
            with trace.span("optimize", model=model, method=method, source_version=stable,
                            origin=origin) as current:
                try:
                    report = await optimize(request, self.runner, {"origin": origin})
                except Exception as exc:
                    current.fail(str(exc))
                    raise
                current.set(accepted=report.accepted, version=report.version,
                            reasons=report.reasons)
            failpoints.reached("reoptimize.before_outcome")
        except LeaseLost as exc:
            log.error("model %s: reoptimize fenced off, left to the unit's owner: %s", model, exc)
            return
        except Exception as exc:  # whatever failed is an outcome (a stop leaves it pending)
            error = str(exc) if isinstance(exc, OptimizeError) else f"{type(exc).__name__}: {exc}"
            if intent is not None:
                self._outcome(model, ReoptimizeFailed(intent, model, error[:500]))
            self.alerts.failed(model, f"reoptimize ({method})", error[:500], "ticket")
            return
        finally:
            self._running.discard(model)
        if report.accepted:
            self._outcome(model, Reoptimized(intent, model, report.to_json()))
            log.info("model %s: %s of v%s published as version %s", model, method, stable,
                     report.version)
            return
        self._outcome(model, ReoptimizeRejected(intent, model, report.to_json()))
        log.warning("model %s: %s candidate of v%s rejected: %s", model, method, stable,
                    "; ".join(report.reasons))
        self.alerts.failed(model, f"reoptimize ({method})",
                           "candidate rejected: " + "; ".join(report.reasons), "ticket")

    def _start(self, model: str, method: str, stable: int, origin: str) -> int:
        """Journal the start and keep it pending, in one transaction."""
        with self.store.transaction():
            self._check(model)
            intent = self.journal.record(ReoptimizeStarted(model, method, stable, origin))
            self.store.put(pending_key(model), {"intent_id": intent, "method": method,
                                                "source_version": stable}, time.time())
        return intent

    def _outcome(self, model: str, event: Event) -> None:
        """Journal the outcome and clear the pending start, in one transaction (none when this
        replica lost the model's unit: the new owner's ``resume`` gives it)."""
        try:
            with self.store.transaction():
                self._check(model)
                self.journal.record(event)
                self.store.put(pending_key(model), None, time.time())
        except LeaseLost as exc:
            log.error("model %s: reoptimize outcome left to the unit's owner: %s", model, exc)

    def resume(self, model: str, server: HasBasePath) -> None:
        """A reoptimization a stop or crash interrupted gets its one outcome: the variant it
        published (publishing is one atomic rename), else failed (run it again)."""
        pending = self.store.get(pending_key(model))
        if pending is None:
            return
        intent, method, stable = pending["intent_id"], pending["method"], pending["source_version"]
        try:
            published = optimized_from(server.base_path(model), stable, method)
        except ServingError:
            published = None
        if published is not None:
            self._outcome(model, Reoptimized(intent, model, {
                "method": method, "source_version": stable, "version": published,
                "accepted": True, "note": "published before a restart; the gate's report is lost"}))
            return
        error = "interrupted by a stop or crash before anything was published; run it again"
        self._outcome(model, ReoptimizeFailed(intent, model, error))
        self.alerts.failed(model, f"reoptimize ({method})", error, "ticket")

    def _request(self, model: str, stable: int | None, server: HasBasePath,
                 settings: OptimizeSettings, method: str,
                 params: Mapping[str, Any]) -> Request | None:
        """The optimizer's request, or None (journaled why) when it cannot or need not run."""
        try:
            base = server.base_path(model)
        except ServingError as exc:
            self.journal.record(ReoptimizeRefused(model, str(exc)))
            return None
        existing = optimized_from(base, stable, method) if stable is not None else None
        if stable is None or existing is not None:
            self.journal.record(ReoptimizeSkipped(
                model, method, stable, f"version {existing} is already {method} of v{stable}"
                if existing else "no stable version"))
            return None
        request = Request(
            source=base / str(stable), method=method, base=base, golden=settings.golden,
            representative=settings.representative, train=settings.train,
            params={**settings.params, **{k: v for k, v in params.items() if k != "method"}},
            tolerances=settings.tolerances, timeout_seconds=settings.timeout_seconds,
            before_publish=lambda: self._check(model))
        if method == "recalibrate":
            request.representative = self._captured_file(model, stable)
            if request.representative is None:
                self.journal.record(ReoptimizeRefused(model, f"recalibrate needs at least "
                                                      f"{MIN_CAPTURED_ROWS} captured rows of "
                                                      f"v{stable}"))
                return None
        elif request.representative is None and METHODS[method].data == "representative":
            request.representative = self._reference_file(model) or \
                self._captured_file(model, stable)
            if request.representative is None:
                self.journal.record(ReoptimizeRefused(
                    model, f"{method} needs representative inputs: optimize.representative, a "
                           f"drift reference, or captured rows"))
                return None
        return request

    def _reference_file(self, model: str) -> Path | None:
        """The model's drift reference as calibration inputs (a file, or rows written out)."""
        source = self.calibration.calibration_inputs(model) if self.calibration else None
        if source is None or isinstance(source, Path):
            return source
        features, rows = source
        return calibration_csv(self.work_dir / f"{model}-drift-reference.csv", features, rows)

    def _captured_file(self, model: str, version: int) -> Path | None:
        """The captured rows of ``version`` (and unversioned mirrored rows) as a CSV file."""
        if self.captured is None:
            return None
        features, rows = self.captured.kept_rows(model, version)
        return calibration_csv(self.work_dir / f"{model}-v{version}-captured.csv", features, rows)
