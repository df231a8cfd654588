"""Settings and the finding of label-free performance estimation (docs/performance.md).

Light on purpose, like ``detectors.drift.settings``: the daemon imports this module (the
configuration, and the finding built from the drift worker's report); the estimator itself
(``detectors.performance``, numpy) runs only in the worker.

The verdict compares the interval of a window's estimated accuracy with the reference:
``regression`` when its upper bound is below ``reference_accuracy - tolerance``, ``ok`` when
its lower bound is above that threshold, ``inconclusive`` in between, under ``min_rows`` rows,
or without a report.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from tfwarden.core.settings import Settings, existing_file
from tfwarden.core.types import INCONCLUSIVE, OK, REGRESSION, Finding

DETECTOR = "performance"
TARGET = "accuracy"


class PerformanceSettings(Settings):
    """Estimated accuracy of a classifier from its probabilities, without labels (CBPE)."""

    tolerance: float = Field(
        0.05, gt=0, lt=1,
        description="Accuracy drop (absolute) from the reference that is a regression.")
    min_rows: int = Field(200, ge=10, le=1_000_000,
                          description="Rows in a window before a verdict other than "
                                      "inconclusive.")
    confidence: float = Field(0.95, gt=0.5, lt=1,
                              description="Coverage of the estimate's interval.")
    window_rows: int = Field(1000, ge=20, le=100_000,
                             description="Most recent rows of a version that are estimated.")
    output: str | None = Field(
        None, description="Output tensor with the class probabilities (softmax rows, or one "
                          "sigmoid column for binary); default: the model's only output.")
    reference_labels: Path | None = Field(
        None, description=".npy (1-D or one column) or .csv (one column, optional header) of "
                          "class indices, one per row of the drift reference file, in its order; "
                          "default: no labels (probabilities assumed calibrated).")

    @field_validator("reference_labels")
    @classmethod
    def _check_labels(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        value = existing_file(value, info, "reference_labels")
        if value is not None and value.suffix not in (".npy", ".csv"):
            raise ValueError(f"reference_labels {str(value)!r}: expected a .npy or .csv file")
        return value


def performance_finding(model: str, version: int | None, report: Mapping[str, Any] | None,
                        settings: PerformanceSettings, now: float, reason: str = "") -> Finding:
    """The ``performance`` finding of one version from an estimate (``CbpeReference.estimate``).

    ``report`` None (no estimate: worker down, no reference yet) gives ``inconclusive`` with
    ``reason``. Every finding carries what it was judged on: the estimate and its interval
    (effect), the threshold, rows, reference accuracy and whether the probabilities were
    calibrated against labels (evidence).
    """
    if report is None:
        return Finding(DETECTOR, INCONCLUSIVE, now, model=model, version=version, target=TARGET,
                       reason=reason or "no performance estimate",
                       evidence={"statistic": "estimated_accuracy", "samples": 0})
    estimate, low, high = (float(report[k]) for k in ("estimated_accuracy", "ci_low", "ci_high"))
    reference = float(report["reference_accuracy"])
    threshold = reference - settings.tolerance
    rows = int(report["rows"])
    verdict, why = _verdict(estimate, low, high, threshold, rows, settings)
    calibrated = bool(report["calibrated"])
    if not calibrated:
        why += " (probabilities assumed calibrated: no labelled reference)"
    return Finding(
        DETECTOR, verdict, now, model=model, version=version, target=TARGET,
        reason=f"v{version} {why}" if version is not None else why,
        effect={"estimated_accuracy": round(estimate, 6),
                "estimated_accuracy_ci": [round(low, 6), round(high, 6)],
                "accuracy_drop": round(reference - estimate, 6)},
        evidence={"statistic": "estimated_accuracy", "value": round(estimate, 6),
                  "threshold": round(threshold, 6), "samples": rows,
                  "reference_accuracy": round(reference, 6),
                  "reference_accuracy_source": report.get("reference_accuracy_source", ""),
                  "reference_rows": report.get("reference_rows"),
                  "calibrated": calibrated, "calibrator": report.get("calibrator", ""),
                  "confidence": report.get("confidence", settings.confidence),
                  "tolerance": settings.tolerance})


def _verdict(estimate: float, low: float, high: float, threshold: float, rows: int,
             settings: PerformanceSettings) -> tuple[str, str]:
    interval = f"{estimate:.1%} ({settings.confidence:.0%} CI {low:.1%}-{high:.1%})"
    if rows < settings.min_rows:
        return INCONCLUSIVE, f"{rows} of {settings.min_rows} rows estimated"
    if high < threshold:
        return REGRESSION, f"estimated accuracy {interval} is below {threshold:.1%}"
    if low > threshold:
        return OK, f"estimated accuracy {interval} is above {threshold:.1%}"
    return INCONCLUSIVE, f"estimated accuracy {interval} straddles {threshold:.1%}"
