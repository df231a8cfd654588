"""A fleet of simulated edge devices that report to tfwarden as apps do (docs/edge.md).

Each device runs the real OpenTelemetry Python SDK: its own ``MeterProvider`` and
``LoggerProvider`` (Resource: ``ml.model.name``, ``ml.model.version``, its attributes,
``device.id``) with the OTLP/HTTP exporters (protobuf, gzip, bearer token). Each simulated
inference really calls ``invoke()`` on a LiteRT interpreter (``ai_edge_litert``) of the model
file the device runs; the duration it reports is the measured time plus an injected, seeded
latency drawn from the :class:`Profile` of its (version, cohort), and failures and crashes are
drawn from the same profile. Everything but the measured microseconds is a function of the seed.

A round (:meth:`Fleet.report_round`) makes every device run ``k`` inferences and export once
(one metrics request per device, one logs request when it has error records), as an app that
reports every minute; :meth:`Fleet.run` spaces rounds in time, ``report_round`` alone does not
wait. Before a round devices whose assignment expired ask an :data:`AssignmentSource` which
version to run: :func:`fixed_assignment` (a function of the device id, the packaged
half_plus_two model) or :class:`HttpAssignments` (``GET {base}/api/v1/edge/{model}/assignment``);
a device told another version downloads it (sha256 and size checked), loads it and reports
under a new provider (the version is a Resource attribute).

The fleet keeps a ledger of what the daemon was told (:meth:`Fleet.tallies`): per version and
cohort the devices, inferences, failed inferences, loads, error logs and exception types of
the exports that succeeded, so a test compares it with ``GET /api/v1/edge/{model}`` exactly.

For the demo, the benchmark and the tests only: the daemon never imports this module.

    fleet = Fleet("http://127.0.0.1:9321", "digits", Fleet.grid(150, ["gpu", "xnnpack"],
                  ["pixel-8", "galaxy-s23"]), token="ingest-secret", seed=7,
                  profile=Profiles(Profile(latency_ms=8), {(2, "ml.delegate=gpu | "
                  "device.model.identifier=pixel-8"): Profile(latency_ms=8, multiplier=2)}),
                  assignment=fixed_assignment(lambda device_id: 1 + zlib.crc32(...) % 2))
    with fleet:
        fleet.report_round()
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import shutil
import tempfile
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import requests
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk._logs import LoggerProvider, LogRecordProcessor, ReadWriteLogRecord
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

from tfwarden.core.errors import InvalidInput

MODEL_FILE = Path(__file__).resolve().parent / "demo-data" / "edge" / "half_plus_two.tflite"
INFERENCE_BUCKETS_MS = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500)
LOAD_BUCKETS_MS = (5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000, 2000, 5000)
COHORT_BY = ("ml.delegate", "device.model.identifier")
SCOPE = "tfwarden.fleet"
SERVICE = "tfwarden-fleet"  # service.name of the simulated app


def runtime_version() -> str:
    """The installed LiteRT's version (``ml.runtime.version``)."""
    try:
        return importlib.metadata.version("ai-edge-litert")
    except importlib.metadata.PackageNotFoundError:
        import ai_edge_litert

        return str(getattr(ai_edge_litert, "__version__", "unknown"))


def cohort_of(cohort_by: Sequence[str], attributes: Mapping[str, str]) -> str:
    """A cohort's name as the daemon writes it (``attr=value | attr=value``)."""
    return " | ".join(f"{a}={attributes.get(a, '')[:100]}" for a in cohort_by)


# -- what a device is and what it draws --------------------------------------------------------
@dataclass(frozen=True)
class DeviceSpec:
    """A device: its raw id (sent as ``device.id``, hashed by the daemon) and attributes."""

    device_id: str
    delegate: str = "cpu"
    device_model: str = "generic"
    os_name: str = "android"
    os_version: str = "14"
    runtime_version: str = field(default_factory=runtime_version)

    def attributes(self) -> dict[str, str]:
        """Its Resource attributes besides the model's and the id, by OpenTelemetry names."""
        return {"ml.delegate": self.delegate, "device.model.identifier": self.device_model,
                "ml.runtime.name": "litert", "ml.runtime.version": self.runtime_version,
                "os.name": self.os_name, "os.version": self.os_version}


