"""The drift worker: a long-lived subprocess that owns the drift detectors.

Run as ``python -m tfwarden.detectors.drift.worker --state-dir DIR``; never imported by the
daemon process. It answers framed JSON requests on stdin/stdout (``core.workers.serve``: file
descriptor 1 points at stderr before anything heavy is imported, so library output can never
corrupt the protocol). Requests (``op``):

- ``configure``: model, engine (alibi|scipy), batch settings, reference (``path`` or ``rows``),
  features and kinds, optional ``online`` settings, ``outputs`` reference rows (stable's
  predictions on reference rows, with their ``indices`` in the reference) and ``performance``
  (output, window_rows, labels file): fits the accuracy estimator on those predictions
  (``detectors.performance``, once per output reference). Answers the reference hash. A model
  whose settings and reference hash did not change keeps its detectors.
- ``check``: model, ``part`` (inputs|outputs), rows -> the engine's per-feature report.
- ``sequential``: model, rows, versions -> the sequential engine's report after those rows
  (``detectors.drift.sequential``; its state lives here, a restarted worker starts afresh).
- ``observe``: model, rows -> online detections (``calibrating`` until thresholds exist).
- ``performance``: model, version, features (output names), rows (that version's predictions)
  -> the estimated accuracy of its last ``window_rows`` rows (a bounded buffer per version,
  here; a restarted worker or a new output reference starts it afresh).
- ``sample``: model, n -> up to n reference rows, decoded (categories as strings), and their
  indices in the reference.
- ``stats``: pid, RSS, models, calibrations.

Online thresholds are calibrated in a child process (spawned, one at a time) that writes them to
``STATE_DIR/drift/calibration``; the worker picks them up on a later request, so it keeps
answering batch checks while a calibration runs for minutes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any


def _die_with_parent() -> None:
    """Calibration children get SIGKILL when the worker dies (a killed worker must not leave
    a minutes-long calibration running)."""
    import ctypes
    import signal

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the worker died before prctl took effect
        os._exit(1)


def calibrate(data: Any, features: list[str], kinds: list[str], vocab: dict[int, list[str]],
              settings: dict[str, Any], cache_dir: str) -> float:
    """Child process: compute (and cache) online thresholds; returns the seconds it took."""
    from tfwarden.detectors.drift.engines import OnlineDrift
    from tfwarden.detectors.drift.reference import Reference
    from tfwarden.detectors.drift.settings import OnlineSettings

    started = time.monotonic()
    reference = Reference(features, kinds, data, vocab)
    online = OnlineDrift(reference, OnlineSettings(**settings), Path(cache_dir))
    online.build()
    return time.monotonic() - started


@dataclass
class ModelDrift:
    key: tuple[Any, ...]
    reference: Any
    engine: Any
    outputs: Any = None
    output_engine: Any = None
    online: Any = None
    sequential: Any = None
    performance: Any = None  # detectors.performance.PerformanceWindows
    online_settings: dict[str, Any] | None = None
    calibration: Future[float] | None = None
    calibration_seconds: float | None = None
    calibration_error: str | None = None


class Worker:
    def __init__(self, state_dir: Path) -> None:
        self.cache_dir = state_dir / "drift" / "calibration"
        self.models: dict[str, ModelDrift] = {}
        self._pool: ProcessPoolExecutor | None = None

    def pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"),
                                             initializer=_die_with_parent)
        return self._pool

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        handler = getattr(self, f"op_{op}", None)
        if handler is None:
            return {"error": f"op: unknown operation {op!r}"}
        try:
            return dict(handler(request))
        except (ValueError, KeyError, TypeError) as exc:
            return {"error": f"{op}: {exc}"}

    def op_ping(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"pid": os.getpid()}

    def op_configure(self, request: dict[str, Any]) -> dict[str, Any]:
        from tfwarden.detectors.drift.engines import OnlineDrift, make_engine
        from tfwarden.detectors.drift.reference import Reference, load_reference_file
        from tfwarden.detectors.drift.settings import BatchSettings, OnlineSettings
        from tfwarden.serving.tfserving.predictionlog import read_rows

        model = request["model"]
        features, kinds = list(request["features"]), request.get("kinds")
        source = request["reference"]
        if "path" in source:
            reference = load_reference_file(Path(source["path"]), features, kinds,
                                            limit=int(source.get("limit", 100_000)),
                                            read_logged=read_rows)
        else:
            reference = Reference.from_rows(source["rows"], features, kinds,
                                            source=source.get("name", "captured"))
        batch = BatchSettings(**request.get("batch", {}))
        online = request.get("online")
        sequential = request.get("sequential")
        key = (reference.hash, request["engine"], batch, repr(online), repr(sequential))
        current = self.models.get(model)
        if current is None or current.key != key:
            current = ModelDrift(key, reference, make_engine(request["engine"], reference, batch),
                                 online_settings=online)
            self.models[model] = current
            if online:
                current.online = OnlineDrift(reference, OnlineSettings(**online), self.cache_dir)
            if sequential is not None:
                from tfwarden.detectors.drift.sequential import SequentialDrift
                from tfwarden.detectors.drift.settings import SequentialSettings

                current.sequential = SequentialDrift(reference, SequentialSettings(**sequential))
        outputs = request.get("outputs")
        if outputs:
            out_ref = Reference.from_rows(outputs["rows"], outputs["features"],
                                          source="stable predictions on the reference")
            if current.outputs is None or current.outputs.hash != out_ref.hash:
                current.outputs = out_ref
                current.output_engine = make_engine(request["engine"], out_ref, batch)
        self._configure_performance(current, outputs, request.get("performance"))
        self._advance_calibration(current)
        return {"model": model, "reference": {"hash": reference.hash, "rows": reference.rows,
                                              "features": reference.features,
                                              "kinds": reference.kinds,
                                              "source": reference.source},
                "outputs": None if current.outputs is None else {
                    "hash": current.outputs.hash, "rows": current.outputs.rows},
                "online": self._online_state(current),
                "performance": None if current.performance is None else
                current.performance.summary(),
                "calibration_seconds": current.calibration_seconds}

    def _configure_performance(self, state: ModelDrift, outputs: dict[str, Any] | None,
                               settings: dict[str, Any] | None) -> None:
        """Fit the accuracy estimator on stable's predictions (kept while they, the output and
        the labels file stay the same)."""
        from tfwarden.core.errors import InvalidInput
        from tfwarden.detectors.performance import PerformanceWindows, load_labels

        if not outputs or not settings or state.outputs is None:
            state.performance = None
            return
        labels_path = settings.get("labels")
        try:
            stamp = os.stat(labels_path).st_mtime_ns if labels_path else None
        except OSError:
            stamp = -1
        key = (state.outputs.hash, settings.get("output"), int(settings["window_rows"]),
               labels_path, stamp, repr(outputs.get("indices")))
        if state.performance is not None and state.performance.key == key:
            return
        labels = None
        if labels_path:
            try:
                labels = load_labels(Path(labels_path))
                if len(labels) < state.reference.rows:
                    raise InvalidInput(f"reference_labels {labels_path}: {len(labels)} labels "
                                       f"for a reference of {state.reference.rows} rows")
            except InvalidInput as exc:
                state.performance = PerformanceWindows(key, settings.get("output"),
                                                       int(settings["window_rows"]),
                                                       error=str(exc))
                return
        state.performance = PerformanceWindows.fit(
            key, outputs["features"], outputs["rows"], settings.get("output"),
            int(settings["window_rows"]), labels, outputs.get("indices"))

    def _advance_calibration(self, state: ModelDrift) -> None:
        online = state.online
        if online is None or online.detectors:
            return
        if state.calibration is not None:
            if not state.calibration.done():
                return
            try:
                state.calibration_seconds = state.calibration.result()
                online.build()  # reads the thresholds the child wrote
            except Exception as exc:  # the child died or calibration failed
                state.calibration_error = f"{type(exc).__name__}: {exc}"
            state.calibration = None
        elif online.calibrated():
            online.build()  # thresholds cached by an earlier run: fast
        elif state.calibration_error is None:
            ref = online.reference
            settings = dict(state.online_settings or {})
            state.calibration = self.pool().submit(calibrate, ref.data, ref.features, ref.kinds,
                                                   ref.vocab, settings, str(self.cache_dir))

    def _online_state(self, state: ModelDrift) -> str:
        if state.online is None:
            return "off"
        if state.online.detectors:
            return "ready"
        return "failed" if state.calibration_error else "calibrating"

    def _model(self, request: dict[str, Any]) -> ModelDrift:
        model = request["model"]
        if model not in self.models:
            raise ValueError(f"model {model!r} is not configured in the drift worker")
        return self.models[model]

    def op_check(self, request: dict[str, Any]) -> dict[str, Any]:
        state = self._model(request)
        part = request.get("part", "inputs")
        reference, engine = (state.reference, state.engine) if part == "inputs" else \
            (state.outputs, state.output_engine)
        if engine is None:
            raise ValueError(f"model {request['model']!r} has no {part} reference")
        started = time.monotonic()
        report = engine.check(reference.encode(request["rows"]))
        report["seconds"] = round(time.monotonic() - started, 6)
        return dict(report)

    def op_sequential(self, request: dict[str, Any]) -> dict[str, Any]:
        state = self._model(request)
        if state.sequential is None:
            raise ValueError(f"model {request['model']!r} has no sequential drift configured")
        rows = request["rows"]
        versions = list(request.get("versions") or [None] * len(rows))
        if len(versions) != len(rows):
            raise ValueError(f"versions: expected {len(rows)} entries, got {len(versions)}")
        if not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in versions):
            raise ValueError("versions: expected integers or null")
        started = time.monotonic()
        report = state.sequential.observe(state.reference.encode(rows), versions)
        report["seconds"] = round(time.monotonic() - started, 6)
        return dict(report)

    def op_observe(self, request: dict[str, Any]) -> dict[str, Any]:
        state = self._model(request)
        self._advance_calibration(state)
        if state.online is None or not state.online.detectors:
            return {"online": self._online_state(state), "error_detail": state.calibration_error}
        result = state.online.observe(state.reference.encode(request["rows"]))
        return {"online": "ready", "calibration_seconds": state.calibration_seconds, **result}

    def op_performance(self, request: dict[str, Any]) -> dict[str, Any]:
        state = self._model(request)
        if state.performance is None:
            raise ValueError(f"model {request['model']!r} has no performance estimation "
                             f"configured (it needs the outputs reference)")
        started = time.monotonic()
        report = state.performance.observe(request.get("version"), list(request["features"]),
                                           request["rows"], float(request.get("confidence",
                                                                              0.95)))
        report["seconds"] = round(time.monotonic() - started, 6)
        return dict(report)

    def op_sample(self, request: dict[str, Any]) -> dict[str, Any]:
        state = self._model(request)
        ref = state.reference
        n = int(request.get("n", 500))
        step = max(1, ref.rows // max(1, n))
        indices = list(range(0, ref.rows, step))[:n]
        rows = []
        for raw in ref.data[indices]:
            rows.append([ref.vocab[j][int(v)] if j in ref.vocab and int(v) < len(ref.vocab[j])
                         else float(v) for j, v in enumerate(raw)])
        return {"features": ref.features, "rows": rows, "indices": indices}

    def op_stats(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"pid": os.getpid(), "rss_bytes": _rss_bytes(), "models": {
            name: {"reference": state.reference.hash, "online": self._online_state(state),
                   "calibration_seconds": state.calibration_seconds,
                   "calibration_error": state.calibration_error}
            for name, state in self.models.items()}}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(argv: list[str] | None = None) -> int:
    from tfwarden.core.workers import serve

    parser = argparse.ArgumentParser(prog="tfwarden-drift-worker")
    parser.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    worker = Worker(args.state_dir)
    try:
        return serve(worker.handle, "drift worker")
    finally:
        worker.close()


if __name__ == "__main__":
    sys.exit(main())
