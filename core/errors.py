"""The tfwarden exception tree: every exception tfwarden defines is here.

Third-party errors are translated at the boundary with ``raise ... from exc``; messages name the
object concerned (file, YAML path, model, version, line)::

    TfwardenError
    ├── ConfigError            a configuration or rule file is missing, unparsable or invalid
    ├── StateError             the state directory or its database cannot be used
    ├── StartupError           the daemon (or the demo) could not start
    ├── ControlError           an operator command got no usable answer from the daemon
    ├── InvalidInput           data tfwarden was given does not fit (also a ValueError)
    │   ├── CaptureError         a captured body or sample batch does not fit the signature
    │   ├── GoldenConversionError  a golden request does not fit the model's gRPC signature
    │   ├── PredictionLogError   a PredictionLog TFRecord file cannot be read
    │   ├── ReferenceError       drift reference data cannot be used
    │   └── TraceError           a backtest trace line is not valid
    ├── Refused                an HTTP-visible refusal: ``status`` (4xx/5xx) and ``message``
    │   ├── CaptureRejected      a capture request was refused (400, 404, 409, 413, 429, 503)
    │   ├── OtlpRejected         an OTLP/HTTP request was refused (400, 404, 413, 415, 429)
    │   └── ApiError             any other API refusal (401, 403, 404, 409...)
    ├── OtlpJsonFallback       (inside the receiver) OTLP JSON the direct reader leaves to
    │                          protobuf's json_format; never escapes it
    ├── ServingError           a model server could not be reached or answered with an error
    │   ├── ProtoLoadError       TF Serving's generated protobuf modules could not be loaded
    │   ├── ServingRpcError      a gRPC call failed (``code``: NOT_FOUND, UNAVAILABLE...)
    │   ├── ProbeTransportError  a probe request got no HTTP answer (``kind``: timeout...)
    │   └── ServingStatus        a TF Serving error status (the devserver's ``code`` + message)
    ├── LifecycleError         a lifecycle action cannot be carried out
    │   ├── InvalidTransition    a phase change the transition table does not allow
    │   ├── ActionRefused        an action does not apply to the model's status (operator: 409)
    │   ├── RouterError          a routing change could not be made; the old routing stays
    │   └── LeaseLost            this replica does not hold the lease of the action's unit
    ├── WorkerError            a worker subprocess failed
    │   ├── FrameError           a peer closed the stream or sent something that is not a frame
    │   ├── WorkerDown           the worker is not running (starting, crashed, hung, backing off)
    │   ├── WorkerFailed         the worker answered a request with an error
    │   └── JobError             (inside a worker) a job cannot be done
    └── OptimizeError          an optimization could not run (bad request, worker crash, timeout)
        └── PublishError         a candidate could not be published as a version
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


class TfwardenError(Exception):
    """Base class of every error tfwarden raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a configuration file, at a YAML path such as ``models[1].slo``."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        at_line = f"line {self.line}" if self.line is not None else ""
        if not self.path:
            return f"{at_line}: {self.message}" if at_line else self.message
        return f"{self.path} ({at_line}): {self.message}" if at_line else f"{self.path}: {self.message}"


