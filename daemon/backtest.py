"""``tfwarden backtest TRACE [--config FILE]``: replay a trace through the detectors and the
policies, as the daemon would have run them (docs/trace-format.md)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tfwarden.core.errors import ConfigError, ConfigProblem, TraceError
from tfwarden.daemon import build
from tfwarden.daemon.config import load_config
from tfwarden.detectors.drift.settings import DriftSettings
from tfwarden.detectors.trace import TraceEvent, read_trace


def _drift_replay(settings: Callable[[str], DriftSettings]) -> Any:
    """Input drift for ``inputs`` lines (numpy/scipy/alibi-detect: loaded only when needed)."""
    from tfwarden.detectors.drift.replay import InputDriftReplay
    from tfwarden.serving.tfserving.predictionlog import read_rows

    return InputDriftReplay(settings, read_rows)


def _events(trace: Path) -> list[TraceEvent]:
    try:
        with trace.open(encoding="utf-8") as handle:
            return sorted(read_trace(handle), key=lambda e: (e.t, e.line))
    except OSError as exc:
        raise ConfigError(str(trace), [ConfigProblem("", f"cannot read trace: {exc.strerror}")]) \
            from exc
    except TraceError as exc:
        raise TraceError(f"{trace}: {exc}") from None


def run_backtest(trace: Path, config_path: Path | None) -> int:
    started = time.monotonic()
    config = load_config(config_path) if config_path else None
    events = _events(trace)
    parts = build.replay(config)
    engine, replay = parts.detection, parts.policy
    drift = _drift_replay(parts.drift_settings) if any(e.type == "inputs" for e in events) \
        else None
    out = sys.stdout
    inputs_only: dict[str, tuple[int | None, int | None]] = {}
    for event in events:
        findings = drift.feed(event) if drift is not None and event.type == "inputs" else \
            engine.feed(event)
        for finding in findings:
            out.write(json.dumps(finding.to_json(), sort_keys=False) + "\n")
            if finding.detector == "drift":
                engine.counts[finding.verdict] += 1
        roles = engine.all_roles()
        if event.type == "inputs" and event.model not in roles:
            inputs_only[event.model] = (event.version, None)  # a model seen only in inputs
        replay.follow_roles({**inputs_only, **roles}, event.t)
        current = [*engine.current.values(), *(drift.current.values() if drift else ())]
        for decision in replay.step(current, event.t):
            out.write(json.dumps({"type": "decision", **decision.to_json()}) + "\n")
    counts = ", ".join(f"{n} {v}" for v, n in sorted(engine.counts.items())) or "none"
    print(f"backtest: {engine.events} events, verdict changes: {counts}, "
          f"{replay.decided} policy decisions (dry run) ({time.monotonic() - started:.1f} s)",
          file=sys.stderr)
    return 0
