"""The configuration file's sections. Stage settings are the stages' own types (each default
written once, next to the code that uses it); the daemon's own sections are here."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AnyHttpUrl, Field, ValidationInfo, field_validator, model_validator

from tfwarden.core.settings import NAME, Name, Settings, existing_file, resolve_path, split_host_port
from tfwarden.detectors.alerts import ReceiveRule
from tfwarden.detectors.drift.settings import DriftSettings, DriftWorkerSettings
from tfwarden.detectors.edge import EdgeVerdictSettings
from tfwarden.detectors.roster import DetectionSettings, ModelObjectives
from tfwarden.lifecycle.edge import EdgeRolloutSettings
from tfwarden.lifecycle.settings import AlertSettings, LifecycleSettings, NginxSettings
from tfwarden.optimizers.settings import OptimizeSettings
from tfwarden.policies.settings import PolicySettings
from tfwarden.probes.capture import CaptureSettings
from tfwarden.probes.edge.settings import EdgeModelSettings, EdgeSettings
from tfwarden.probes.settings import MemoryTargetSettings, PredictProbeSettings, PromQLSettings
from tfwarden.serving.tfserving.settings import EndpointSettings

DEFAULT_LISTEN = "127.0.0.1:9321"


class ServerConfig(Settings):
    """The daemon's own HTTP server."""

    listen: str = Field(DEFAULT_LISTEN, description="HOST:PORT of the HTTP API and /metrics.")
    bearer_token_file: Path | None = Field(
        None, description="File holding the bearer token required by write endpoints."
    )
    ingest_token_file: Path | None = Field(
        None, description="File holding a token the capture endpoints accept besides the "
                          "operators' (for mirrors and devices, which are not operators).")
    shutdown_grace_seconds: float = Field(
        5.0, gt=0, le=8, description="How long in-flight jobs may run after SIGTERM."
    )
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate (chain) to serve HTTPS with; read again on reload.")
    tls_key_file: Path | None = Field(
        None, description="PEM private key of tls_cert_file; read again on reload.")

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        split_host_port(value)
        return value

    @field_validator("bearer_token_file", "ingest_token_file")
    @classmethod
    def _check_token_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        what = "bearer token file" if info.field_name == "bearer_token_file" else \
            "ingest token file"
        value = resolve_path(value, info)
        if not value.is_file():
            raise ValueError(f"{what} {str(value)!r} does not exist")
        if not value.read_text(encoding="utf-8").strip():
            raise ValueError(f"{what} {str(value)!r} is empty")
        return value

    @field_validator("tls_cert_file", "tls_key_file")
    @classmethod
    def _check_tls_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        what = "TLS certificate file" if info.field_name == "tls_cert_file" else "TLS key file"
        return existing_file(value, info, what)

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both or neither")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None

    @property
    def host(self) -> str:
        return split_host_port(self.listen)[0]

    @property
    def port(self) -> int:
        return split_host_port(self.listen)[1]

    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


class JournalConfig(Settings):
    """Retention of the state journal (docs/operations.md): the oldest entries go first, once
    older than ``max_age_days`` or beyond the newest ``max_size_mb``; what is kept stays
    append-only."""

    max_age_days: float = Field(90.0, gt=0, description="Entries older than this are deleted.")
    max_size_mb: float = Field(
        256.0, ge=1, description="Payload size (plus a fixed overhead per entry) kept at most.")


class StateConfig(Settings):
    """Where the durable state lives: SQLite under ``state_dir`` (one daemon), or a PostgreSQL
    database that several replicas share (docs/operations.md, "PostgreSQL state")."""

    kind: Literal["sqlite", "postgres"] = "sqlite"
    dsn_file: Path | None = Field(None, description=(
        "postgres: file holding a libpq connection string or URI (it may carry the password, so "
        "it is a file: keep it mode 0600), e.g. host=db.internal dbname=tfwarden user=tfwarden"))
    max_connections: int = Field(4, ge=1, le=64, description="postgres: connection pool size.")
    connect_timeout_seconds: float = Field(10.0, gt=0, le=300)
    lease_seconds: float = Field(15.0, ge=1, le=600, description=(
        "postgres: how long a replica's ownership of a unit lasts unless renewed (every third "
        "of it); a dead replica's units are taken over within it plus a third."))
    replica_name: Annotated[str, Field(pattern=NAME)] | None = Field(None, description=(
        "postgres: this replica's name in the lease table (default: the host name); two "
        "replicas on one host need their own."))
    replica_url: AnyHttpUrl | None = Field(None, description=(
        "postgres: where operators and the other replicas' pages reach this replica's API "
        "(default: server.listen, a wildcard host replaced by the address of this host's "
        "name, e.g. the pod IP)."))

    @field_validator("dsn_file")
    @classmethod
    def _check_dsn_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        value = existing_file(value, info, "DSN file")
        assert value is not None
        if not value.read_text(encoding="utf-8").strip():
            raise ValueError(f"DSN file {str(value)!r} is empty")
        return value

    @model_validator(mode="after")
    def _postgres_needs_dsn(self) -> StateConfig:
        if self.kind == "postgres" and self.dsn_file is None:
            raise ValueError("kind postgres needs dsn_file (a file holding the connection string)")
        return self