class ConfigError(TfwardenError):
    """A configuration file is missing, unparsable or invalid; ``problems`` lists each issue."""

    def __init__(self, source: str, problems: Sequence[ConfigProblem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        if len(self.problems) == 1:
            detail = str(self.problems[0])
        else:
            detail = f"{len(self.problems)} problems: " + "; ".join(str(p) for p in self.problems)
        super().__init__(f"{source}: {detail}")


class StateError(TfwardenError):
    """The state directory or its SQLite database cannot be used."""


class StartupError(TfwardenError):
    """The daemon could not start."""


class ControlError(TfwardenError):
    """An operator command (``tfwarden status``...) got no usable answer from the daemon: it
    could not be reached, did not answer in time, or answered with something not JSON. The
    daemon's own refusals are ``ApiError``."""


# -- input --------------------------------------------------------------------------------------
class InvalidInput(TfwardenError, ValueError):
    """Data tfwarden was given does not fit; the message names the element."""


class CaptureError(InvalidInput):
    """A predict body or sample batch does not fit the model's signature."""


class GoldenConversionError(InvalidInput):
    """A golden request does not fit the model's signature."""


class PredictionLogError(InvalidInput):
    """A PredictionLog TFRecord file cannot be read (framing, checksum, content)."""


class ReferenceError(InvalidInput):  # noqa: A001 - the drift reference, not the builtin
    """Reference data for drift detection cannot be used."""


class TraceError(InvalidInput):
    """A trace line is not valid; the message names the line."""


# -- refusals seen over HTTP --------------------------------------------------------------------
class Refused(TfwardenError):
    """An HTTP-visible refusal: ``status`` code and a ``message`` naming the problem."""

    def __init__(self, status: int, message: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.headers = dict(headers) if headers else None


class CaptureRejected(Refused):
    """A capture request was refused."""


class OtlpRejected(Refused):
    """An OTLP/HTTP request was refused (400 bad data, 413 too large, 415 unknown encoding,
    429 over the client's rate)."""


class ApiError(Refused):
    """An API request was refused."""


# -- model servers ------------------------------------------------------------------------------
class OtlpJsonFallback(TfwardenError):
    """An OTLP JSON body not in the canonical form the direct reader takes: left to protobuf's
    json_format, which accepts it or says what is wrong (never escapes the receiver)."""


class ServingError(TfwardenError):
    """A model server could not be reached or answered with an error."""


class ProtoLoadError(ServingError):
    """TF Serving's generated protobuf modules could not be loaded."""


class ServingRpcError(ServingError):
    """A gRPC call to a model server failed; ``code`` is the status code's name."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


SERVING_CODES = frozenset({
    "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
    "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"})
MAX_GRPC_MESSAGE = 1024


class ProbeTransportError(ServingError):
    """A probe request got no HTTP answer: ``kind`` is "timeout" or "unreachable"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class ServingStatus(ServingError):
    """A non-OK TF Serving status, e.g. ServingStatus("NOT_FOUND", "Servable not found ...")."""

    def __init__(self, code: str, message: str) -> None:
        if code not in SERVING_CODES:
            raise ValueError(f"not an error code: {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def grpc_message(self) -> str:
        """TF Serving cuts messages over 1024 characters and marks them."""
        if len(self.message) > MAX_GRPC_MESSAGE:
            return self.message[:MAX_GRPC_MESSAGE] + "...TRUNCATED"
        return self.message


# -- lifecycle ----------------------------------------------------------------------------------
class LifecycleError(TfwardenError):
    """A lifecycle action cannot be carried out."""


class InvalidTransition(LifecycleError):
    """A phase change the transition table does not allow."""


class ActionRefused(LifecycleError):
    """An action does not apply to the model's current status (nothing to promote...)."""


class RouterError(LifecycleError):
    """A routing change could not be made; the previous routing stays in force."""


class LeaseLost(LifecycleError):
    """This replica does not (or no longer) hold the lease of the unit an action belongs to:
    another replica owns it, or the lease could not be confirmed. Nothing may move."""


# -- worker processes ---------------------------------------------------------------------------
class WorkerError(TfwardenError):
    """A worker subprocess failed."""


class FrameError(WorkerError):
    """The peer closed the stream or sent something that is not a frame."""


class WorkerDown(WorkerError):
    """The worker is not running (starting, crashed, hung, or backing off).

    ``cause`` is timeout, exit, protocol or backoff; ``exit_code`` and ``stderr_tail`` say how
    a worker that died ended, where known."""

    def __init__(self, message: str, *, cause: str = "", exit_code: int | None = None,
                 stderr_tail: str = "") -> None:
        super().__init__(message)
        self.cause, self.exit_code, self.stderr_tail = cause, exit_code, stderr_tail


class WorkerFailed(WorkerError):
    """The worker answered a request with an error (bad reference, unknown model...)."""


class JobError(WorkerError):
    """Inside a worker: a job cannot be done; the message says why in one line."""


# -- optimizers ---------------------------------------------------------------------------------
class OptimizeError(TfwardenError):
    """The optimization could not run (bad request, worker crash or timeout); one line."""


class PublishError(OptimizeError):
    """A candidate could not be published as a new version."""
