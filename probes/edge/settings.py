"""Settings of the edge receiver (``edge`` in the configuration file; docs/edge.md). Apart from
the receiver so that reading a configuration never loads the OTLP protobuf modules."""

from __future__ import annotations

from pydantic import Field

from tfwarden.core.settings import Name, Settings


class EdgeModelSettings(Settings):
    """An edge model whose telemetry tfwarden keeps (``edge.models[]``)."""

    name: Name
    cohort_by: list[str] = Field(
        ["ml.delegate", "device.model.identifier"], max_length=4,
        description="Attributes whose values make a cohort.")
    max_cohorts: int = Field(50, ge=1, le=1000, description="Per model; more pool as 'other'.")


class EdgeSettings(Settings):
    """The OTLP/HTTP receiver (POST /v1/metrics, /v1/logs) and its limits."""

    models: list[EdgeModelSettings] = []
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024,
                                description="Per request, after decompression; more gets 413.")
    client_points_per_second: int = Field(
        20_000, ge=1, description="Data points and log records per client address; more: 429.")
    max_streams: int = Field(200_000, ge=100, le=10_000_000,
                             description="Cumulative histogram streams remembered for deltas.")
    cors_origins: list[str] = Field(
        [], description="Browser origins allowed to post OTLP (exact, e.g. https://app.example)")