@dataclass(frozen=True)
class Profile:
    """What is injected for one (version, cohort): inference latency lognormal with median
    ``latency_ms * multiplier`` and log-sd ``sigma``; each inference fails with ``error_rate``
    (an ``error.type`` from ``error_types``, and an error log with that ``exception.type``);
    each round a device crashes with ``crash_rate`` (a FATAL log ``crash_type``; what it had not
    exported is lost; it restarts and loads the model again); model loads lognormal around
    ``load_ms``; memory around ``memory_bytes``."""

    latency_ms: float = 8.0
    sigma: float = 0.25
    multiplier: float = 1.0
    error_rate: float = 0.0
    crash_rate: float = 0.0
    error_types: tuple[str, ...] = ("DelegateError",)
    crash_type: str = "SIGSEGV"
    load_ms: float = 40.0
    load_sigma: float = 0.3
    memory_bytes: float = 80e6

    def __post_init__(self) -> None:
        if not (self.latency_ms > 0 and self.multiplier > 0 and self.sigma >= 0):
            raise InvalidInput(f"profile: latency_ms and multiplier must be > 0, sigma >= 0: "
                               f"{self}")
        if not (0 <= self.error_rate <= 1 and 0 <= self.crash_rate <= 1):
            raise InvalidInput(f"profile: error_rate and crash_rate must be in [0, 1]: {self}")
        if not self.error_types:
            raise InvalidInput("profile: error_types must name at least one type")


ProfileSource = Callable[[int, str], Profile]
"""(version, cohort name) -> the Profile injected for it."""


class Profiles:
    """A :data:`ProfileSource` from a table: ``overrides`` keyed by (version, cohort), where
    either may be None for any; the most specific match wins (both, then version, then
    cohort), else ``default``."""

    def __init__(self, default: Profile | None = None,
                 overrides: Mapping[tuple[int | None, str | None], Profile] | None = None) -> None:
        self.default = default or Profile()
        self.overrides = dict(overrides or {})

    def __call__(self, version: int, cohort: str) -> Profile:
        for key in ((version, cohort), (version, None), (None, cohort)):
            if key in self.overrides:
                return self.overrides[key]
        return self.default


@dataclass(frozen=True)
class RoundPlan:
    """What one device does in one round, drawn from the seed: per inference its input, the
    injected ms and the error type (None: it succeeds); ``crash_at`` (None: no crash) is the
    number of inferences done before the crash; ``memory_bytes`` is reported at the export."""

    inputs: tuple[float, ...]
    injected_ms: tuple[float, ...]
    errors: tuple[str | None, ...]
    crash_at: int | None
    memory_bytes: float


def device_key(device_id: str) -> int:
    return zlib.crc32(device_id.encode())


def plan_round(seed: int, device_id: str, round_index: int, profile: Profile,
               inferences: int) -> RoundPlan:
    """The seeded plan of a device's round (independent of the other devices and of order)."""
    rng = np.random.default_rng([seed, device_key(device_id), round_index, 0])
    inputs = rng.uniform(-10.0, 10.0, inferences)
    normal = rng.standard_normal(inferences)
    injected = profile.latency_ms * profile.multiplier * np.exp(profile.sigma * normal)
    fails = rng.random(inferences) < profile.error_rate
    kinds = rng.integers(0, len(profile.error_types), inferences)
    crash = rng.random() < profile.crash_rate
    crash_at = int(rng.integers(0, inferences + 1)) if crash else None
    memory = profile.memory_bytes * (1.0 + 0.02 * float(rng.standard_normal()))
    return RoundPlan(tuple(float(x) for x in inputs), tuple(float(x) for x in injected),
                     tuple(profile.error_types[int(k)] if f else None for f, k in zip(fails, kinds,
                                                                                      strict=True)),
                     crash_at, max(memory, 1.0))


def plan_load(seed: int, device_id: str, load_index: int, profile: Profile) -> float:
    """The injected ms of a device's ``load_index``-th model load."""
    rng = np.random.default_rng([seed, device_key(device_id), load_index, 1])
    return float(profile.load_ms * math.exp(profile.load_sigma * float(rng.standard_normal())))


_BASE: list[Resource] = []


def _base_resource() -> Resource:
    """What ``Resource.create`` adds (the SDK's detectors: telemetry.sdk.*, service.name),
    detected once: merged with each device's attributes it is ``Resource.create(attributes)``
    without running the detectors (in a thread pool) per provider."""
    if not _BASE:
        _BASE.append(Resource.create({}))
    return _BASE[0]


