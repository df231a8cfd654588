"""Fuzz of two input surfaces issue 13 grew: ``tfwarden backtest`` trace lines (including the
``version`` events) and the drift worker's ``sequential`` requests. Whatever arrives, the
answer is a parsed event or a TraceError naming the line; a report or an ``{"error": ...}``
answer naming the operation; never another exception."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tfwarden.core.errors import TraceError
from tfwarden.detectors.drift.settings import SequentialSettings
from tfwarden.detectors.drift.worker import Worker
from tfwarden.detectors.trace import TYPES, parse_line

SETTINGS = settings(derandomize=True, database=None, max_examples=400, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12)
FIELDS = ["t", "type", "model", "version", "role", "ms", "ok", "target", "rss_bytes",
          "limit_bytes", "features", "rows", "state"]
records = st.dictionaries(st.sampled_from(FIELDS), values, max_size=9).map(
    lambda r: {**r, "type": r.get("type", "memory")})
typed = st.builds(lambda base, kind: {**base, "type": kind}, records,
                  st.sampled_from([*TYPES, "version", "nope"]))


@SETTINGS
@given(st.one_of(typed, records, values))
def test_any_trace_line_parses_or_names_its_line(record: Any) -> None:
    try:
        text = json.dumps(record, allow_nan=True)
    except (TypeError, ValueError):
        return
    try:
        parse_line(text, 12)
    except TraceError as exc:
        assert str(exc).startswith("line 12: ")


@SETTINGS
@given(st.text(max_size=60))
def test_any_text_parses_or_names_its_line(text: str) -> None:
    try:
        parse_line(text, 3)
    except TraceError as exc:
        assert str(exc).startswith("line 3: ")


_worker: dict[str, Worker] = {}


def worker(tmp: Path) -> Worker:
    if "w" not in _worker:
        w = Worker(tmp)
        rows = np.random.default_rng(0).normal(size=(300, 2)).tolist()
        answer = w.handle({"op": "configure", "model": "m", "engine": "scipy",
                           "features": ["a", "b"], "reference": {"rows": rows},
                           "sequential": SequentialSettings().model_dump()})
        assert "error" not in answer
        _worker["w"] = w
    return _worker["w"]


@SETTINGS
@given(rows=st.one_of(values, st.lists(st.lists(scalars, max_size=3), max_size=20)),
       versions=st.one_of(st.none(), values), model=st.sampled_from(["m", "unknown", ""]))
def test_sequential_requests_answer_a_report_or_a_named_error(
        tmp_path_factory: Any, rows: Any, versions: Any, model: str) -> None:
    w = worker(tmp_path_factory.mktemp("drift"))
    answer = w.handle({"op": "sequential", "model": model, "rows": rows, "versions": versions})
    if "error" in answer:
        assert answer["error"].startswith("sequential: ")
    else:
        assert answer["engine"] == "sequential" and isinstance(answer["drift"], bool)
        assert answer["version"] is None or type(answer["version"]) is int
    json.dumps(answer)  # what goes back over the pipe must encode
