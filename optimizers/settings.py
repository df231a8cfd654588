"""What the reoptimize action needs of one model (``models[].optimize``; docs/optimizers.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from tfwarden.core.settings import existing_file
from tfwarden.optimizers.gate import Tolerances


class OptimizeSettings(Tolerances):
    method: Literal["float32", "dynamic", "float16", "int8", "recalibrate", "keras_float16",
                    "keras_int8", "prune", "prune_oneshot", "cluster"] = "int8"
    golden: Path = Field(description="Golden inputs: .npz with x (and labels y), .npy, .csv or "
                                     "golden JSONL.")
    representative: Path | None = Field(None, description="int8 calibration inputs.")
    train: Path | None = Field(None, description=".npz with x and y for prune and cluster.")
    params: dict[str, float | int | str] = {}
    timeout_seconds: float = Field(600.0, gt=0, le=7200)

    @field_validator("golden", "representative", "train")
    @classmethod
    def _check_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return existing_file(value, info)

    @property
    def tolerances(self) -> Tolerances:
        return Tolerances(**{name: getattr(self, name) for name in Tolerances.model_fields})