def _session() -> requests.Session:
    """A session that ignores proxy and netrc settings of the environment (the simulator
    talks to its base URL only; reading them costs half a millisecond a request)."""
    session = requests.Session()
    session.trust_env = False
    return session


# -- models ------------------------------------------------------------------------------------
_PACKAGED: list[str] = []


def _packaged_sha256() -> str:
    if not _PACKAGED:
        _PACKAGED.append(hashlib.sha256(MODEL_FILE.read_bytes()).hexdigest())
    return _PACKAGED[0]


class Model:
    """A model file in a LiteRT interpreter (shared by the devices that run it; invocations
    are serialized by a lock, the interpreter is not thread-safe)."""

    def __init__(self, path: Path, sha256: str | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        start = time.perf_counter()
        self.path = path
        self.sha256 = sha256 or hashlib.sha256(path.read_bytes()).hexdigest()
        self.interpreter: Any = Interpreter(model_path=str(path))
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.load_ms = (time.perf_counter() - start) * 1000
        self.lock = threading.Lock()
        self.invocations = 0
        self.half_plus_two = self.sha256 == _packaged_sha256()

    def invoke(self, x: float) -> tuple[float, float]:
        """One inference on ``x``: (output, measured ms)."""
        value = np.full(self.input["shape"], x, dtype=self.input["dtype"])
        with self.lock:
            start = time.perf_counter_ns()
            self.interpreter.set_tensor(self.input["index"], value)
            self.interpreter.invoke()
            out = self.interpreter.get_tensor(self.output["index"])
            elapsed = time.perf_counter_ns() - start
            self.invocations += 1
        return float(np.asarray(out).reshape(-1)[0]), elapsed / 1e6


@dataclass(frozen=True)
class Assignment:
    """The version a device should run and where its file is: ``path`` (a local file, for
    fixed assignments) or ``url`` (relative to the fleet's base URL) with ``sha256`` and
    ``size_bytes``; asked again after ``ttl_seconds``. ``answer`` is the daemon's JSON."""

    version: int
    url: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    ttl_seconds: float = math.inf
    cohort: str | None = None
    path: Path | None = None
    answer: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_answer(cls, answer: Any) -> Assignment:
        """From the JSON of ``GET /api/v1/edge/{model}/assignment`` (InvalidInput if it does
        not fit the contract)."""
        if not isinstance(answer, dict):
            raise InvalidInput(f"assignment: expected a JSON object, got {answer!r:.200}")
        version, url = answer.get("version"), answer.get("url")
        sha, size, ttl = answer.get("sha256"), answer.get("size_bytes"), answer.get("ttl_seconds")
        if not isinstance(version, int) or isinstance(version, bool) or not isinstance(url, str) \
                or not isinstance(sha, str) or not isinstance(size, int) \
                or not isinstance(ttl, int | float):
            raise InvalidInput("assignment: version (int), url, sha256 (str), size_bytes (int) "
                               f"and ttl_seconds (number) are required: {answer!r:.300}")
        cohort = answer.get("cohort")
        return cls(version, url, sha, size, float(ttl),
                   cohort if isinstance(cohort, str) else None, None, answer)


AssignmentSource = Callable[[DeviceSpec], Assignment]
"""Which version a device should run (called before a round when its assignment expired)."""


def fixed_assignment(version: int | Callable[[str], int], path: Path = MODEL_FILE,
                     ttl_seconds: float = math.inf) -> AssignmentSource:
    """Every device on ``version`` (or ``version(device_id)``), all running the local file
    ``path`` (the packaged half_plus_two model by default)."""

    def assign(spec: DeviceSpec) -> Assignment:
        number = version(spec.device_id) if callable(version) else version
        return Assignment(int(number), ttl_seconds=ttl_seconds, path=path)

    return assign


class HttpAssignments:
    """Asks the daemon: ``GET {base}/api/v1/edge/{model}/assignment?device_id=<raw id>&<the
    device's attributes by their OpenTelemetry names>`` with the bearer token."""

    def __init__(self, base_url: str, model: str, token: str | None = None,
                 session: requests.Session | None = None, timeout: float = 10.0) -> None:
        self.url = f"{base_url.rstrip('/')}/api/v1/edge/{model}/assignment"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.session = session or _session()
        self.timeout = timeout
        self.requests = 0

    def __call__(self, spec: DeviceSpec) -> Assignment:
        params = {"device_id": spec.device_id, **spec.attributes()}
        self.requests += 1
        response = self.session.get(self.url, params=params, headers=self.headers,
                                    timeout=self.timeout)
        if response.status_code != 200:
            raise InvalidInput(f"assignment of {spec.device_id}: HTTP {response.status_code}: "
                               f"{response.text[:300]}")
        return Assignment.from_answer(response.json())


class ModelStore:
    """The model files devices run, downloaded once per sha256 (checked with the size) into
    ``directory``, each in one :class:`Model`. Relative URLs are relative to ``base_url``;
    absolute ones must be under it (the simulator talks to that URL only)."""

    def __init__(self, base_url: str | None = None, token: str | None = None,
                 session: requests.Session | None = None, directory: Path | None = None,
                 timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/") if base_url else None
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.session = session or _session()
        self.timeout = timeout
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="tfwarden-fleet-")
            directory = Path(self._tmp.name)
        self.directory = directory
        self.models: dict[str, Model] = {}
        self.downloads = 0
        self._lock = threading.Lock()

    def model(self, assignment: Assignment) -> Model:
        with self._lock:
            if assignment.path is not None:
                key = f"path:{assignment.path}"
                if key not in self.models:
                    self.models[key] = Model(assignment.path)
                return self.models[key]
            if assignment.url is None or assignment.sha256 is None:
                raise InvalidInput(f"assignment of version {assignment.version} names no file")
            key = f"sha256:{assignment.sha256}"
            if key not in self.models:
                self.models[key] = Model(self._download(assignment), assignment.sha256)
            model = self.models[key]
            size = model.path.stat().st_size
            if assignment.size_bytes is not None and size != assignment.size_bytes:
                raise InvalidInput(f"version {assignment.version}: the file of sha256 "
                                   f"{assignment.sha256} has {size} bytes, the assignment says "
                                   f"{assignment.size_bytes}")
            return model

    def resolve(self, url: str) -> str:
        if urlsplit(url).scheme:
            if self.base_url is None or not (url == self.base_url or
                                             url.startswith(self.base_url + "/")):
                raise InvalidInput(f"model URL {url!r} is not under the fleet's base URL "
                                   f"{self.base_url!r}")
            return url
        if self.base_url is None:
            raise InvalidInput(f"relative model URL {url!r} without a base URL")
        return f"{self.base_url}/{url.lstrip('/')}"

    def _download(self, assignment: Assignment) -> Path:
        assert assignment.url is not None and assignment.sha256 is not None
        url = self.resolve(assignment.url)
        response = self.session.get(url, headers=self.headers, timeout=self.timeout)
        self.downloads += 1
        if response.status_code != 200:
            raise InvalidInput(f"model download {url}: HTTP {response.status_code}: "
                               f"{response.text[:300]}")
        data = response.content
        digest = hashlib.sha256(data).hexdigest()
        if assignment.size_bytes is not None and len(data) != assignment.size_bytes:
            raise InvalidInput(f"model download {url}: {len(data)} bytes, the assignment says "
                               f"{assignment.size_bytes}")
        if digest != assignment.sha256:
            raise InvalidInput(f"model download {url}: sha256 {digest}, the assignment says "
                               f"{assignment.sha256}")
        path = self.directory / f"{digest}.tflite"
        path.write_bytes(data)
        return path

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


# -- the ledger --------------------------------------------------------------------------------
@dataclass
class Tally:
    """What the daemon was told for one (version, cohort), by successful exports."""

    devices: set[str] = field(default_factory=set)
    inferences: int = 0
    failed_inferences: int = 0
    loads: int = 0
    error_logs: int = 0
    exceptions: Counter[str] = field(default_factory=Counter)
    crashes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"devices": len(self.devices), "inferences": self.inferences,
                "failed_inferences": self.failed_inferences, "loads": self.loads,
                "error_logs": self.error_logs, "exceptions": dict(self.exceptions),
                "crashes": self.crashes}


