"""tfwarden's configuration: YAML validated by pydantic models that forbid unknown fields.

``load_config(path)`` returns a frozen :class:`Config` or raises :class:`ConfigError` listing every
problem with its YAML path (``models[1].slo.availability``) and line. Relative paths in the file
are resolved against the directory of the file.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from tfwarden.core.errors import ConfigError, ConfigProblem
from tfwarden.daemon.yamlfile import format_path, line_of, read_yaml

DEFAULT_LISTEN = "127.0.0.1:9321"
SHIPPED_RULESETS = ("default",)
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _split_host_port(value: str) -> tuple[str, int]:
    """Parse ``host:port`` / ``[v6]:port``; raise ValueError with what was expected."""
    match = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", value)
    if not match:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:9321, got {value!r}")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be between 1 and 65535, got {port}")
    return host, port


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    if base is not None and not value.is_absolute():
        value = Path(base) / value
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Strict):
    """The daemon's own HTTP server."""

    listen: str = Field(DEFAULT_LISTEN, description="HOST:PORT of the HTTP API and /metrics.")
    bearer_token_file: Path | None = Field(
        None, description="File holding the bearer token required by write endpoints."
    )
    shutdown_grace_seconds: float = Field(
        5.0, gt=0, le=8, description="How long in-flight jobs may run after SIGTERM."
    )

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        _split_host_port(value)
        return value

    @field_validator("bearer_token_file")
    @classmethod
    def _check_token_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        value = _resolve_path(value, info)
        if not value.is_file():
            raise ValueError(f"bearer token file {str(value)!r} does not exist")
        if not value.read_text(encoding="utf-8").strip():
            raise ValueError(f"bearer token file {str(value)!r} is empty")
        return value

    @property
    def host(self) -> str:
        return _split_host_port(self.listen)[0]

    @property
    def port(self) -> int:
        return _split_host_port(self.listen)[1]

    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


