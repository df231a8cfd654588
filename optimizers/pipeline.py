"""Optimize a model version: convert in a worker, validate against the source, publish or reject.

Lean (no TensorFlow in this process): every heavy step is a worker process
(``python -m tfwarden.optimizers.worker``, through the shared runner of ``core.workers``), one
at a time, each with a timeout, killed with its process group on timeout or cancellation,
reporting its peak RSS. tfmot jobs get ``TF_USE_LEGACY_KERAS=1`` in
their own environment only; the TFLite validator runs with ai-edge-litert and no TensorFlow.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfwarden.core import trace
from tfwarden.core.errors import OptimizeError, WorkerDown, WorkerFailed
from tfwarden.core.settings import default
from tfwarden.core.workers import WorkerProcess
from tfwarden.optimizers.gate import Tolerances, judge, latency_reasons
from tfwarden.optimizers.methods import METHODS
from tfwarden.optimizers.publish import publish, work_dir
from tfwarden.optimizers.settings import OptimizeSettings

WORKER = [sys.executable, "-m", "tfwarden.optimizers.worker"]


@dataclass
class Request:
    source: Path  # the source version directory (a SavedModel)
    method: str
    base: Path  # where the candidate is published (the model's base path)
    golden: Path  # golden inputs (.npz with x and optional y, .npy, .csv, or golden JSONL)
    representative: Path | None = None
    train: Path | None = None
    params: dict[str, Any] = field(default_factory=dict)
    tolerances: Tolerances = Tolerances()
    timeout_seconds: float = default(OptimizeSettings, "timeout_seconds")
    latency_runs: int = 200
    before_publish: Callable[[], None] | None = None  # raises to keep the candidate unpublished


@dataclass
class Report:
    method: str
    source: str
    accepted: bool
    version: int | None = None
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "source": self.source, "accepted": self.accepted,
                "version": self.version, "reasons": self.reasons, "metrics": self.metrics,
                "steps": self.steps}


class Runner:
    """Runs worker jobs one at a time, each in a fresh process (``core.workers``): a timeout,
    the process group killed on timeout or cancellation; ``cancel()`` kills the running one."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._worker: WorkerProcess | None = None

    async def run(self, job: dict[str, Any], timeout: float, legacy_keras: bool = False) -> \
            dict[str, Any]:
        kind = job["kind"]
        env = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_USE_LEGACY_KERAS": "1" if legacy_keras else None}
        async with self._lock:
            started = time.monotonic()
            worker = self._worker = WorkerProcess(WORKER, name=kind, env=env,
                                                  timeout_seconds=timeout, capture_stderr=True)
            try:
                result = await worker.request("job", job)
            except WorkerDown as exc:
                if exc.cause == "timeout":
                    raise OptimizeError(f"{kind} worker timed out after {timeout:.0f}s") from None
                raise OptimizeError(f"{kind} worker died (exit {exc.exit_code}) "
                                    f"{exc.stderr_tail[:300]}".strip()) from None
            except WorkerFailed as exc:
                raise OptimizeError(f"{kind}: {exc}") from None
            finally:
                self._worker = None
                await worker.stop()
        result.pop("id", None)
        result["seconds"] = round(time.monotonic() - started, 3)
        return result

    def cancel(self) -> None:
        if self._worker is not None:
            self._worker.kill()


def check(request: Request) -> None:
    """Refuse a request that cannot work, naming what is missing."""
    method = METHODS.get(request.method)
    if method is None:
        raise OptimizeError(f"method: expected one of {', '.join(METHODS)}, got "
                            f"{request.method!r}")
    if not (request.source / "saved_model.pb").is_file():
        raise OptimizeError(f"{request.source}: not a SavedModel version directory "
                            f"(no saved_model.pb)")
    if not request.golden.is_file():
        raise OptimizeError(f"golden set {request.golden}: no such file")
    if method.data in ("representative", "captured") and request.representative is None:
        raise OptimizeError(f"method {method.name} needs representative inputs "
                            f"(--representative FILE)")
    if method.data == "train" and request.train is None:
        raise OptimizeError(f"method {method.name} needs training data (--train FILE.npz with "
                            f"x and y)")
    if not request.base.is_dir():
        raise OptimizeError(f"{request.base}: the model's base path does not exist")


