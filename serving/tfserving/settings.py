"""Settings of one TF Serving endpoint (``serving.<name>`` in the configuration)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AnyHttpUrl, Field, ValidationInfo, field_validator

from tfwarden.core.settings import Settings, resolve_path, split_host_port


class EndpointSettings(Settings):
    """A TensorFlow Serving server (or `tfwarden devserver`)."""

    kind: Literal["tfserving"]
    rest_url: AnyHttpUrl | None = Field(None, description="REST base URL, e.g. http://host:8501")
    grpc_address: str | None = Field(None, description="gRPC HOST:PORT, e.g. host:8500")
    metrics_url: AnyHttpUrl | None = Field(
        None, description="Prometheus page, e.g. http://host:8501/monitoring/prometheus/metrics"
    )
    model_config_file: Path | None = Field(
        None, description="The --model_config_file this server reads (written by tfwarden)."
    )
    timeout_seconds: float = Field(5.0, gt=0, le=120)
    status_interval_seconds: float = Field(
        5.0, ge=0.5, le=3600, description="How often the status probe calls GetModelStatus.")
    metrics_interval_seconds: float = Field(
        15.0, ge=1, le=3600, description="How often Serving's metrics page is scraped.")
    config_delivery: Literal["grpc", "file"] = Field(
        "grpc", description="grpc: HandleReloadConfigRequest; file: the server polls the file "
        "(--model_config_file_poll_wait_seconds).")

    @field_validator("grpc_address")
    @classmethod
    def _check_grpc(cls, value: str | None) -> str | None:
        if value is not None:
            split_host_port(value)
        return value

    @field_validator("model_config_file")
    @classmethod
    def _resolve_model_config(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else resolve_path(value, info)
