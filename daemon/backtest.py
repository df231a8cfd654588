"""``tfwarden backtest TRACE [--config FILE]``: replay a trace through the detectors."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from core.errors import ConfigError, ConfigProblem
from daemon.config import Config, load_config
from daemon.policy_replay import PolicyReplay
from detectors.backtest import Backtest, DetectionSettings
from detectors.errors import ErrorSettings
from detectors.latency import LatencySettings
from detectors.memory import MemorySettings
from detectors.trace import TraceError, read_trace
from policies.rules import load_ruleset


def detection_settings(config: Config | None) -> tuple[DetectionSettings, dict[str, float]]:
    """Detector settings and per-model availability objectives from a configuration."""
    if config is None:
        return DetectionSettings(), {}
    d = config.detection
    settings = DetectionSettings(latency=LatencySettings(**d.latency.model_dump()),
                                 errors=ErrorSettings(**d.errors.model_dump()),
                                 memory=MemorySettings(**d.memory.model_dump()))
    return settings, {m.name: m.slo.availability for m in config.models}


def run_backtest(trace: Path, config_path: Path | None) -> int:
    started = time.monotonic()
    config = load_config(config_path) if config_path else None
    settings, availability = detection_settings(config)
    try:
        with trace.open(encoding="utf-8") as handle:
            events = sorted(read_trace(handle), key=lambda e: (e.t, e.line))
    except OSError as exc:
        raise ConfigError(str(trace), [ConfigProblem("", f"cannot read trace: {exc.strerror}")]) from exc
    except TraceError as exc:
        raise TraceError(f"{trace}: {exc}") from None
    engine = Backtest(settings, availability)
    replay = PolicyReplay(load_ruleset(config.policies.ruleset if config else "default"))
    out = sys.stdout
    for event in events:
        for finding in engine.feed(event):
            out.write(json.dumps(finding.to_json(), sort_keys=False) + "\n")
        replay.follow_roles(engine.roles(), event.t)
        for decision in replay.step(list(engine.current.values()), event.t):
            out.write(json.dumps({"type": "decision", **decision.to_json()}) + "\n")
    counts = ", ".join(f"{n} {v}" for v, n in sorted(engine.counts.items())) or "none"
    print(f"backtest: {engine.events} events, verdict changes: {counts}, "
          f"{replay.decided} policy decisions (dry run) ({time.monotonic() - started:.1f} s)",
          file=sys.stderr)
    return 0
