"""Settings of the probes (``models[].probe``, ``memory[]``, ``promql`` in the configuration)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AnyHttpUrl, Field, ValidationInfo, field_validator

from tfwarden.core.settings import Name, Settings, resolve_path


class PredictProbeSettings(Settings):
    """Predict probe of one model: golden requests sent open-loop to each target."""

    protocol: Literal["rest", "grpc"] = "rest"
    address: Literal["versions", "labels", "latest"] = Field(
        "versions", description="Probe every AVAILABLE version, the listed labels, or the "
        "unlabeled (latest) endpoint.")
    labels: list[Annotated[str, Field(pattern=r"^[^/:]+$")]] = ["stable", "canary"]
    rate_per_second: float = Field(2.0, gt=0, le=200, description="Per target.")
    max_in_flight: int = Field(8, ge=1, le=1000)
    timeout_seconds: float = Field(2.0, gt=0, le=60)


class MemoryTargetSettings(Settings):
    """A process (pid or pid file) or a cgroup v2 directory whose memory tfwarden watches."""

    name: Name
    pid: int | None = Field(None, ge=1)
    pid_file: Path | None = None
    cgroup: Path | None = None
    limit_bytes: int | None = Field(None, gt=0, description="Limit when no cgroup gives one.")
    interval_seconds: float = Field(10.0, ge=0.5, le=3600)

    @field_validator("pid_file", "cgroup")
    @classmethod
    def _resolve(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else resolve_path(value, info)


class PromQLQuery(Settings):
    name: Name
    query: str = Field(min_length=1, description="An instant PromQL query.")
    metric: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]*$")] = Field(
        description="Sample metric name, e.g. rss_bytes (memory leak detection) or limit_bytes.")
    target_label: str = Field("", description="Series label whose value names the target.")
    model: str = ""
    interval_seconds: float = Field(30.0, ge=1, le=3600)


class PromQLSettings(Settings):
    url: AnyHttpUrl = Field(description="Prometheus base URL (queries go to /api/v1/query).")
    timeout_seconds: float = Field(5.0, gt=0, le=60)
    queries: list[PromQLQuery] = []