class LoggingConfig(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"


class TFServingEndpoint(_Strict):
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
            _split_host_port(value)
        return value

    @field_validator("model_config_file")
    @classmethod
    def _resolve_model_config(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _resolve_path(value, info)


class SLOConfig(_Strict):
    """Service level objectives of one model."""

    availability: float = Field(0.999, gt=0.5, lt=1, description="Target success ratio.")
    latency_p99_ms: float | None = Field(None, gt=0)
    latency_p50_ms: float | None = Field(None, gt=0)
    window_days: int = Field(28, ge=1, le=90)


class ProbeConfig(_Strict):
    """Predict probe of one model: golden requests sent open-loop to each target."""

    protocol: Literal["rest", "grpc"] = "rest"
    address: Literal["versions", "labels", "latest"] = Field(
        "versions", description="Probe every AVAILABLE version, the listed labels, or the "
        "unlabeled (latest) endpoint.")
    labels: list[Annotated[str, Field(pattern=r"^[^/:]+$")]] = ["stable", "canary"]
    rate_per_second: float = Field(2.0, gt=0, le=200, description="Per target.")
    max_in_flight: int = Field(8, ge=1, le=1000)
    timeout_seconds: float = Field(2.0, gt=0, le=60)


class LifecycleConfig(_Strict):
    """Automatic canary management of one model (needs the endpoint's model_config_file)."""

    enabled: bool = True
    auto_canary: bool = Field(True, description="A new version directory starts a canary.")
    version_poll_seconds: float = Field(5.0, ge=1, le=3600)
    keep_previous_seconds: float = Field(
        3600.0, ge=0, description="Keep the previous version loaded this long after a promotion.")
    router: Literal["labels", "nginx", "shadow"] = Field(
        "labels", description="labels: clients pick stable/canary; nginx: weighted split; "
        "shadow: no live traffic to the canary, judged on replayed golden requests.")


class FeatureKind(_Strict):
    name: str
    kind: Literal["numeric", "categorical"]


class OnlineDriftConfig(_Strict):
    """Online (per-row) drift detection: alibi-detect CVMDriftOnline / FETDriftOnline."""

    ert: int = Field(5000, ge=100, le=1_000_000,
                     description="Expected run time in rows between false detections.")
    window_sizes: list[Annotated[int, Field(ge=2, le=2000)]] = Field(
        [2, 5, 10, 20, 50], min_length=1,
        description="Test windows in rows; small ones catch large shifts fast, large ones small "
                    "shifts.")
    n_bootstraps: int | None = Field(
        None, ge=1000, le=5_000_000,
        description="Bootstrap streams for the (slow, cached) calibration; default 4 x ert x "
                    "features (alibi-detect cannot estimate the threshold with fewer).")
    hold_rows: int = Field(1000, ge=1, description="A detection keeps the finding for this many rows.")


class OutputDriftConfig(_Strict):
    """Output drift and canary-vs-stable disagreement on captured inputs (REST predict)."""

    enabled: bool = True
    rows_per_check: int = Field(100, ge=1, le=5000,
                                description="Captured rows sent to each version per check.")
    reference_rows: int = Field(500, ge=50, le=20_000,
                                description="Reference inputs predicted by stable for the "
                                            "output reference.")
    disagreement_threshold: float = Field(0.05, gt=0, lt=1)
    min_rows: int = Field(200, ge=10)
    atol: float = Field(1e-3, ge=0)
    rtol: float = Field(1e-2, ge=0)


class DriftConfig(_Strict):
    """Data drift of one model's inputs and outputs (docs/drift.md)."""

    engine: Literal["alibi", "scipy"] = Field(
        "alibi", description="alibi: alibi-detect (Business Source License); scipy: BSD.")
    reference: Path | None = Field(
        None, description=".npz/.npy/.csv file or PredictionLog TFRecord file/directory; "
                          "default: the first reference_rows rows captured for stable.")
    reference_rows: int = Field(2000, ge=100, le=100_000)
    features: list[FeatureKind] | None = Field(
        None, description="Feature kinds; default numeric, categorical for string inputs.")
    p_value: float = Field(0.01, gt=0, lt=0.5, description="Per window, after correction.")
    correction: Literal["fdr", "bonferroni"] = "fdr"
    multivariate: Literal["mmd"] | None = Field(
        None, description="Also MMDDrift (TensorFlow backend) over the numeric features.")
    window_rows: int = Field(500, ge=20, le=100_000, description="Rows per batch check.")
    consecutive: int = Field(2, ge=1, le=20,
                             description="Drifted windows in a row before the finding says so.")
    interval_seconds: float = Field(10.0, ge=0.5, le=3600)
    online: OnlineDriftConfig | None = None
    outputs: OutputDriftConfig = OutputDriftConfig()

    @field_validator("reference")
    @classmethod
    def _check_reference(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        value = _resolve_path(value, info)
        if not value.exists():
            raise ValueError(f"reference {str(value)!r} does not exist")
        return value


class OptimizeConfig(_Strict):
    """What the reoptimize action needs (docs/optimizers.md)."""

    method: Literal["float32", "dynamic", "float16", "int8", "recalibrate", "keras_float16",
                    "keras_int8", "prune", "prune_oneshot", "cluster"] = "int8"
    golden: Path = Field(description="Golden inputs: .npz with x (and labels y), .npy, .csv or "
                                     "golden JSONL.")
    representative: Path | None = Field(None, description="int8 calibration inputs.")
    train: Path | None = Field(None, description=".npz with x and y for prune and cluster.")
    params: dict[str, float | int | str] = {}
    min_top1_agreement: float = Field(0.97, ge=0, le=1)
    max_accuracy_drop_points: float = Field(1.0, ge=0)
    max_abs_error: float | None = Field(None, gt=0)
    timeout_seconds: float = Field(600.0, gt=0, le=7200)

    @field_validator("golden", "representative", "train")
    @classmethod
    def _check_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        value = _resolve_path(value, info)
        if not value.is_file():
            raise ValueError(f"file {str(value)!r} does not exist")
        return value


class ModelConfig(_Strict):
    """A model tfwarden watches on one serving endpoint."""

    name: Annotated[str, Field(pattern=_NAME, max_length=200)]
    serving: str = Field(description="Name of an entry under `serving`.")
    golden_requests: Path | None = Field(
        None, description="JSONL file of golden requests with expected outputs."
    )
    slo: SLOConfig = SLOConfig()
    probe: ProbeConfig | None = Field(None, description="Predict probe; none when omitted.")
    lifecycle: LifecycleConfig = LifecycleConfig()
    drift: DriftConfig | None = Field(None, description="Data drift checks; none when omitted.")
    optimize: OptimizeConfig | None = Field(
        None, description="Inputs of the reoptimize policy action; none: the action is refused.")

    @field_validator("golden_requests")
    @classmethod
    def _check_golden(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        value = _resolve_path(value, info)
        if not value.is_file():
            raise ValueError(f"golden request file {str(value)!r} does not exist")
        return value


class MemoryTarget(_Strict):
    """A process (pid or pid file) or a cgroup v2 directory whose memory tfwarden watches."""

    name: Annotated[str, Field(pattern=_NAME)]
    pid: int | None = Field(None, ge=1)
    pid_file: Path | None = None
    cgroup: Path | None = None
    limit_bytes: int | None = Field(None, gt=0, description="Limit when no cgroup gives one.")
    interval_seconds: float = Field(10.0, ge=0.5, le=3600)

    @field_validator("pid_file", "cgroup")
    @classmethod
    def _resolve(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _resolve_path(value, info)


class NginxConfig(_Strict):
    """The nginx that fronts TF Serving (lifecycle.router: nginx; example in deploy/nginx)."""

    conf: Path = Field(description="nginx's main configuration file (-c).")
    prefix: Path = Field(Path("/etc/nginx"), description="nginx's prefix (-p).")
    include_dir: Path = Field(description="Directory tfwarden writes its include files to.")
    binary: str = "nginx"
    mirror_url: AnyHttpUrl | None = Field(
        None, description="Where sampled predict bodies are mirrored (tfwarden's capture API).")
    mirror_percent: int = Field(10, ge=1, le=100)

    @field_validator("conf", "prefix", "include_dir")
    @classmethod
    def _resolve(cls, value: Path, info: ValidationInfo) -> Path:
        return _resolve_path(value, info)


class PromQLQuery(_Strict):
    name: Annotated[str, Field(pattern=_NAME)]
    query: str = Field(min_length=1, description="An instant PromQL query.")
    metric: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]*$")] = Field(
        description="Sample metric name, e.g. rss_bytes (memory leak detection) or limit_bytes.")
    target_label: str = Field("", description="Series label whose value names the target.")
    model: str = ""
    interval_seconds: float = Field(30.0, ge=1, le=3600)


class PromQLConfig(_Strict):
    url: AnyHttpUrl = Field(description="Prometheus base URL (queries go to /api/v1/query).")
    timeout_seconds: float = Field(5.0, gt=0, le=60)
    queries: list[PromQLQuery] = []


class AlertmanagerConfig(_Strict):
    url: AnyHttpUrl = Field(description="Alertmanager base URL; alerts go to /api/v2/alerts.")
    timeout_seconds: float = Field(5.0, gt=0, le=60)


class WebhookConfig(_Strict):
    url: AnyHttpUrl
    timeout_seconds: float = Field(5.0, gt=0, le=60)


class ReceiveRule(_Strict):
    """Turns an alert received from Alertmanager's webhook into a finding."""

    alertname: str
    detector: Literal["latency", "errors", "burn", "memory", "drift"] = "burn"
    model_label: str = Field("model_name", description="Alert label naming the model.")
    expire_seconds: float = Field(900.0, gt=0, description="Forget a firing alert not re-sent.")


class AlertingConfig(_Strict):
    alertmanager: AlertmanagerConfig | None = None
    webhooks: list[WebhookConfig] = []
    receive: list[ReceiveRule] = Field(
        [], description="Alerts accepted at POST /api/v1/alertmanager, as findings.")
    labels: dict[str, str] = Field({}, description="Extra labels added to every alert.")

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _LABEL_NAME.match(name):
                raise ValueError(f"label name {name!r} must match [a-zA-Z_][a-zA-Z0-9_]*")
        return value


class PoliciesConfig(_Strict):
    ruleset: str = Field(
        "default", description="A shipped rule set name or the path of a YAML rule file."
    )
    dry_run: bool = Field(False, description="Decide and journal, but do not act.")

    @field_validator("ruleset")
    @classmethod
    def _check_ruleset(cls, value: str, info: ValidationInfo) -> str:
        if value in SHIPPED_RULESETS:
            return value
        path = _resolve_path(Path(value), info)
        if not path.is_file():
            raise ValueError(
                f"expected a shipped rule set ({', '.join(SHIPPED_RULESETS)}) "
                f"or an existing rule file, got {value!r}"
            )
        from tfwarden.policies.rules import load_ruleset

        try:
            load_ruleset(str(path))
        except ConfigError as exc:
            raise ValueError(f"invalid rule file: {exc}") from None
        return str(path)


class LatencyDetection(_Strict):
    """Latency regression detector (docs/detection.md)."""

    min_pairs: int = Field(50, ge=10, le=100_000)
    effect_floor: float = Field(0.10, ge=0, le=10, description="Ignore regressions under this.")
    arl_pairs: float = Field(1e7, ge=100, description="Average run length to a false alarm.")
    max_pair_gap_seconds: float = Field(5.0, gt=0, le=600)
    stale_seconds: float = Field(30.0, gt=0, le=86400)
    tail_arl: float = Field(1e5, ge=100)
    baseline_seconds: float = Field(600.0, gt=0, le=86400)
    min_baseline: int = Field(200, ge=20)


class ErrorDetection(_Strict):
    min_pairs: int = Field(50, ge=10, le=100_000)
    arl_discordant: float = Field(1e5, ge=100)
    error_floor: float = Field(0.005, ge=0, lt=1)
    stale_seconds: float = Field(30.0, gt=0, le=86400)


class MemoryDetection(_Strict):
    warmup_seconds: float = Field(600.0, ge=0)
    bin_seconds: float = Field(300.0, ge=10, le=86400)
    window_seconds: float = Field(86400.0, ge=600)
    min_bins: int = Field(6, ge=3)
    alpha: float = Field(1e-3, gt=0, lt=0.5)
    min_slope_bytes_per_hour: float = Field(1048576.0, ge=0)
    stale_seconds: float = Field(120.0, gt=0)


class CaptureConfig(_Strict):
    """Input capture (POST /api/v1/capture/{model}, /api/v1/samples/{model})."""

    reservoir_rows: int = Field(5000, ge=10, le=1_000_000, description="Rows kept per version.")
    recent_rows: int = Field(20_000, ge=100, le=1_000_000,
                             description="Newest rows per model kept for drift checks.")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Larger bodies get 413.")
    client_rows_per_second: int = Field(50_000, ge=1, description="Per client; more gets 429.")
    signature_ttl_seconds: float = Field(60.0, gt=0)


class DriftWorkerConfig(_Strict):
    """The drift worker subprocess (alibi-detect or scipy)."""

    request_timeout_seconds: float = Field(30.0, gt=0, le=600)
    restart_backoff_max_seconds: float = Field(60.0, ge=1, le=3600)


class DetectionConfig(_Strict):
    latency: LatencyDetection = LatencyDetection()
    errors: ErrorDetection = ErrorDetection()
    memory: MemoryDetection = MemoryDetection()
    drift_worker: DriftWorkerConfig = DriftWorkerConfig()


class TracingConfig(_Strict):
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
        return None if value is None else _resolve_path(value, info)


class Config(_Strict):
    """The whole configuration file."""

    server: ServerConfig = ServerConfig()
    logging: LoggingConfig = LoggingConfig()
    state_dir: Path = Field(description="Directory of the SQLite state (journal, lifecycle).")
    serving: dict[Annotated[str, Field(pattern=_NAME)], TFServingEndpoint] = {}
    models: list[ModelConfig] = []
    memory: list[MemoryTarget] = []
    promql: PromQLConfig | None = None
    nginx: NginxConfig | None = None
    capture: CaptureConfig = CaptureConfig()
    detection: DetectionConfig = DetectionConfig()
    alerting: AlertingConfig = AlertingConfig()
    policies: PoliciesConfig = PoliciesConfig()
    tracing: TracingConfig = TracingConfig()

    @field_validator("state_dir")
    @classmethod
    def _resolve_state_dir(cls, value: Path, info: ValidationInfo) -> Path:
        return _resolve_path(value, info)


def _cross_check(config: Config) -> list[ConfigProblem]:
    """Problems that span fields: references, uniqueness, safety rules."""
    problems: list[ConfigProblem] = []
    seen: set[tuple[str, str]] = set()
    for i, model in enumerate(config.models):
        if model.serving not in config.serving:
            known = ", ".join(sorted(config.serving)) or "none defined"
            problems.append(ConfigProblem(
                f"models[{i}].serving",
                f"unknown serving endpoint {model.serving!r} (defined: {known})",
            ))
        if (model.name, model.serving) in seen:
            problems.append(ConfigProblem(
                f"models[{i}].name",
                f"model {model.name!r} is listed twice for serving endpoint {model.serving!r}",
            ))
        seen.add((model.name, model.serving))
    for name, endpoint in config.serving.items():
        if endpoint.rest_url is None and endpoint.grpc_address is None:
            problems.append(ConfigProblem(
                f"serving.{name}", "needs at least one of rest_url or grpc_address"
            ))
    for i, model in enumerate(config.models):
        probed = config.serving.get(model.serving)
        if (model.probe is not None and probed is not None and model.probe.protocol == "rest"
                and probed.rest_url is None):
            problems.append(ConfigProblem(
                f"models[{i}].probe", f"needs serving.{model.serving}.rest_url (protocol rest)"))
        if (model.probe is not None and probed is not None and model.probe.protocol == "grpc"
                and probed.grpc_address is None):
            problems.append(ConfigProblem(
                f"models[{i}].probe", f"needs serving.{model.serving}.grpc_address (protocol grpc)"))
        if (model.probe is not None and model.probe.address == "versions" and probed is not None
                and probed.grpc_address is None):
            problems.append(ConfigProblem(
                f"models[{i}].probe.address",
                f"'versions' needs serving.{model.serving}.grpc_address to discover versions"))
        if model.drift is not None and probed is not None and probed.grpc_address is None:
            problems.append(ConfigProblem(
                f"models[{i}].drift", f"needs serving.{model.serving}.grpc_address (the capture "
                                      f"signature comes from GetModelMetadata)"))
        if (model.drift is not None and model.drift.outputs.enabled and probed is not None
                and probed.rest_url is None):
            problems.append(ConfigProblem(
                f"models[{i}].drift.outputs", f"needs serving.{model.serving}.rest_url, or "
                                              f"enabled: false"))
        if model.lifecycle.router == "nginx" and config.nginx is None:
            problems.append(ConfigProblem(f"models[{i}].lifecycle.router",
                                          "router nginx needs the top-level nginx section"))
        if model.lifecycle.router == "nginx" and probed is not None and probed.rest_url is None:
            problems.append(ConfigProblem(f"models[{i}].lifecycle.router",
                                          f"router nginx needs serving.{model.serving}.rest_url"))
    if config.tracing.exporter == "file" and config.tracing.file is None:
        problems.append(ConfigProblem("tracing.file", "exporter file needs tracing.file"))
    names: set[str] = set()
    for i, target in enumerate(config.memory):
        given = [k for k in ("pid", "pid_file", "cgroup") if getattr(target, k) is not None]
        if len(given) != 1:
            problems.append(ConfigProblem(
                f"memory[{i}]", f"give exactly one of pid, pid_file or cgroup (got {len(given)})"))
        if target.name in names:
            problems.append(ConfigProblem(f"memory[{i}].name", f"duplicate name {target.name!r}"))
        names.add(target.name)
    if not config.server.is_loopback() and config.server.bearer_token_file is None:
        problems.append(ConfigProblem(
            "server.bearer_token_file",
            f"required when server.listen ({config.server.listen}) is not a loopback address",
        ))
    return problems


def _describe(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind not in ("value_error", "assertion_error") and "input" in error:
        shown = repr(error["input"])
        message += f" (got {shown if len(shown) <= 60 else shown[:57] + '...'})"
    return message


def _allowed_fields(loc: tuple[Any, ...]) -> list[str]:
    """Field names allowed next to an unknown field at ``loc``, for a helpful message."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return list(model.model_fields)


def validate_config(data: Any, source: str, base_dir: Path, node: Any = None) -> Config:
    """Validate already-parsed YAML ``data``; raise ConfigError listing every problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [ConfigProblem("", "expected a mapping at the top level")])
    try:
        config = Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            message = _describe(error)
            if error["type"] == "extra_forbidden":
                allowed = _allowed_fields(loc)
                if allowed:
                    message += f" (allowed: {', '.join(allowed)})"
            problems.append(ConfigProblem(format_path(loc), message, line_of(node, loc)))
        raise ConfigError(source, problems) from None
    problems = _cross_check(config)
    if problems:
        located = [
            ConfigProblem(p.path, p.message, line_of(node, _parse_path(p.path))) for p in problems
        ]
        raise ConfigError(source, located)
    return config


def _parse_path(path: str) -> list[str | int]:
    parts: list[str | int] = []
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path):
        parts.append(int(index) if index else name)
    return parts


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML configuration file."""
    path = Path(path)
    data, node = read_yaml(path)
    return validate_config(data, str(path), path.resolve().parent, node)


def read_bearer_token(config: Config) -> str | None:
    """The configured bearer token, stripped, or None when write endpoints are open."""
    token_file = config.server.bearer_token_file
    if token_file is None:
        return None
    try:
        token = token_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(str(token_file), [ConfigProblem(
            "server.bearer_token_file", f"cannot read: {exc}")]) from exc
    return token


def config_json_schema() -> dict[str, Any]:
    """JSON Schema of the configuration file, for editors."""
    schema = Config.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "tfwarden configuration"
    return schema
