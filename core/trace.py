"""Tracing as the stages see it: ``span(name, **attributes)`` around a block.

A no-op until the daemon installs a tracer (``tfwarden.daemon.tracing`` builds an OpenTelemetry
one when ``tracing.exporter`` is set), so stages never import OpenTelemetry themselves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol


class Span(Protocol):
    def set(self, **attributes: Any) -> None:
        """Add attributes (after the fact: outcome, sizes...)."""
        ...

    def fail(self, message: str) -> None:
        """Mark the span as failed with ``message``."""
        ...


class Tracer(Protocol):
    def span(self, name: str, attributes: dict[str, Any]) -> contextlib.AbstractContextManager[Span]:
        ...


class _NoSpan:
    def set(self, **attributes: Any) -> None:
        pass

    def fail(self, message: str) -> None:
        pass


_tracer: Tracer | None = None


def install(tracer: Tracer | None) -> None:
    """Route spans to ``tracer`` (None: back to no-ops)."""
    global _tracer
    _tracer = tracer


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[Span]:
    """A span around a block (exceptions are recorded and re-raised)."""
    if _tracer is None:
        yield _NoSpan()
        return
    with _tracer.span(name, attributes) as current:
        yield current
