"""OpenTelemetry traces of what tfwarden decides and does.

Spans: ``policy.decision`` (one per decision, with the rule and the findings' verdicts),
``lifecycle.<action>`` (stage_canary, set_weight, promote, rollback: outcome, error),
``drift.check`` (per model and window: rows, engine, drifted features) and ``optimize`` (method,
source version, gate verdict, published version) with one child span per worker step.

``tracing.exporter``: ``none`` (default: OpenTelemetry is not even imported), ``otlp`` (OTLP over
HTTP/protobuf to ``tracing.endpoint``, e.g. an OpenTelemetry Collector, Jaeger or Tempo) or
``file`` (one JSON span per line, for debugging). Spans are batched in a background thread and
flushed at shutdown; an unreachable collector costs dropped spans, never a stalled daemon. The
stages open spans through ``tfwarden.core.trace``; ``setup`` routes them here.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from typing import IO, Any

from tfwarden.core import trace
from tfwarden.daemon.config import TracingConfig

_provider: Any = None
_file: IO[str] | None = None


class _Span:
    """An OpenTelemetry span behind ``core.trace.Span``."""

    def __init__(self, span: Any) -> None:
        self._span = span

    def set(self, **attributes: Any) -> None:
        self._span.set_attributes(_attributes(attributes))

    def fail(self, message: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        self._span.set_status(Status(StatusCode.ERROR, message[:500]))


class _Tracer:
    def __init__(self, tracer: Any) -> None:
        self._tracer = tracer

    @contextlib.contextmanager
    def span(self, name: str, attributes: dict[str, Any]) -> Iterator[_Span]:
        with self._tracer.start_as_current_span(name, attributes=_attributes(attributes)) as span:
            yield _Span(span)


def setup(settings: TracingConfig, version: str) -> None:
    """Install the tracer provider once per process (changing it needs a restart)."""
    global _provider, _file
    if settings.exporter == "none" or _provider is not None:
        return
    from opentelemetry import trace as otel
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    resource = Resource.create({"service.name": settings.service_name,
                                "service.version": version})
    provider = TracerProvider(resource=resource,
                              sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)))
    if settings.exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter: Any = OTLPSpanExporter(endpoint=str(settings.endpoint),
                                         timeout=int(settings.timeout_seconds))
    else:
        assert settings.file is not None
        _file = settings.file.open("a", encoding="utf-8")
        exporter = ConsoleSpanExporter(
            out=_file, formatter=lambda span: json.dumps(json.loads(span.to_json())) + "\n")
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=1000))
    otel.set_tracer_provider(provider)
    _provider = provider
    trace.install(_Tracer(otel.get_tracer("tfwarden", version)))


def shutdown() -> None:
    global _provider, _file
    trace.install(None)
    if _provider is not None:
        _provider.shutdown()  # flushes the batch
    if _file is not None:
        _file.close()
    _provider = _file = None


def _attributes(values: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool | int | float | str):
            out[key] = value
        elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            out[key] = list(value)
        else:
            out[key] = json.dumps(value, default=str)[:1000]
    return out
