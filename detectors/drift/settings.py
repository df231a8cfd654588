"""Settings of the drift checks (``models[].drift`` and ``detection.drift_worker``).

Light on purpose: the daemon imports this module, the engines (numpy, scipy, alibi-detect) only
run in the drift worker, which receives these settings as JSON.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from tfwarden.core.settings import Settings, existing_file
from tfwarden.detectors.disagreement import DisagreementSettings
from tfwarden.detectors.performance_settings import PerformanceSettings


class BatchSettings(Settings):
    """One batch check of a window of rows against the reference."""

    p_value: float = Field(0.01, gt=0, lt=0.5, description="Per window, after correction.")
    correction: Literal["fdr", "bonferroni"] = "fdr"
    multivariate: Literal["mmd"] | None = Field(
        None, description="Also MMDDrift (TensorFlow backend) over the numeric features.")
    mmd_permutations: int = Field(100, ge=10, le=10_000)


class OnlineSettings(Settings):
    """Online (per-row) drift detection: alibi-detect CVMDriftOnline / FETDriftOnline."""

    ert: int = Field(5000, ge=100, le=1_000_000,
                     description="Expected run time in rows between false detections.")
    window_sizes: tuple[Annotated[int, Field(ge=2, le=2000)], ...] = Field(
        (2, 5, 10, 20, 50), min_length=1,
        description="Test windows in rows; small ones catch large shifts fast, large ones small "
                    "shifts.")
    n_bootstraps: int | None = Field(
        None, ge=1000, le=5_000_000,
        description="Bootstrap streams for the (slow, cached) calibration; default 4 x ert x "
                    "features (alibi-detect cannot estimate the threshold with fewer).")
    seed: int = 0

    def bootstraps(self, features: int) -> int:
        return self.n_bootstraps or max(10_000, 4 * self.ert * features)

    def key(self, reference_hash: str, detector: str) -> str:
        """Cache key of calibrated thresholds: the reference, the detector, these settings."""
        fields = {name: getattr(self, name) for name in OnlineSettings.model_fields}
        text = json.dumps([reference_hash, detector, fields], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class OnlineDriftSettings(OnlineSettings):
    hold_rows: int = Field(1000, ge=1, description="A detection keeps the finding for this many rows.")


WEEK_SECONDS = 7 * 86400.0


class SequentialSettings(Settings):
    """Sequential input drift (the default ``method``): an anytime-valid test per feature and
    direction, checked after every row, with no calibration (docs/drift.md)."""

    false_alarm_weeks: float = Field(
        4.0, gt=0, le=10_000,
        description="At most one false drift alarm per this many weeks (expected, over all "
                    "features together) ...")
    rows_per_second: float = Field(
        10.0, gt=0, le=1_000_000, description="... at this rate of captured rows.")
    effect_floor: float = Field(
        0.1, ge=0, le=1,
        description="Smallest drift of a numeric feature that makes a finding: Wasserstein "
                    "distance in reference standard deviations.")
    categorical_floor: float = Field(
        0.05, ge=0, le=1,
        description="Smallest drift of a categorical feature that makes a finding: total "
                    "variation distance between category shares.")
    reference_margin_sd: float = Field(
        2.0, ge=0, le=6,
        description="Differences within this many standard errors of the reference's own "
                    "sampling error are not evidence (a finite reference is compared with, "
                    "not a known distribution).")
    segment_rows: int = Field(20_000, ge=100, le=1_000_000,
                              description="Recent rows kept to size a detected drift.")

    @property
    def arl_rows(self) -> float:
        """Rows between false alarms the bound guarantees (on average)."""
        return self.false_alarm_weeks * WEEK_SECONDS * self.rows_per_second


class OutputDriftSettings(DisagreementSettings):
    """Output drift and canary-vs-stable disagreement on captured inputs (REST predict)."""

    enabled: bool = True
    rows_per_check: int = Field(100, ge=1, le=5000,
                                description="Captured rows sent to each version per check.")
    reference_rows: int = Field(500, ge=50, le=20_000,
                                description="Reference inputs predicted by stable for the "
                                            "output reference.")


class FeatureKind(Settings):
    name: str
    kind: Literal["numeric", "categorical"]


class DriftSettings(BatchSettings):
    """Data drift of one model's inputs and outputs (docs/drift.md)."""

    method: Literal["sequential", "window"] = Field(
        "sequential", description="sequential: every row through anytime-valid tests (no "
                                  "calibration); window: batch tests of window_rows windows.")
    sequential: SequentialSettings = SequentialSettings()
    engine: Literal["alibi", "scipy"] = Field(
        "alibi", description="alibi: alibi-detect (Business Source License); scipy: BSD.")
    reference: Path | None = Field(
        None, description=".npz/.npy/.csv file or PredictionLog TFRecord file/directory; "
                          "default: the first reference_rows rows captured for stable.")
    reference_rows: int = Field(2000, ge=100, le=100_000)
    features: list[FeatureKind] | None = Field(
        None, description="Feature kinds; default numeric, categorical for string inputs.")
    window_rows: int = Field(500, ge=20, le=100_000,
                             description="Rows per batch check (method window) and per output "
                                         "check.")
    consecutive: int = Field(2, ge=1, le=20,
                             description="Drifted windows in a row before the finding says so "
                                         "(method window).")
    interval_seconds: float = Field(10.0, ge=0.5, le=3600)
    online: OnlineDriftSettings | None = None
    outputs: OutputDriftSettings = OutputDriftSettings()
    performance: PerformanceSettings | None = Field(
        None, description="Estimated accuracy of each version from its class probabilities on "
                          "the captured rows (classifiers; docs/performance.md).")

    @field_validator("reference")
    @classmethod
    def _check_reference(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return existing_file(value, info, "reference", directory_too=True)

    @model_validator(mode="after")
    def _check_performance(self) -> DriftSettings:
        if self.performance is None:
            return self
        if not self.outputs.enabled:
            raise ValueError("performance needs outputs.enabled: it estimates the accuracy "
                             "from the output checks' predictions")
        if self.performance.reference_labels is not None and self.reference is None:
            raise ValueError("performance.reference_labels are aligned with the rows of the "
                             "drift reference file; set reference (a captured reference has "
                             "no labels)")
        return self

    @property
    def batch(self) -> BatchSettings:
        return BatchSettings(**{name: getattr(self, name) for name in BatchSettings.model_fields})

    def kinds(self, features: list[str] | tuple[str, ...]) -> list[str] | None:
        """Each feature's kind (numeric unless listed), or None when none is listed."""
        if self.features is None:
            return None
        by_name = {f.name: f.kind for f in self.features}
        return [by_name.get(f, "numeric") for f in features]


class DriftWorkerSettings(Settings):
    """The drift worker subprocess (alibi-detect or scipy)."""

    request_timeout_seconds: float = Field(30.0, gt=0, le=600)
    restart_backoff_max_seconds: float = Field(60.0, ge=1, le=3600)
