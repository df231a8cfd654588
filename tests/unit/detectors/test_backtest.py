from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import TESTDATA
from tfwarden.core.errors import TraceError
from tfwarden.detectors.trace import parse_line

TRACE = TESTDATA / "traces" / "canary-2x-at-60s.jsonl"


def backtest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tfwarden.daemon", "backtest", *args],
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
        "latency, memory, inputs, version)"]


@pytest.mark.parametrize("line,message", [
    ('{"t": "x", "type": "latency", "model": "m", "version": 1, "ms": 3}', "'t' must be a finite"),
    ('{"t": 1, "type": "latency", "model": "m", "version": -1, "ms": 3}', "'version' must be"),
    ('{"t": 1, "type": "latency", "model": "m", "version": 1, "ms": -3}', "'ms' must not be"),
    ('{"t": 1, "type": "latency", "model": "m", "version": 1, "ms": 3, "ok": "yes"}', "'ok' must"),
    ('{"t": 1, "type": "deploy", "model": "m", "version": 1, "role": "shadow"}', "'role' must"),
    ('{"t": 1, "type": "memory", "rss_bytes": 5}', "'target' must"),
    ('{"t": 1, "type": "inputs", "model": "m", "features": ["x", "x"], "rows": [[1, 2]]}',
     "'features' must be a list of distinct"),
    ('{"t": 1, "type": "inputs", "model": "m", "features": ["x"], "rows": [[1, 2]]}',
     r"rows\[0\] must be a list of 1 values"),
    ('{"t": 1, "type": "inputs", "model": "m", "features": ["x"], "rows": [[true]]}',
     r"rows\[0\]\[0\] must be a finite number or a string"),
    ('{"t": 1, "type": "inputs", "model": "m", "features": ["x"], "rows": []}',
     "'rows' must be a non-empty list"),
    ("[1, 2]", "expected a JSON object"),
    ("{nope", "invalid JSON"),
])
def test_each_kind_of_bad_line(line: str, message: str) -> None:
    with pytest.raises(TraceError, match=message) as caught:
        parse_line(line, 7)
    assert str(caught.value).startswith("line 7: ")


def test_inputs_lines_drift_after_the_reference(tmp_path: Path) -> None:
    import numpy as np
    rng = np.random.default_rng(3)
    lines = []
    for i in range(60):  # 100 rows a line: 2,000 reference rows, then 4,000 live ones
        rows = rng.normal(size=(100, 3))
        if i >= 40:
            rows[:, 1] += 0.5  # the second feature shifts after 4,000 rows
        lines.append(json.dumps({"t": 1000.0 + i, "type": "inputs", "model": "m", "version": 1,
                                 "features": ["a", "b", "c"], "rows": rows.tolist()}))
    trace = tmp_path / "inputs.jsonl"
    trace.write_text("\n".join(lines) + "\n")
    config = tmp_path / "c.yaml"
    config.write_text("state_dir: s\nserving: {d: {kind: tfserving, rest_url: 'http://x:1', "
                      "grpc_address: 'x:2'}}\nmodels:\n  - {name: m, serving: d, drift: "
                      "{method: window, engine: scipy, window_rows: 500, consecutive: 2}}\n")
    result = backtest(str(trace), "--config", str(config))
    assert result.returncode == 0, result.stderr
    findings = [json.loads(line) for line in result.stdout.splitlines()]
    drift = [f for f in findings if f.get("detector") == "drift"]
    assert [f["verdict"] for f in drift] == ["ok", "regression"]
    assert drift[0]["t"] == 1024.0  # first window: reference rows 0-1999, window 2000-2499
    assert drift[1]["effect"]["drifted_features"] == ["b"]
    assert 1044.0 <= drift[1]["t"] <= 1050.0  # two drifted windows after the shift at 1040
    assert drift[1]["evidence"]["reference"] and drift[1]["evidence"]["engine"] == "scipy"
    alert = [d for d in findings if d.get("type") == "decision"]
    assert [(d["rule"], d["action"]) for d in alert] == [("alert-on-input-drift", "alert")]


def test_version_events_reach_the_memory_detectors() -> None:
    from tfwarden.detectors.backtest import Backtest
    from tfwarden.detectors.memory import MemoryLeak

    engine = Backtest()
    list(engine.feed(parse_line('{"t": 0, "type": "memory", "target": "s", "rss_bytes": 1e9}', 1)))
    list(engine.feed(parse_line('{"t": 5, "type": "version", "target": "s", "model": "m", '
                                '"version": 2, "state": "loaded"}', 2)))
    leak = engine.roster.detectors[("memory", "s", None)]
    assert isinstance(leak, MemoryLeak) and leak.settle_until == 5 + leak.settings.settle_seconds
    assert ("memory_retention", "s", None) in engine.roster.detectors
