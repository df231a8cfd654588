from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from detectors.trace import TraceError, parse_line
from tests.helpers import TESTDATA

TRACE = TESTDATA / "traces" / "canary-2x-at-60s.jsonl"


def backtest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon", "backtest", *args],
                          capture_output=True, text=True, timeout=120)


def test_committed_trace_gives_the_known_verdicts() -> None:
    result = backtest(str(TRACE))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    findings = [f for f in lines if "detector" in f]
    decisions = [d for d in lines if d.get("type") == "decision"]
    latency = [f for f in findings if f["detector"] == "latency"]
    assert [f["verdict"] for f in latency] == ["inconclusive", "ok", "regression"]
    regression = latency[-1]
    t0 = 1_764_000_000.0
    assert 60 <= regression["t"] - t0 <= 75  # the canary doubles its latency at 60 s
    assert regression["model"] == "m" and regression["version"] == 2
    assert set(regression) >= {"t", "detector", "model", "version", "target", "verdict",
                               "effect", "evidence"}
    errors = [f["verdict"] for f in findings if f["detector"] == "errors"]
    assert "regression" not in errors
    assert "backtest: 2414 events" in result.stderr
    # the default policies replayed: a first traffic step while healthy, then the rollback
    assert [(d["action"], d["rule"]) for d in decisions] == [
        ("set_weight", "step-canary-weight"), ("rollback", "rollback-canary-on-regression")]
    assert decisions[-1]["dry_run"] and 0 <= decisions[-1]["t"] - regression["t"] <= 1.0


def test_bad_lines_give_line_numbered_errors(tmp_path: Path) -> None:
    trace = tmp_path / "bad.jsonl"
    trace.write_text('{"t": 1, "type": "latency", "model": "m", "version": 1, "ms": 3}\n'
                     '\n{"t": 2, "type": "cpu", "model": "m"}\n')
    result = backtest(str(trace))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"tfwarden backtest: {trace}: line 3: unknown type 'cpu' (expected one of deploy, "
        "latency, memory)"]


@pytest.mark.parametrize("line,message", [
    ('{"t": "x", "type": "latency", "model": "m", "version": 1, "ms": 3}', "'t' must be a finite"),
    ('{"t": 1, "type": "latency", "model": "m", "version": -1, "ms": 3}', "'version' must be"),
    ('{"t": 1, "type": "latency", "model": "m", "version": 1, "ms": -3}', "'ms' must not be"),
    ('{"t": 1, "type": "latency", "model": "m", "version": 1, "ms": 3, "ok": "yes"}', "'ok' must"),
    ('{"t": 1, "type": "deploy", "model": "m", "version": 1, "role": "shadow"}', "'role' must"),
    ('{"t": 1, "type": "memory", "rss_bytes": 5}', "'target' must"),
    ("[1, 2]", "expected a JSON object"),
    ("{nope", "invalid JSON"),
])
def test_each_kind_of_bad_line(line: str, message: str) -> None:
    with pytest.raises(TraceError, match=message) as caught:
        parse_line(line, 7)
    assert str(caught.value).startswith("line 7: ")