@dataclass
class _Pending:
    """Recorded in a device's current provider and not yet exported."""

    inferences: int = 0
    failed_inferences: int = 0
    loads: int = 0


# -- the SDK pieces ----------------------------------------------------------------------------
class _MetricExporter(OTLPMetricExporter):
    """The SDK's OTLP/HTTP exporter, keeping the result of its last export (the reader drops
    it) and leaving the fleet's shared session open when its provider shuts down."""

    last: MetricExportResult | None = None

    def export(self, metrics_data: MetricsData, timeout_millis: float | None = 10000,
               **kwargs: Any) -> MetricExportResult:
        self.last = super().export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        return self.last

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass  # the session is the fleet's


class _RoundLogs(LogRecordProcessor):
    """Keeps a device's log records until its export, then sends them in one request with the
    SDK's OTLPLogExporter."""

    def __init__(self, exporter: OTLPLogExporter) -> None:
        self.exporter = exporter
        self.records: list[ReadWriteLogRecord] = []

    def on_emit(self, log_record: ReadWriteLogRecord) -> None:
        self.records.append(log_record)

    def export(self) -> bool | None:
        """None: nothing to send."""
        if not self.records:
            return None
        try:
            result = self.exporter.export(self.records)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - as the SDK's processors: never raise into the app
            return False
        if result == LogRecordExportResult.SUCCESS:
            self.records = []
            return True
        return False

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


