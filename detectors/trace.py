"""The trace format of ``tfwarden backtest`` (docs/trace-format.md): JSON lines, one event each.

    {"t": 1764000000.0, "type": "deploy", "model": "m", "version": 2, "role": "canary"}
    {"t": 1764000000.1, "type": "latency", "model": "m", "version": 1, "ms": 12.5, "ok": true}
    {"t": 1764000010.0, "type": "memory", "target": "serving-0", "rss_bytes": 812000000,
     "limit_bytes": 4000000000}
    {"t": 1764000015.0, "type": "version", "target": "serving-0", "model": "m", "version": 2,
     "state": "loaded"}
    {"t": 1764000020.0, "type": "inputs", "model": "m", "version": 1, "features": ["x", "c"],
     "rows": [[0.5, "red"], [1.25, "blue"]]}

Errors name the line number and the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from tfwarden.core.errors import TraceError

TYPES = ("deploy", "latency", "memory", "inputs", "version")
VERSION_STATES = ("loaded", "unloaded")


@dataclass(frozen=True)
class TraceEvent:
    line: int
    t: float
    type: str
    model: str = ""
    version: int | None = None
    role: str = ""
    ms: float = 0.0
    ok: bool = True
    target: str = ""
    rss_bytes: float = 0.0
    limit_bytes: float | None = None
    features: tuple[str, ...] = ()
    rows: tuple[tuple[float | str, ...], ...] = ()
    state: str = ""


def _number(record: dict[str, Any], key: str, line: int, positive: bool = False) -> float:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TraceError(f"line {line}: '{key}' must be a finite number, got {value!r}")
    if positive and value < 0:
        raise TraceError(f"line {line}: '{key}' must not be negative, got {value!r}")
    return float(value)


def _text(record: dict[str, Any], key: str, line: int) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value:
        raise TraceError(f"line {line}: '{key}' must be a non-empty string, got {value!r}")
    return value


def _version(record: dict[str, Any], line: int) -> int:
    value = record.get("version")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TraceError(f"line {line}: 'version' must be a non-negative integer, got {value!r}")
    return value


def parse_line(text: str, line: int) -> TraceEvent | None:
    """One event, or None for a blank line."""
    if not text.strip():
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TraceError(f"line {line}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    return parse_record(record, line)


def parse_record(record: object, line: int) -> TraceEvent:
    """One event from an already decoded JSON value."""
    if not isinstance(record, dict):
        raise TraceError(f"line {line}: expected a JSON object")
    kind = record.get("type")
    if kind not in TYPES:
        raise TraceError(f"line {line}: unknown type {kind!r} (expected one of {', '.join(TYPES)})")
    t = _number(record, "t", line)
    if kind == "deploy":
        role = record.get("role")
        if role not in ("stable", "canary"):
            raise TraceError(f"line {line}: 'role' must be 'stable' or 'canary', got {role!r}")
        return TraceEvent(line, t, kind, _text(record, "model", line), _version(record, line),
                          role=str(role))
    if kind == "latency":
        ok = record.get("ok", True)
        if not isinstance(ok, bool):
            raise TraceError(f"line {line}: 'ok' must be true or false, got {ok!r}")
        return TraceEvent(line, t, kind, _text(record, "model", line), _version(record, line),
                          ms=_number(record, "ms", line, positive=True), ok=ok)
    if kind == "inputs":
        return _inputs(record, line, t)
    if kind == "version":
        state = record.get("state")
        if state not in VERSION_STATES:
            raise TraceError(f"line {line}: 'state' must be 'loaded' or 'unloaded', got {state!r}")
        return TraceEvent(line, t, kind, _text(record, "model", line), _version(record, line),
                          target=_text(record, "target", line), state=str(state))
    limit = record.get("limit_bytes")
    return TraceEvent(line, t, kind, target=_text(record, "target", line),
                      rss_bytes=_number(record, "rss_bytes", line, positive=True),
                      limit_bytes=None if limit is None else _number(record, "limit_bytes", line,
                                                                     positive=True))


def _inputs(record: dict[str, Any], line: int, t: float) -> TraceEvent:
    features = record.get("features")
    if not isinstance(features, list) or not features or not all(
            isinstance(f, str) and f for f in features) or len(set(features)) != len(features):
        raise TraceError(f"line {line}: 'features' must be a list of distinct non-empty names")
    rows = record.get("rows")
    if not isinstance(rows, list) or not rows:
        raise TraceError(f"line {line}: 'rows' must be a non-empty list of rows")
    parsed = []
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(features):
            raise TraceError(f"line {line}: rows[{i}] must be a list of {len(features)} values")
        for j, value in enumerate(row):
            if isinstance(value, bool) or not isinstance(value, int | float | str) or (
                    isinstance(value, float) and not math.isfinite(value)):
                raise TraceError(f"line {line}: rows[{i}][{j}] must be a finite number or a "
                                 f"string, got {value!r}")
        parsed.append(tuple(v if isinstance(v, str) else float(v) for v in row))
    version = _version(record, line) if "version" in record else None
    return TraceEvent(line, t, "inputs", _text(record, "model", line), version,
                      features=tuple(features), rows=tuple(parsed))


def read_trace(lines: Iterable[str]) -> Iterator[TraceEvent]:
    """Parse lines (1-based numbering) into events."""
    for number, text in enumerate(lines, start=1):
        event = parse_line(text, number)
        if event is not None:
            yield event
