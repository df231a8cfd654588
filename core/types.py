"""Value types shared across tfwarden: frozen, past-tense where they are events."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sample:
    """One measurement: ``metric`` of ``model``/``version`` (or a non-model ``target``) at ``t``.

    ``t`` is Unix seconds; ``value`` is in the unit the metric name says (``latency_ms``,
    ``rss_bytes``); ``ok`` is False for a failed probe request (its value is still the time it
    took). ``version`` is None for server-wide or non-model samples.
    """

    t: float
    source: str
    metric: str
    value: float
    model: str = ""
    version: int | None = None
    target: str = ""
    ok: bool = True
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProbeResult:
    """What one probe run saw. Failure is data: ``ok`` False with ``error``, never an exception."""

    probe: str
    target: str
    t: float
    ok: bool
    duration_seconds: float
    samples: tuple[Sample, ...] = ()
    error: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "probe": self.probe, "target": self.target, "t": self.t, "ok": self.ok,
            "duration_seconds": round(self.duration_seconds, 6), "error": self.error,
            "samples": len(self.samples), "detail": dict(self.detail),
        }


# The Samples an edge device's report becomes (probes/edge -> detectors/edge; labels: cohort,
# hashed device, count): its mean inference time, failed inferences, load time, memory, error logs
EDGE_INFERENCE_MS, EDGE_FAILED_INFERENCES = "edge_inference_ms", "edge_failed_inferences"
EDGE_LOAD_MS, EDGE_MEMORY_BYTES = "edge_load_ms", "edge_memory_bytes"
EDGE_ERROR_LOGS = "edge_error_logs"

OK = "ok"
REGRESSION = "regression"
INCONCLUSIVE = "inconclusive"
VERDICTS = (OK, REGRESSION, INCONCLUSIVE)


@dataclass(frozen=True)
class Finding:
    """A detector's verdict on one model version (or memory target) at time ``t``.

    ``verdict`` is ok, regression or inconclusive; missing data and probe failures give
    inconclusive, never ok or regression. ``effect`` holds effect sizes with confidence
    intervals (``median_ratio``, ``median_ratio_ci``...); ``evidence`` the sample counts and
    statistics (e-value, p-value) behind the verdict; ``severity`` is page, ticket, info or "".
    """

    detector: str
    verdict: str
    t: float
    model: str = ""
    version: int | None = None
    target: str = ""
    effect: Mapping[str, Any] = field(default_factory=dict)
    evidence: Mapping[str, Any] = field(default_factory=dict)
    severity: str = ""
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"t": self.t, "detector": self.detector, "model": self.model,
                "version": self.version, "target": self.target, "verdict": self.verdict,
                "severity": self.severity, "reason": self.reason, "effect": dict(self.effect),
                "evidence": dict(self.evidence)}


@dataclass(frozen=True)
class Decision:
    """What a rule decided for a model, and the findings that justified it."""

    t: float
    rule: str
    model: str
    action: str
    params: Mapping[str, Any]
    reason: str
    findings: tuple[Mapping[str, Any], ...] = ()
    alert: str | None = None
    dry_run: bool = False
    needs_approval: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"t": self.t, "rule": self.rule, "model": self.model, "action": self.action,
                "params": dict(self.params), "reason": self.reason, "alert": self.alert,
                "dry_run": self.dry_run, "needs_approval": self.needs_approval,
                "findings": [dict(f) for f in self.findings]}


RolePair = tuple[int | None, int | None]  # (stable, canary) versions of a model


STATE_NAMES = {0: "UNKNOWN", 10: "START", 20: "LOADING", 30: "AVAILABLE", 40: "UNLOADING",
               50: "END"}
STATE_NUMBERS = {name: number for number, name in STATE_NAMES.items()}


@dataclass(frozen=True)
class VersionState:
    """One version of a model as the server reports it (GetModelStatus)."""

    version: int
    state: str  # UNKNOWN, START, LOADING, AVAILABLE, UNLOADING, END
    error_code: int = 0
    error_message: str = ""

    @property
    def available(self) -> bool:
        return self.state == "AVAILABLE"

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "state": self.state, "error_code": self.error_code,
                "error_message": self.error_message}