@dataclass(frozen=True)
class _Link:
    """What a device needs of its fleet."""

    base_url: str
    model: str
    headers: Mapping[str, str]
    session: requests.Session
    timeout: float
    seed: int
    profile: ProfileSource
    cohort_by: tuple[str, ...]


_LogEntry = tuple[tuple[str, str], str, bool]  # (version, cohort), exception.type, a crash


@dataclass
class DeviceRound:
    """What a device did in a round (the fleet commits it to its ledger)."""

    device_id: str = ""
    inferences: int = 0
    failed: int = 0
    crashes: int = 0
    wrong_outputs: int = 0
    metrics_ok: bool = False
    logs_ok: bool | None = None
    committed: list[tuple[tuple[str, str], _Pending]] = field(default_factory=list)
    logs_committed: list[_LogEntry] = field(default_factory=list)


class Device:
    """One simulated device: the SDK providers of the version it runs, its seeded draws."""

    def __init__(self, spec: DeviceSpec, link: _Link) -> None:
        self.spec, self.link = spec, link
        self.attributes = spec.attributes()
        self.cohort = cohort_of(link.cohort_by, self.attributes)
        self.version: int | None = None
        self.model: Model | None = None
        self.assignment: Assignment | None = None
        self.assigned_at = -math.inf
        self.rounds = 0
        self.loads = 0
        self.memory_bytes = 0.0
        self.pending = _Pending()
        self.meters: MeterProvider | None = None
        self.exporter: _MetricExporter | None = None
        self.log_records: list[_LogEntry] = []  # emitted, not exported yet
        self.logs = _RoundLogs(OTLPLogExporter(
            endpoint=f"{link.base_url}/v1/logs", headers=dict(link.headers),
            timeout=link.timeout, compression=Compression.Gzip, session=link.session))
        self.log_provider: LoggerProvider | None = None
        self._inference: Any = None
        self._load: Any = None

    @property
    def key(self) -> tuple[str, str]:
        """(version, cohort) of what it reports now."""
        return (str(self.version), self.cohort)

    def profile(self) -> Profile:
        assert self.version is not None
        return self.link.profile(self.version, self.cohort)

    def expired(self, now: float) -> bool:
        ttl = self.assignment.ttl_seconds if self.assignment else 0.0
        return self.assignment is None or now - self.assigned_at >= ttl

    def switch(self, version: int, model: Model) -> None:
        """Run ``version`` (``model``): a new provider, the model loaded (a load recorded)."""
        self.version, self.model = version, model
        self._start()

    def _start(self) -> None:
        """A fresh app process: new providers (cumulative streams start again), one load."""
        self._stop()
        link = self.link
        resource = _base_resource().merge(Resource({
            "ml.model.name": link.model, "ml.model.version": str(self.version),
            **self.attributes, "device.id": self.spec.device_id,
            "service.name": SERVICE, "service.instance.id": str(uuid.uuid4())}))
        self.exporter = _MetricExporter(
            endpoint=f"{link.base_url}/v1/metrics", headers=dict(link.headers),
            compression=Compression.Gzip, timeout=link.timeout, session=link.session)
        self.meters = MeterProvider(
            resource=resource, shutdown_on_exit=False,
            metric_readers=[PeriodicExportingMetricReader(self.exporter,
                                                          export_interval_millis=math.inf)],
            views=[View(instrument_name="ml.inference.duration",
                        aggregation=ExplicitBucketHistogramAggregation(INFERENCE_BUCKETS_MS)),
                   View(instrument_name="ml.model.load.duration",
                        aggregation=ExplicitBucketHistogramAggregation(LOAD_BUCKETS_MS))])
        meter = self.meters.get_meter(SCOPE)
        self._inference = meter.create_histogram("ml.inference.duration", unit="ms")
        self._load = meter.create_histogram("ml.model.load.duration", unit="ms")
        meter.create_observable_gauge("process.memory.usage", callbacks=[self._memory],
                                      unit="By")
        self.log_provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
        self.log_provider.add_log_record_processor(self.logs)
        self.pending = _Pending()
        assert self.model is not None
        measured = self.model.load_ms if self.loads == 0 else 0.0
        self._load.record(plan_load(link.seed, self.spec.device_id, self.loads, self.profile())
                          + measured)
        self.loads += 1
        self.pending.loads += 1

    def _memory(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.memory_bytes)]

    def _stop(self) -> None:
        if self.meters is not None:
            self.meters.shutdown()
        self.meters = None
        self.log_provider = None  # its processor is the device's (shut down with it)

    def _log(self, exception: str, body: str, severity: SeverityNumber, crash: bool) -> None:
        assert self.log_provider is not None
        self.log_provider.get_logger(SCOPE).emit(
            body=body, severity_number=severity, severity_text=severity.name,
            attributes={"exception.type": exception})
        self.log_records.append((self.key, exception, crash))

    def infer(self, inferences: int, outcome: DeviceRound) -> None:
        """The round's inferences (this thread holds the model's lock while invoking)."""
        assert self.model is not None and self._inference is not None
        plan = plan_round(self.link.seed, self.spec.device_id, self.rounds, self.profile(),
                          inferences)
        self.rounds += 1
        for i, (x, injected, error) in enumerate(zip(plan.inputs, plan.injected_ms, plan.errors,
                                                     strict=True)):
            if plan.crash_at == i:
                self.crash(outcome)
            y, measured = self.model.invoke(x)
            if self.model.half_plus_two and abs(y - (0.5 * x + 2.0)) > 1e-4:
                outcome.wrong_outputs += 1
            if error is None:
                self._inference.record(measured + injected)
                self.pending.inferences += 1
                outcome.inferences += 1
            else:
                self._inference.record(measured + injected, {"error.type": error})
                self._log(error, f"inference failed: {error}", SeverityNumber.ERROR, False)
                self.pending.failed_inferences += 1
                outcome.failed += 1
        if plan.crash_at == inferences:
            self.crash(outcome)
        self.memory_bytes = plan.memory_bytes

    def crash(self, outcome: DeviceRound) -> None:
        """The app dies: what it had not exported is lost; it restarts, loads its model again
        and reports the crash (as crash reporters do, at the next start)."""
        self.logs.records.clear()
        self.log_records.clear()
        self._start()
        self._log(self.profile().crash_type, "the app crashed", SeverityNumber.FATAL, True)
        outcome.crashes += 1

    def export(self, outcome: DeviceRound) -> DeviceRound:
        """One metrics request (and one logs request when it has records); what went through
        is moved to ``outcome`` for the ledger."""
        assert self.meters is not None and self.exporter is not None
        outcome.device_id = self.spec.device_id
        self.exporter.last = None
        self.meters.force_flush(timeout_millis=self.link.timeout * 1000 * 2)
        outcome.metrics_ok = self.exporter.last == MetricExportResult.SUCCESS
        if outcome.metrics_ok:
            outcome.committed.append((self.key, self.pending))
            self.pending = _Pending()
        outcome.logs_ok = self.logs.export()
        if outcome.logs_ok:
            outcome.logs_committed.extend(self.log_records)
            self.log_records = []
        return outcome

    def close(self) -> None:
        self._stop()


