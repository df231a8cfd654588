from __future__ import annotations

import sys

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "bench"))  # the seeded trace generators


def feed_latency_trace(detector, scenario):  # type: ignore[no-untyped-def]
    """Feed a CanaryScenario's latency lines to ``detector``; return (seconds from the trace
    start to the first regression or None, the last finding)."""
    from bench.tracegen import latency_trace
    from tfwarden.core.types import REGRESSION, Sample

    finding = None
    for event in latency_trace(scenario):
        if event["type"] != "latency":
            continue
        detector.observe(Sample(t=event["t"], source="t", metric="latency_ms", value=event["ms"],
                                model="m", version=event["version"], ok=event["ok"],
                                labels={"outcome": "ok" if event["ok"] else "error"}))
        finding = detector.evaluate(event["t"])
        if finding.verdict == REGRESSION:
            return event["t"] - scenario.t0, finding
    return None, finding
