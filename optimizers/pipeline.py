"""Optimize a model version: convert in a worker, validate against the source, publish or reject.

Lean (no TensorFlow in this process): every heavy step is a worker process
(``optimizers.worker``), one at a time, each with a timeout, killed with its process group on
timeout or cancellation, reporting its peak RSS. tfmot jobs get ``TF_USE_LEGACY_KERAS=1`` in
their own environment only; the TFLite validator runs with ai-edge-litert and no TensorFlow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfwarden.core.errors import OptimizeError
from tfwarden.optimizers.gate import Tolerances, judge, latency_reasons
from tfwarden.optimizers.methods import METHODS
from tfwarden.optimizers.publish import publish, work_dir

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
    timeout_seconds: float = 600.0
    latency_runs: int = 200


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
    """Runs worker jobs one at a time; ``cancel()`` kills the running one (shutdown)."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._proc: asyncio.subprocess.Process | None = None

    async def run(self, job: dict[str, Any], timeout: float, legacy_keras: bool = False) -> \
            dict[str, Any]:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        env.pop("TF_USE_LEGACY_KERAS", None)
        if legacy_keras:
            env["TF_USE_LEGACY_KERAS"] = "1"
        async with self._lock:
            started = time.monotonic()
            proc = self._proc = await asyncio.create_subprocess_exec(
                *WORKER, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True)
            try:
                stdout, stderr = await asyncio.wait_for(
                    proc.communicate(json.dumps(job).encode()), timeout)
            except TimeoutError:
                self._kill(proc)
                await proc.wait()
                raise OptimizeError(f"{job['kind']} worker timed out after {timeout:.0f}s") from None
            except asyncio.CancelledError:
                self._kill(proc)
                await proc.wait()
                raise
            finally:
                self._proc = None
        lines = stdout.decode(errors="replace").strip().splitlines()
        try:
            result = json.loads(lines[-1]) if lines else None
        except ValueError:
            result = None
        if not isinstance(result, dict):
            tail = stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise OptimizeError(f"{job['kind']} worker died (exit {proc.returncode}) "
                                f"{tail[0][:300]}".strip())
        if "error" in result:
            raise OptimizeError(f"{job['kind']}: {result['error']}")
        result["seconds"] = round(time.monotonic() - started, 3)
        return result

    @staticmethod
    def _kill(proc: asyncio.subprocess.Process) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def cancel(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._kill(self._proc)


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


def _no_trace(name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    return contextlib.nullcontext()


async def optimize(request: Request, runner: Runner | None = None,
                   provenance_extra: dict[str, Any] | None = None,
                   trace_step: Callable[..., contextlib.AbstractContextManager[Any]] = _no_trace,
                   ) -> Report:
    """Convert, validate, publish or reject. Raises OptimizeError if a step cannot run.
    ``trace_step(name, **attributes)`` wraps each worker step (the daemon's tracing spans)."""
    check(request)
    base_runner = runner or Runner()

    async def step(job: dict[str, Any], timeout: float,
                   legacy_keras: bool = False) -> dict[str, Any]:
        with trace_step(f"optimize.{job['kind']}", model_dir=job.get("model") or
                        job.get("source"), method=job.get("method")) as current:
            result = await base_runner.run(job, timeout, legacy_keras)
            if current is not None:
                current.set(seconds=result["seconds"], peak_rss_bytes=result.get("peak_rss_bytes"))
            return result

    method = METHODS[request.method]
    report = Report(request.method, str(request.source), accepted=False)
    candidate = work_dir(request.base)  # hidden, next to the versions: same filesystem
    work = Path(tempfile.mkdtemp(prefix="tfwarden-optimize-"))  # outputs and scratch
    try:
        convert_job = {"kind": method.worker, "method": method.name,
                       "source": str(request.source), "out": str(candidate),
                       "params": request.params, "size_of": None,
                       "representative": str(request.representative)
                       if request.representative else None,
                       "train": str(request.train) if request.train else None}
        made = await step(convert_job, request.timeout_seconds,
                                legacy_keras=method.worker == "tfmot")
        report.steps.append({"step": method.worker, **made})
        labels = str(request.golden) if request.golden.suffix == ".npz" else None
        source = await step({
            "kind": "predict_savedmodel", "model": str(request.source),
            "inputs": str(request.golden), "out": str(work / "source.npy"),
            "latency_runs": request.latency_runs, "size_of": str(request.source)},
            request.timeout_seconds)
        report.steps.append({"step": "validate-source", **source})
        kind = "predict_tflite" if method.output == "tflite" else "predict_savedmodel"
        validated = await step({
            "kind": kind, "model": str(candidate), "inputs": str(request.golden),
            "out": str(work / "candidate.npy"), "compare_to": str(work / "source.npy"),
            "labels": labels, "latency_runs": request.latency_runs, "size_of": str(candidate)},
            request.timeout_seconds)
        report.steps.append({"step": "validate-candidate", **validated})
        agreement = validated["agreement"]
        report.metrics = {
            **agreement,
            "source_size_bytes": source["size"]["bytes"],
            "source_gzip_bytes": source["size"]["gzip_bytes"],
            "candidate_size_bytes": validated["size"]["bytes"],
            "candidate_gzip_bytes": validated["size"]["gzip_bytes"],
            "size_ratio": round(source["size"]["bytes"] / max(1, validated["size"]["bytes"]), 3),
            "gzip_size_ratio": round(source["size"]["gzip_bytes"] /
                                     max(1, validated["size"]["gzip_bytes"]), 3),
            "source_latency": source["latency"], "candidate_latency": validated["latency"],
            "speedup_p50": round(source["latency"]["p50_ms"] /
                                 max(1e-9, validated["latency"]["p50_ms"]), 3),
            "peak_rss_bytes": {s["step"]: s["peak_rss_bytes"] for s in report.steps},
            "convert_seconds": made["seconds"],
        }
        report.reasons = judge(agreement, request.tolerances) + latency_reasons(
            source["latency"], validated["latency"], request.tolerances)
        if report.reasons:
            return report
        provenance = {
            "source_version": _version_of(request.source), "source": str(request.source),
            "method": method.name, "params": request.params, "metrics": report.metrics,
            "created_at": time.time(), "tools": _tool_versions(),
            **(provenance_extra or {})}
        manifest = None
        if method.output == "tflite":
            manifest = {"model": request.base.name, "method": method.name,
                        "quantization": method.name, "io": request.params.get("io", "float"),
                        "source_version": provenance["source_version"]}
        report.version = publish(candidate, request.base, provenance, manifest)
        report.accepted = True
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if candidate.exists():  # rejected or failed: never left for a poller to find
            shutil.rmtree(candidate, ignore_errors=True)


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