@dataclass
class RoundReport:
    """A round of the fleet: counts and where the time went."""

    round: int
    devices: int
    inferences: int = 0
    failed_inferences: int = 0
    crashes: int = 0
    switched: int = 0
    assign_failed: int = 0
    wrong_outputs: int = 0
    exports_failed: int = 0
    log_exports: int = 0
    log_exports_failed: int = 0
    assign_seconds: float = 0.0
    infer_seconds: float = 0.0
    export_seconds: float = 0.0
    seconds: float = 0.0


class Fleet:
    """Devices across cohorts reporting to the daemon at ``base_url`` (its HTTP server: OTLP
    at ``/v1/metrics`` and ``/v1/logs``) for edge model ``model``.

    ``profile``: a :data:`ProfileSource` (e.g. :class:`Profiles`); ``assignment``: an
    :data:`AssignmentSource` (default: every device on version 1 of the packaged model);
    ``inferences``: per device and round; ``workers``: threads that export (and ask for
    assignments); ``cohort_by``: as the daemon's model (the ledger's cohort names)."""

    def __init__(self, base_url: str, model: str, specs: Sequence[DeviceSpec], *,
                 token: str | None = None, seed: int = 0, profile: ProfileSource | None = None,
                 assignment: AssignmentSource | None = None, inferences: int = 5,
                 workers: int = 4, timeout: float = 10.0,
                 cohort_by: Sequence[str] = COHORT_BY, store: ModelStore | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if len({s.device_id for s in specs}) != len(specs):
            raise InvalidInput("fleet: device ids must be unique")
        self.base_url = base_url.rstrip("/")
        self.model_name = model
        self.seed = seed
        self.inferences = inferences
        self.clock = clock
        self.session = _session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=max(workers, 4))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.profile = profile or Profiles()
        self.assignment = assignment or fixed_assignment(1)
        self.store = store or ModelStore(self.base_url, token, self.session)
        self._own_store = store is None
        link = _Link(self.base_url, model, headers, self.session, timeout, seed, self.profile,
                     tuple(cohort_by))
        self.devices = [Device(spec, link) for spec in specs]
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fleet")
        self.ledger: dict[tuple[str, str], Tally] = {}
        self.rounds: list[RoundReport] = []
        self.wrong_outputs = 0
        self.errors: list[str] = []  # the newest assignment and download failures

    @staticmethod
    def grid(per_cohort: int, delegates: Sequence[str] = ("gpu", "xnnpack"),
             device_models: Sequence[str] = ("pixel-8", "galaxy-s23"),
             prefix: str = "device") -> list[DeviceSpec]:
        """``per_cohort`` devices for each delegate x device model (ids ``prefix-d-m-0001``)."""
        return [DeviceSpec(f"{prefix}-{d}-{m}-{i:05d}", d, m)
                for d in delegates for m in device_models for i in range(per_cohort)]

    @classmethod
    def for_daemon(cls, base_url: str, model: str, specs: Sequence[DeviceSpec], *,
                   token: str | None = None, **kwargs: Any) -> Fleet:
        """A fleet that asks the daemon's assignment endpoint which version to run."""
        fleet = cls(base_url, model, specs, token=token, **kwargs)
        fleet.assignment = HttpAssignments(base_url, model, token, fleet.session)
        return fleet

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def cohorts(self) -> dict[str, list[Device]]:
        found: dict[str, list[Device]] = {}
        for device in self.devices:
            found.setdefault(device.cohort, []).append(device)
        return found

    # -- rounds --------------------------------------------------------------------------------
    def assign(self, force: bool = False) -> tuple[int, int]:
        """Devices whose assignment expired (all, with ``force``) ask which version to run;
        those told another version switch to it. Returns (switched, failed): a device whose
        question or download failed keeps what it runs (one that runs nothing sits the round
        out) and asks again next round."""
        now = self.clock()
        due = [d for d in self.devices if force or d.expired(now)]

        def ask(device: Device) -> Assignment | Exception:
            try:
                return self.assignment(device.spec)
            except (InvalidInput, requests.RequestException, ValueError) as exc:
                return exc

        switched = failed = 0
        for device, answer in zip(due, self.pool.map(ask, due), strict=True):
            if isinstance(answer, Exception):
                failed += 1
                self.errors.append(f"{device.spec.device_id}: {answer}")
                continue
            if answer.version != device.version:
                try:
                    model = self.store.model(answer)
                except (InvalidInput, requests.RequestException, ValueError) as exc:
                    failed += 1
                    self.errors.append(f"{device.spec.device_id}: {exc}")
                    continue
                if device.meters is not None and (device.pending.inferences or
                                                  device.pending.failed_inferences or
                                                  device.pending.loads):
                    self._commit(device.export(DeviceRound()))  # the old version's last report
                device.switch(answer.version, model)
                switched += 1
            device.assignment, device.assigned_at = answer, now
        del self.errors[:-100]
        return switched, failed

    def report_round(self, inferences: int | None = None, assign: bool = True) -> RoundReport:
        """Every device runs ``inferences`` (default: the fleet's) and exports once; with
        ``assign``, those whose assignment expired ask first (a device that never had one
        always asks)."""
        k = self.inferences if inferences is None else inferences
        start = time.perf_counter()
        if assign or any(d.version is None for d in self.devices):
            switched, failed = self.assign()
        else:
            switched = failed = 0
        running = [d for d in self.devices if d.model is not None]
        report = RoundReport(len(self.rounds), len(running), switched=switched,
                             assign_failed=failed)
        report.assign_seconds = time.perf_counter() - start
        outcomes = [DeviceRound() for _ in running]
        mark = time.perf_counter()
        for device, outcome in zip(running, outcomes, strict=True):
            device.infer(k, outcome)
        report.infer_seconds = time.perf_counter() - mark
        mark = time.perf_counter()
        done = list(self.pool.map(lambda pair: pair[0].export(pair[1]),
                                  zip(running, outcomes, strict=True)))
        report.export_seconds = time.perf_counter() - mark
        for outcome in done:
            self._commit(outcome)
            report.inferences += outcome.inferences
            report.failed_inferences += outcome.failed
            report.crashes += outcome.crashes
            report.wrong_outputs += outcome.wrong_outputs
            report.exports_failed += not outcome.metrics_ok
            report.log_exports += outcome.logs_ok is not None
            report.log_exports_failed += outcome.logs_ok is False
        self.wrong_outputs += report.wrong_outputs
        report.seconds = time.perf_counter() - start
        self.rounds.append(report)
        return report

    def run(self, rounds: int, interval_seconds: float = 60.0, inferences: int | None = None,
            stop: threading.Event | None = None) -> list[RoundReport]:
        """``rounds`` rounds, one every ``interval_seconds`` (as apps report every minute);
        ``stop`` ends it early."""
        reports = []
        for n in range(rounds):
            started = time.monotonic()
            reports.append(self.report_round(inferences))
            if n + 1 < rounds:
                wait = max(0.0, interval_seconds - (time.monotonic() - started))
                if stop is not None:
                    if stop.wait(wait):
                        break
                elif wait:
                    time.sleep(wait)
            if stop is not None and stop.is_set():
                break
        return reports

    def _commit(self, outcome: DeviceRound) -> None:
        for key, pending in outcome.committed:
            tally = self.ledger.setdefault(key, Tally())
            tally.devices.add(outcome.device_id)
            tally.inferences += pending.inferences
            tally.failed_inferences += pending.failed_inferences
            tally.loads += pending.loads
        for key, exception, crash in outcome.logs_committed:
            tally = self.ledger.setdefault(key, Tally())
            tally.devices.add(outcome.device_id)
            tally.error_logs += 1
            tally.exceptions[exception] += 1
            tally.crashes += crash

    # -- what the daemon was told --------------------------------------------------------------
    def tallies(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Per version and cohort (as ``GET /api/v1/edge/{model}`` nests them), what successful
        exports told the daemon: devices, inferences, failed_inferences, loads, error_logs,
        exceptions."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for (version, cohort), tally in sorted(self.ledger.items()):
            out.setdefault(version, {})[cohort] = tally.to_json()
        return out

    def close(self) -> None:
        for device in self.devices:
            device.close()
        self.pool.shutdown(wait=True)
        if self._own_store:
            self.store.close()
        self.session.close()


def publish_version(base: Path, version: int, source: Path = MODEL_FILE) -> Path:
    """Publish ``source`` as edge version ``version`` under ``base`` with the manifest a
    rollout reads (file, size, sha256), atomically (built aside, then renamed), as
    ``tfwarden optimize`` publishes TFLite variants; for the demo, benchmarks and tests."""
    staging = base / f".staging-{version}"
    staging.mkdir(parents=True)
    shutil.copy(source, staging / source.name)
    data = (staging / source.name).read_bytes()
    (staging / "manifest.json").write_text(json.dumps({
        "model": base.name, "file": source.name, "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest()}))
    return staging.rename(base / str(version))
