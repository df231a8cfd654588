"""Tracing: off means OpenTelemetry is never imported; the file exporter writes JSON spans."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import sys
from pathlib import Path
from tfwarden.core import trace
from tfwarden.daemon import tracing
from tfwarden.daemon.config import TracingConfig
settings = TracingConfig(**({} if sys.argv[1] == "none" else
                            {"exporter": "file", "file": Path(sys.argv[2])}))
tracing.setup(settings, "9.9")
with trace.span("lifecycle.promote", model="m", params={"version": 2}) as span:
    span.set(phase="stable", canary_version=None)
try:
    with trace.span("lifecycle.rollback", model="m") as span:
        span.fail("nginx -t refused")
except Exception:
    pass
tracing.shutdown()
print(any(name.startswith("opentelemetry") for name in sys.modules))
"""


def run(*args: str) -> str:
    return subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip()


def test_no_exporter_imports_nothing(tmp_path: Path) -> None:
    assert run("none", str(tmp_path / "x")) == "False"


def test_file_exporter_writes_one_json_span_per_line(tmp_path: Path) -> None:
    out = tmp_path / "spans.jsonl"
    assert run("file", str(out)) == "True"
    spans = [json.loads(line) for line in out.read_text().splitlines()]
    assert [s["name"] for s in spans] == ["lifecycle.promote", "lifecycle.rollback"]
    assert spans[0]["attributes"] == {"model": "m", "params": '{"version": 2}', "phase": "stable"}
    assert spans[0]["resource"]["attributes"]["service.version"] == "9.9"
    assert spans[1]["status"] == {"status_code": "ERROR", "description": "nginx -t refused"}