async def optimize(request: Request, runner: Runner | None = None,
                   provenance_extra: dict[str, Any] | None = None) -> Report:
    """Convert, validate, publish or reject. Raises OptimizeError if a step cannot run. Each
    worker step is traced as ``optimize.<kind>``."""
    check(request)
    base_runner = runner or Runner()
    method = METHODS[request.method]
    report = Report(request.method, str(request.source), accepted=False)

    async def step(name: str, job: dict[str, Any], legacy_keras: bool = False) -> dict[str, Any]:
        with trace.span(f"optimize.{job['kind']}", model_dir=job.get("model") or
                        job.get("source"), method=job.get("method")) as current:
            result = await base_runner.run(job, request.timeout_seconds, legacy_keras)
            current.set(seconds=result["seconds"], peak_rss_bytes=result.get("peak_rss_bytes"))
        report.steps.append({"step": name, **result})
        return result

    candidate = work_dir(request.base)  # hidden, next to the versions: same filesystem
    work = Path(tempfile.mkdtemp(prefix="tfwarden-optimize-"))  # outputs and scratch
    try:
        made = await step(method.worker, {
            "kind": method.worker, "method": method.name, "source": str(request.source),
            "out": str(candidate), "params": request.params, "size_of": None,
            "representative": str(request.representative) if request.representative else None,
            "train": str(request.train) if request.train else None},
            legacy_keras=method.worker == "tfmot")
        source = await step("validate-source", {
            "kind": "predict_savedmodel", "model": str(request.source),
            "inputs": str(request.golden), "out": str(work / "source.npy"),
            "latency_runs": request.latency_runs, "size_of": str(request.source)})
        validated = await step("validate-candidate", {
            "kind": "predict_tflite" if method.output == "tflite" else "predict_savedmodel",
            "model": str(candidate), "inputs": str(request.golden),
            "out": str(work / "candidate.npy"), "compare_to": str(work / "source.npy"),
            "labels": str(request.golden) if request.golden.suffix == ".npz" else None,
            "latency_runs": request.latency_runs, "size_of": str(candidate)})
        report.metrics = _metrics(made, source, validated, report.steps)
        report.reasons = judge(validated["agreement"], request.tolerances) + latency_reasons(
            source["latency"], validated["latency"], request.tolerances)
        if not report.reasons:
            if request.before_publish is not None:
                request.before_publish()
            report.version = _publish(request, candidate, report.metrics, provenance_extra)
            report.accepted = True
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if candidate.exists():  # rejected or failed: never left for a poller to find
            shutil.rmtree(candidate, ignore_errors=True)


def _metrics(made: dict[str, Any], source: dict[str, Any], validated: dict[str, Any],
             steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The candidate against its source: agreement, sizes, latency, peak memory per step."""
    size, new_size = source["size"], validated["size"]
    return {
        **validated["agreement"],
        "source_size_bytes": size["bytes"], "source_gzip_bytes": size["gzip_bytes"],
        "candidate_size_bytes": new_size["bytes"], "candidate_gzip_bytes": new_size["gzip_bytes"],
        "size_ratio": round(size["bytes"] / max(1, new_size["bytes"]), 3),
        "gzip_size_ratio": round(size["gzip_bytes"] / max(1, new_size["gzip_bytes"]), 3),
        "source_latency": source["latency"], "candidate_latency": validated["latency"],
        "speedup_p50": round(source["latency"]["p50_ms"] /
                             max(1e-9, validated["latency"]["p50_ms"]), 3),
        "peak_rss_bytes": {s["step"]: s["peak_rss_bytes"] for s in steps},
        "convert_seconds": made["seconds"],
    }


def _publish(request: Request, candidate: Path, metrics: dict[str, Any],
             provenance_extra: dict[str, Any] | None) -> int:
    """Publish the candidate as the next version, with its provenance (and an edge manifest
    for TFLite)."""
    method = METHODS[request.method]
    provenance = {
        "source_version": _version_of(request.source), "source": str(request.source),
        "method": method.name, "params": request.params, "metrics": metrics,
        "created_at": time.time(), "tools": _tool_versions(), **(provenance_extra or {})}
    manifest = None
    if method.output == "tflite":
        manifest = {"model": request.base.name, "method": method.name,
                    "quantization": method.name, "io": request.params.get("io", "float"),
                    "source_version": provenance["source_version"]}
    return publish(candidate, request.base, provenance, manifest)


def _version_of(path: Path) -> int | None:
    return int(path.name) if path.name.isdigit() else None


def _tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("tensorflow", "keras", "tf-keras", "tensorflow-model-optimization",
                 "ai-edge-litert", "tfwarden"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out
