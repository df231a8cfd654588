"""Every verdict carries the values it was judged on (issue 13, part 5): the statistic's name
and value, the threshold it is compared with and the samples behind it, for each detector a
trace reaches, in the same Finding the API, the journal and the metrics show."""

from __future__ import annotations

import math
import random

from tfwarden.core.types import INCONCLUSIVE
from tfwarden.detectors.backtest import Backtest
from tfwarden.detectors.trace import TraceEvent

T0 = 1_764_000_000.0


def canary_trace(seconds: int = 400, fault_at: int = 100) -> list[TraceEvent]:
    rng = random.Random(3)
    events = [TraceEvent(0, T0, "deploy", "m", 1, role="stable"),
              TraceEvent(1, T0 + 0.001, "deploy", "m", 2, role="canary")]
    for i in range(seconds * 10):
        t = T0 + 0.01 + i / 10
        for version in (1, 2):
            faulty = version == 2 and i / 10 >= fault_at
            ms = 20 * math.exp(rng.gauss(0, 0.3)) * (2.0 if faulty else 1.0)
            ok = rng.random() >= (0.3 if faulty else 0.001)
            events.append(TraceEvent(len(events), t + version * 0.01, "latency", "m", version,
                                     ms=ms, ok=ok))
    return events


def test_every_decided_finding_names_its_statistic_threshold_and_samples() -> None:
    engine = Backtest()
    seen: dict[tuple[str, str], set[str]] = {}
    for event in canary_trace():
        for finding in engine.feed(event):
            if finding.verdict == INCONCLUSIVE:
                continue
            evidence = finding.evidence
            assert isinstance(evidence.get("statistic"), str), finding
            assert isinstance(evidence.get("value"), int | float), finding
            assert isinstance(evidence.get("threshold"), int | float), finding
            assert isinstance(evidence.get("samples"), int) and evidence["samples"] > 0, finding
            seen.setdefault((finding.detector, finding.target), set()).add(finding.verdict)
    assert seen[("latency", "v1")] == {"ok", "regression"}
    assert seen[("errors", "v1")] == {"ok", "regression"}
    assert "regression" in seen[("burn", "slo")]


def test_a_regression_is_over_its_threshold_and_an_interval_comes_with_it() -> None:
    engine = Backtest()
    regressions = [f for event in canary_trace() for f in engine.feed(event)
                   if f.verdict == "regression" and f.detector in ("latency", "errors")]
    assert {f.detector for f in regressions} == {"latency", "errors"}
    for finding in regressions:
        assert finding.evidence["value"] >= finding.evidence["threshold"]
    latency = next(f for f in regressions if f.detector == "latency")
    low, high = latency.effect["median_ratio_ci"]
    assert low <= latency.effect["median_ratio"] <= high
    errors = next(f for f in regressions if f.detector == "errors")
    assert len(errors.effect["canary_error_rate_ci"]) == 2


def test_metrics_drop_series_whose_version_or_statistic_label_changed() -> None:
    from tfwarden.core.types import Finding
    from tfwarden.daemon.recorder import Recorder

    recorder = Recorder()

    def value(name: str, **labels: str) -> float | None:
        return recorder.registry.get_sample_value(name, labels)

    base = {"detector": "drift", "model": "m", "target": "inputs"}
    drifted = Finding("drift", "regression", 1.0, model="m", version=2, target="inputs",
                      evidence={"statistic": "log_e_value", "value": 25.0, "threshold": 20.7,
                                "samples": 900})
    recorder.finding(drifted)
    assert value("tfwarden_finding", **base, version="2", verdict="regression") == 1
    cleared = Finding("drift", "ok", 2.0, model="m", target="inputs",
                      evidence={"statistic": "log_e_value", "value": None, "threshold": 20.7,
                                "samples": 1200})
    recorder.finding(cleared)
    assert value("tfwarden_finding", **base, version="2", verdict="regression") is None
    assert value("tfwarden_finding", **base, version="", verdict="ok") == 1
    assert value("tfwarden_finding_statistic", **base, version="2",
                 statistic="log_e_value") is None
    now = value("tfwarden_finding_statistic", **base, version="", statistic="log_e_value")
    assert now is not None and math.isnan(now)  # no value now: not the last one forever
    tail = Finding("drift", "ok", 3.0, model="m", target="inputs",
                   evidence={"statistic": "p_adjusted", "value": 0.5, "threshold": 0.01,
                             "samples": 10})
    recorder.finding(tail)
    assert value("tfwarden_finding_statistic", **base, version="",
                 statistic="log_e_value") is None
    assert value("tfwarden_finding_statistic", **base, version="", statistic="p_adjusted") == 0.5
