"""The input-drift finding from a window's drift report (pure; shared by daemon and backtest).

A fixed reference tested again and again alarms too often on a single window, so the finding
says ``regression`` only after ``need`` drifted windows in a row; one clean window clears it.
"""

from __future__ import annotations

from typing import Any

from tfwarden.core.types import OK, REGRESSION, Finding


def input_drift_finding(model: str, report: dict[str, Any], consecutive: int, need: int,
                        windows: int, now: float) -> Finding:
    """``consecutive``: drifted windows in a row, this one included (0 when it is clean)."""
    drifted = report["drifted_features"]
    rows = report["rows"]
    verdict = REGRESSION if consecutive >= need else OK
    if verdict == REGRESSION:
        reason = (f"input drift in {', '.join(drifted) or 'the joint distribution'} "
                  f"({consecutive} windows of {rows} rows in a row)")
    elif drifted:
        reason = f"drift in {', '.join(drifted)} in {consecutive} of {need} windows needed"
    else:
        reason = f"no drift in the last {rows} rows"
    features = {f["name"]: {"p_value": f["p_adjusted"], "statistic": f["statistic"],
                            "psi": f["psi"], "test": f["test"]} for f in report["features"]}
    return Finding(
        "drift", verdict, now, model=model, target="inputs", reason=reason[:300],
        effect={"drifted_features": drifted,
                "max_psi": max((f["psi"] for f in report["features"]), default=0.0)},
        evidence={"samples": rows, "windows": windows, "consecutive": consecutive,
                  "features": features, "engine": report["engine"],
                  "reference": report["reference"]["hash"]})