class LoggingConfig(Settings):
    level: Literal["debug", "info", "warning", "error"] = "info"


class TracingConfig(Settings):
    """OpenTelemetry traces of decisions and actions (docs/operations.md)."""

    exporter: Literal["none", "otlp", "file"] = "none"
    endpoint: AnyHttpUrl = Field(AnyHttpUrl("http://127.0.0.1:4318/v1/traces"),
                                 description="OTLP/HTTP traces endpoint (exporter otlp).")
    file: Path | None = Field(None, description="JSON lines of spans (exporter file).")
    service_name: str = "tfwarden"
    sample_ratio: float = Field(1.0, ge=0, le=1)
    timeout_seconds: float = Field(5.0, gt=0, le=60)

    @field_validator("file")
    @classmethod
    def _resolve_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else resolve_path(value, info)


class ModelConfig(Settings):
    """A model tfwarden watches on one serving endpoint."""

    name: Name
    serving: str = Field(description="Name of an entry under `serving`.")
    golden_requests: Path | None = Field(
        None, description="JSONL file of golden requests with expected outputs."
    )
    slo: ModelObjectives = ModelObjectives()
    probe: PredictProbeSettings | None = Field(None, description="Predict probe; none when omitted.")
    lifecycle: LifecycleSettings = LifecycleSettings()
    drift: DriftSettings | None = Field(None, description="Data drift checks; none when omitted.")
    optimize: OptimizeSettings | None = Field(
        None, description="Inputs of the reoptimize policy action; none: the action is refused.")

    @field_validator("golden_requests")
    @classmethod
    def _check_golden(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return existing_file(value, info, "golden request file")


class EdgeModelConfig(EdgeModelSettings):
    """An edge model: its telemetry (the receiver), and with ``rollout`` its staged rollouts."""

    base_path: Path | None = Field(None, description=(
        "Directory of the model's published edge versions (N/manifest.json, as "
        "`tfwarden optimize` writes them); needed by rollout."))
    download_url: str = Field(
        "/api/v1/edge/{model}/versions/{version}/{file}", description=(
            "Where devices fetch a version ({model}, {version}, {file}); a path is served by "
            "tfwarden itself from base_path, or give your CDN's URL."))
    rollout: EdgeRolloutSettings | None = Field(None, description="Staged rollouts; none: off.")
    verdicts: EdgeVerdictSettings = EdgeVerdictSettings()

    @field_validator("base_path")
    @classmethod
    def _resolve_base(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        value = resolve_path(value, info)
        if not value.is_dir():
            raise ValueError(f"edge base path {str(value)!r} is not a directory")
        return value

    @field_validator("download_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        try:
            value.format(model="m", version=1, file="model.tflite")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"download_url may use only {{model}}, {{version}} and {{file}} "
                             f"({exc})") from None
        if not value.startswith(("/", "https://", "http://")):
            raise ValueError("download_url must be a path (/...) or an http(s) URL")
        return value

    @model_validator(mode="after")
    def _rollout_needs_versions(self) -> EdgeModelConfig:
        if self.rollout is not None and self.base_path is None:
            raise ValueError("rollout needs base_path (where the published versions are)")
        return self


class EdgeConfig(EdgeSettings):
    models: list[EdgeModelConfig] = []  # type: ignore[assignment]


class DetectionConfig(DetectionSettings):
    drift_worker: DriftWorkerSettings = DriftWorkerSettings()


class AlertingConfig(AlertSettings):
    receive: list[ReceiveRule] = Field(
        [], description="Alerts accepted at POST /api/v1/alertmanager, as findings.")


class Config(Settings):
    """The whole configuration file."""

    server: ServerConfig = ServerConfig()
    logging: LoggingConfig = LoggingConfig()
    state_dir: Path = Field(description="Directory of the local state (the SQLite journal and "
                            "lifecycle unless `state.kind` is postgres; worker files, artefacts).")
    state: StateConfig = StateConfig()
    journal: JournalConfig = JournalConfig()
    serving: dict[Annotated[str, Field(pattern=NAME)], EndpointSettings] = {}
    models: list[ModelConfig] = []
    memory: list[MemoryTargetSettings] = []
    promql: PromQLSettings | None = None
    nginx: NginxSettings | None = None
    capture: CaptureSettings = CaptureSettings()
    edge: EdgeConfig = EdgeConfig()
    detection: DetectionConfig = DetectionConfig()
    alerting: AlertingConfig = AlertingConfig()
    policies: PolicySettings = PolicySettings()
    tracing: TracingConfig = TracingConfig()

    @field_validator("state_dir")
    @classmethod
    def _resolve_state_dir(cls, value: Path, info: ValidationInfo) -> Path:
        return resolve_path(value, info)

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)
