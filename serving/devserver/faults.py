"""Fault injection for demos and tests: ``<version_dir>/devserver-faults.json``.

The file is re-read when its modification time changes (checked at most every 0.5 s per
version); removing it restores normal behaviour. Without the file nothing is added. Format
(every key optional; see docs/devserver.md)::

    {"latency": {"fixed_ms": 50} | {"lognormal": {"median_ms": 20, "sigma": 0.5}},
     "error": {"rate": 0.05, "code": "UNAVAILABLE", "message": "injected"},
     "leak": {"bytes_per_request": 1048576},
     "output": {"scale": 1.0, "offset": 0.0, "noise_std": 0.0},
     "seed": 7}
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tfwarden.core.errors import ServingStatus
from tfwarden.serving.devserver.status import HTTP_STATUS

FAULT_FILE = "devserver-faults.json"
RECHECK_SECONDS = 0.5
log = logging.getLogger("tfwarden.devserver.faults")

ErrorCode = Literal[
    "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"]
assert set(ErrorCode.__args__) == set(HTTP_STATUS) - {"OK"}  # type: ignore[attr-defined]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Lognormal(_Strict):
    median_ms: float = Field(gt=0)
    sigma: float = Field(ge=0, le=5)


class LatencyFault(_Strict):
    fixed_ms: float | None = Field(None, ge=0, le=600_000)
    lognormal: Lognormal | None = None

    @model_validator(mode="after")
    def _one(self) -> LatencyFault:
        if (self.fixed_ms is None) == (self.lognormal is None):
            raise ValueError("give exactly one of fixed_ms or lognormal")
        return self


class ErrorFault(_Strict):
    rate: float = Field(ge=0, le=1)
    code: ErrorCode = "UNAVAILABLE"
    message: str = "devserver fault injection"


class LeakFault(_Strict):
    bytes_per_request: int = Field(ge=0, le=1 << 30)


class OutputFault(_Strict):
    scale: float = 1.0
    offset: float = 0.0
    noise_std: float = Field(0.0, ge=0)


class FaultSpec(_Strict):
    latency: LatencyFault | None = None
    error: ErrorFault | None = None
    leak: LeakFault | None = None
    output: OutputFault | None = None
    seed: int | None = None


class FaultInjector:
    """Applies one version directory's fault file to its requests (thread-safe)."""

    def __init__(self, version_dir: Path) -> None:
        self.path = version_dir / FAULT_FILE
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._checked = 0.0
        self.spec: FaultSpec | None = None
        self._rng = np.random.default_rng()
        self._retained: list[bytearray] = []
        self.retained_bytes = 0

    def refresh(self) -> FaultSpec | None:
        now = time.monotonic()
        with self._lock:
            if now - self._checked < RECHECK_SECONDS:
                return self.spec
            self._checked = now
            try:
                mtime = self.path.stat().st_mtime
            except FileNotFoundError:
                if self.spec is not None:
                    log.info("faults removed for %s", self.path.parent)
                self.spec, self._mtime = None, None
                return None
            if mtime != self._mtime:
                self._mtime = mtime
                self.spec = self._read()
                self._rng = np.random.default_rng(self.spec.seed if self.spec else None)
            return self.spec

    def _read(self) -> FaultSpec | None:
        try:
            spec = FaultSpec.model_validate(json.loads(self.path.read_text()))
        except (OSError, ValueError, ValidationError) as exc:
            log.error("ignoring invalid fault file %s: %s", self.path, str(exc).replace("\n", " "))
            return None
        log.info("faults active for %s: %s", self.path.parent, spec.model_dump(exclude_none=True))
        return spec

    def before_inference(self) -> None:
        """Sleep, leak and maybe fail, as the fault file says (call in a worker thread)."""
        spec = self.refresh()
        if spec is None:
            return
        with self._lock:
            delay_ms = self._delay_ms(spec)
            fail = spec.error is not None and self._rng.random() < spec.error.rate
        if spec.leak is not None and spec.leak.bytes_per_request:
            block = bytearray(b"\x01") * spec.leak.bytes_per_request  # touched: real RSS
            with self._lock:
                self._retained.append(block)
                self.retained_bytes += len(block)
        if delay_ms > 0:
            time.sleep(delay_ms / 1000)
        if fail and spec.error is not None:
            raise ServingStatus(spec.error.code, spec.error.message)

    def _delay_ms(self, spec: FaultSpec) -> float:
        if spec.latency is None:
            return 0.0
        if spec.latency.fixed_ms is not None:
            return spec.latency.fixed_ms
        assert spec.latency.lognormal is not None
        params = spec.latency.lognormal
        return float(params.median_ms * math.exp(params.sigma * self._rng.standard_normal()))

    def perturb(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.spec
        if spec is None or spec.output is None:
            return outputs
        out = {}
        for name, value in outputs.items():
            if np.issubdtype(value.dtype, np.floating):
                with self._lock:
                    noise = self._rng.standard_normal(value.shape) * spec.output.noise_std
                value = (value * spec.output.scale + spec.output.offset + noise).astype(value.dtype)
            out[name] = value
        return out
