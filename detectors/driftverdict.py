"""The input-drift finding from a window's drift report (pure; shared by daemon and backtest).

A fixed reference tested again and again alarms too often on a single window, so the finding
says ``regression`` only after ``need`` drifted windows in a row; one clean window clears it.
"""

from __future__ import annotations

from typing import Any

from tfwarden.core.types import OK, REGRESSION, Finding


def input_drift_finding(model: str, report: dict[str, Any], consecutive: int, need: int,
                        windows: int, now: float, version: int | None = None) -> Finding:
    """``consecutive``: drifted windows in a row, this one included (0 when it is clean);
    ``version``: the version the window's rows name, when they name one."""
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
    smallest = min((f["p_adjusted"] for f in report["features"]), default=1.0)
    return Finding(
        "drift", verdict, now, model=model, version=version, target="inputs",
        reason=reason[:300],
        effect={"drifted_features": drifted,
                "max_psi": max((f["psi"] for f in report["features"]), default=0.0)},
        evidence={"statistic": "p_adjusted", "value": smallest,
                  "threshold": report.get("p_value"), "samples": rows, "windows": windows,
                  "consecutive": consecutive, "consecutive_needed": need,
                  "features": features, "engine": report["engine"],
                  "reference": report["reference"]["hash"]})


def sequential_drift_finding(model: str, report: dict[str, Any], now: float) -> Finding:
    """The input-drift finding of the sequential engine (``detectors.drift.sequential``):
    ``regression`` while a feature's e-detector is over its threshold and the rows since its
    change differ from the reference by at least the effect floor."""
    drifted = report["drifted_features"]
    alarmed = [f for f in report["features"] if f["alarmed"]]
    top = max(report["features"], key=lambda f: f["statistic"], default=None)
    if drifted:
        parts = [f"{f['name']} {f['direction']} ({f['effect_name']} {f['effect']:.3g} over "
                 f"{f['samples']} rows)" for f in alarmed if f["name"] in drifted]
        reason = f"input drift in {', '.join(parts)}"
    elif alarmed:
        reason = (f"difference in {', '.join(f['name'] for f in alarmed)} below the effect "
                  f"floor")
    else:
        reason = f"no drift in {report['rows_seen']} rows"
    features = {f["name"]: {k: v for k, v in f.items() if k != "name"}
                for f in report["features"] if f["alarmed"] or f is top}
    effect: dict[str, Any] = {"drifted_features": drifted}
    lead = next((f for f in alarmed if f["name"] in drifted), alarmed[0] if alarmed else None)
    if lead is not None:
        effect.update({"feature": lead["name"], lead["effect_name"]: lead["effect"]})
        if "p_live_above_reference" in lead:
            effect["p_live_above_reference"] = lead["p_live_above_reference"]
            effect["p_live_above_reference_ci"] = lead["p_live_above_reference_ci"]
    return Finding(
        "drift", REGRESSION if drifted else OK, now, model=model, version=report.get("version"),
        target="inputs", reason=reason[:300], effect=effect,
        evidence={"statistic": "log_e_value", "value": None if top is None else top["statistic"],
                  "threshold": report["log_threshold"], "samples": report["rows_seen"],
                  "streams": report["streams"], "features": features,
                  "engine": "sequential", "reference": report["reference"]["hash"]})
