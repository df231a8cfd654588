"""The status page at ``/``: every model's rollout at a glance, rendered on the server.

Read-only and built from what the API already serves (model status, decisions, findings, the
journal, drift reports, edge rollouts, jobs and probes), plus per-version probe latency
quantiles per minute over the last hour from the series windows, drawn as inline SVG. The text
needs no JavaScript; a few lines of it refresh the page in place (without it, a ``<noscript>``
meta refresh reloads the page). No asset comes from anywhere but the daemon.

``collect`` reads the in-memory state on the event loop (cheap, consistent); the journal reads
and the latency quantiles go through ``PageSource`` methods that are safe in a thread, where
``render`` runs too.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import importlib.resources
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Protocol

import jinja2
from markdown_it import MarkdownIt
from markupsafe import Markup

from tfwarden.core.series import Bucket

HISTORY_SECONDS = 3600.0
BUCKET_SECONDS = 60.0
QUANTILES = (0.5, 0.9, 0.99)
TIMELINE_ENTRIES = 40
DEFAULT_REFRESH_SECONDS = 5
TEMPLATES = Path(__file__).resolve().parent / "templates"
# The page's one script, constant so that the Content-Security-Policy allows it by its hash and
# nothing else: every ``refresh`` seconds (``data-refresh``) it fetches the page again and swaps
# the header and the main part in; not while the tab is hidden; a failed fetch marks the page
# stale (the header's time turns red) and is tried again.
REFRESH_SCRIPT = """
(function () {
  var timer = null;
  function period() {
    var page = document.getElementById("page");
    return 1000 * Number((page && page.dataset.refresh) || 5);
  }
  function later() { clearTimeout(timer); timer = setTimeout(tick, period()); }
  function tick() {
    if (document.hidden) { return; }
    fetch(location.href, {cache: "no-store", headers: {"Accept": "text/html"}})
      .then(function (r) { if (!r.ok) { throw new Error(String(r.status)); } return r.text(); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        ["top", "page"].forEach(function (id) {
          var fresh = doc.getElementById(id), old = document.getElementById(id);
          if (fresh && old) { old.replaceWith(fresh); }
        });
        document.body.classList.remove("stale");
      })
      .catch(function () { document.body.classList.add("stale"); })
      .then(later);
  }
  document.addEventListener("visibilitychange", function () { if (!document.hidden) { tick(); } });
  later();
})();
"""
SCRIPT_SOURCE = "'sha256-" + base64.b64encode(hashlib.sha256(REFRESH_SCRIPT.encode()).digest()).decode() + "'"
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")
PHASE_CLASS = {"stable": "ok", "canary_shadow": "progress", "canary_live": "progress",
               "promoting": "progress", "rolling_back": "bad", "rolled_back": "bad",
               "paused": "warn"}
VERDICT_CLASS = {"ok": "ok", "regression": "bad", "inconclusive": "warn"}


class PageSource(Protocol):
    """What the page reads from the daemon."""

    def now(self) -> float: ...

    def status(self) -> dict[str, Any]: ...

    def models(self) -> list[dict[str, Any]]: ...

    def model_detail(self, name: str) -> dict[str, Any] | None:
        """A managed model's status, decisions and any decision awaiting approval."""
        ...

    def findings(self) -> list[dict[str, Any]]: ...

    def probes_debug(self) -> dict[str, Any]: ...

    def drift_report(self, name: str) -> dict[str, Any] | None: ...

    def edge_rollout(self, model: str) -> dict[str, Any] | None: ...

    def edge_models(self) -> list[str]: ...

    def drift_worker(self) -> dict[str, Any] | None:
        """The drift worker's health; None when no model uses it."""
        ...

    def timeline(self, model: str, limit: int) -> list[dict[str, Any]]:
        """The latest ``limit`` journal entries of ``model``, latest first (thread-safe)."""
        ...

    def latency(self, model: str, since: float,
                bucket_seconds: float) -> dict[int, list[Bucket]]:
        """Per-version probe latency buckets of ``model`` (thread-safe)."""
        ...


# -- the page's data --------------------------------------------------------------------------
@dataclass
class Snapshot:
    """What ``collect`` read on the event loop; ``render`` adds the rest in a thread."""

    now: float
    refresh: int
    only: str | None
    status: dict[str, Any]
    models: list[dict[str, Any]]
    findings: list[dict[str, Any]]
    probes: dict[str, Any]
    drift: dict[str, dict[str, Any]]
    edge: list[dict[str, Any]]
    drift_worker: dict[str, Any] | None
    unknown: bool = False  # ``only`` names no model tfwarden knows


def collect(source: PageSource, refresh: int = DEFAULT_REFRESH_SECONDS,
            only: str | None = None) -> Snapshot:
    """The in-memory state the page shows (call on the event loop)."""
    now = source.now()
    names = [m["model"] for m in source.models()]
    configured = [m["name"] for m in source.status().get("models", [])]
    edge_names = source.edge_models()
    picked = [n for n in names if only in (None, n)]
    findings = [f for f in source.findings() if only in (None, f.get("model"), f.get("target"))]
    models = [{**m, "findings": [f for f in findings if f.get("model") == m.get("model")]}
              for m in (source.model_detail(n) for n in picked) if m is not None]
    drift = {n: r for n in dict.fromkeys([*names, *configured]) if only in (None, n)
             and (r := source.drift_report(n)) is not None}
    edge = [r for n in edge_names if only in (None, n) and (r := source.edge_rollout(n)) is not None]
    unknown = only is not None and only not in {*names, *configured, *edge_names} \
        and not findings  # a memory target is known by its findings
    return Snapshot(now, refresh, only, source.status(), models, findings, source.probes_debug(),
                    drift, edge, source.drift_worker(), unknown)


@dataclass
class Evidence:
    subject: str  # the model, or the memory target
    detector: str
    version: str
    target: str
    verdict: str
    css: str
    statistic: str
    value: str
    threshold: str
    samples: str
    reason: str
    age: str = ""


@dataclass
class Event:
    id: int
    t: float
    age: str
    when: str
    kind: str
    css: str
    title: str
    detail: str = ""
    action: str = ""
    evidence: list[Evidence] = field(default_factory=list)


@dataclass
class LatencyRow:
    version: int
    role: str
    color: str
    p50: str
    p90: str
    p99: str
    count: int
    failed: int
    age: str  # of the minute the row gives


@dataclass
class ModelView:
    name: str
    phase: str
    css: str
    stable: Any
    canary: Any
    previous: Any
    weight: int
    age: str
    status: dict[str, Any]
    findings: list[Evidence]
    timeline: list[Event]
    chart: Markup
    latency: list[LatencyRow]


def render(source: PageSource, snap: Snapshot) -> str:
    """The page's HTML (safe in a thread: it reads the journal and the windows)."""
    since = snap.now - HISTORY_SECONDS
    views = []
    for model in snap.models:
        name = model["model"]
        buckets = source.latency(name, since, BUCKET_SECONDS)
        roles = _roles(model)
        views.append(ModelView(
            name=name, phase=model["phase"], css=PHASE_CLASS.get(model["phase"], ""),
            stable=model.get("stable_version"), canary=model.get("canary_version"),
            previous=model.get("previous_good"), weight=int(model.get("weight") or 0),
            age=ago(snap.now, model.get("since")), status=model,
            findings=[evidence(f, snap.now) for f in model.get("findings", [])],
            timeline=[event(e, snap.now) for e in source.timeline(name, TIMELINE_ENTRIES)],
            chart=latency_chart(buckets, roles, since, snap.now),
            latency=latency_rows(buckets, roles, snap.now)))
    shown = {v.name for v in views} | {r.get("model") for r in snap.edge}  # their own sections
    other = [evidence(f, snap.now) for f in snap.findings if f.get("model") not in shown]
    return _environment().get_template("status.html").render(
        snap=snap, models=views, other_findings=other, drift=_drift_views(snap.drift),
        edge=[_edge_view(r, snap.now) for r in snap.edge], health=_health(snap),
        generated=_utc(snap.now), ago=lambda t: ago(snap.now, t), versions_text=versions_text,
        refresh_script=Markup(REFRESH_SCRIPT))


def _environment() -> jinja2.Environment:
    global _ENV
    if _ENV is None:
        _ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                                  autoescape=True, undefined=jinja2.ChainableUndefined,
                                  trim_blocks=True, lstrip_blocks=True)
    return _ENV


_ENV: jinja2.Environment | None = None


# -- formatting -------------------------------------------------------------------------------
def ago(now: float, t: Any) -> str:
    """``t`` as an age: "12 s ago", "3 min ago", "2.5 h ago", "4 d ago"; "-" without a time."""
    if not isinstance(t, int | float) or isinstance(t, bool) or not math.isfinite(t):
        return "-"
    seconds = max(0.0, now - t)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.0f} d ago"


def _utc(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def number(value: Any) -> str:
    """A short readable number; "-" for nothing."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.3e}"
    return str(value)


def evidence(finding: dict[str, Any], now: float) -> Evidence:
    """A finding as one row: what was judged, on which statistic, against which threshold."""
    ev = finding.get("evidence")
    ev = ev if isinstance(ev, dict) else {}
    version = finding.get("version")
    return Evidence(
        subject=str(finding.get("model") or finding.get("target") or ""),
        detector=str(finding.get("detector", "")), version="-" if version is None else f"v{version}",
        target=str(finding.get("target") or ""), verdict=str(finding.get("verdict", "")),
        css=VERDICT_CLASS.get(str(finding.get("verdict")), ""),
        statistic=str(ev.get("statistic") or "-"), value=number(ev.get("value")),
        threshold=number(ev.get("threshold")), samples=number(ev.get("samples")),
        reason=str(finding.get("reason") or ""), age=ago(now, finding.get("t")))


def _params(params: Any) -> str:
    if not isinstance(params, dict) or not params:
        return ""
    return ", ".join(f"{k} {v}" for k, v in sorted(params.items()))


def event(entry: dict[str, Any], now: float) -> Event:
    """A journal entry as a timeline line; one of a shape this version does not know (an older
    or newer daemon wrote it) as its raw text."""
    try:
        return _event(entry, now)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        raw = json.dumps(entry.get("payload"), default=str)[:300]
        t = entry.get("t")
        t = float(t) if isinstance(t, int | float) and math.isfinite(t) else now
        return Event(id=int(entry.get("id") or 0), t=t, age=ago(now, t), when=_utc(t),
                     kind=str(entry.get("kind", "")), css="", title=str(entry.get("kind", "")),
                     detail=raw)


def _event(entry: dict[str, Any], now: float) -> Event:
    kind, p = entry["kind"], entry.get("payload")
    p = p if isinstance(p, dict) else {}
    base = Event(id=int(entry["id"]), t=float(entry["t"]), age=ago(now, entry["t"]),
                 when=_utc(float(entry["t"])), kind=kind, css="", title=kind.replace("_", " "))
    action = str(p.get("action", ""))
    raw = p.get("params")
    params: dict[str, Any] = raw if isinstance(raw, dict) else {}
    if kind == "lifecycle_adopted":
        base.title, base.css = f"adopted: v{p.get('stable_version')} is stable", "ok"
    elif kind == "new_version":
        base.title = f"new version v{p.get('version')} found"
    elif kind == "action_done":
        base.title, base.css, base.action = _done(action, params), _action_css(action), action
        base.detail = f"took {number(p.get('seconds'))} s"
    elif kind == "action_failed":
        base.title, base.css, base.action = f"{action} failed", "bad", action
        base.detail = str(p.get("error", ""))
    elif kind == "action_intent":
        base.title, base.action = f"{action} started ({p.get('origin', '')})", action
        base.detail = _params(params)
    elif kind in ("decision", "awaiting_approval"):
        waiting = " (waiting for approval)" if kind == "awaiting_approval" else ""
        dry = " (dry run: not carried out)" if p.get("dry_run") else ""
        base.title = f"decision: {_decided(action, params)}{waiting}{dry}"
        base.css, base.action = _action_css(action), action
        base.detail = f"rule {p.get('rule', '')}: {p.get('reason', '')}"
        used = p.get("findings")
        base.evidence = [evidence(f, now) for f in used if isinstance(f, dict)] \
            if isinstance(used, list) else []
    elif kind == "finding":
        base.title = (f"{p.get('detector', '')} v{p.get('version')} ({p.get('target') or '-'}): "
                      f"{p.get('verdict', '')}")
        base.css = VERDICT_CLASS.get(str(p.get("verdict")), "")
        base.evidence = [evidence(p, now)]
    elif kind == "alert":
        base.title = f"alert {p.get('state', '')}: {p.get('alertname', '')} {p.get('severity', '')}"
        base.css = "warn" if p.get("state") == "firing" else ""
        base.detail = str(p.get("summary", ""))
    elif kind == "manual_action":
        base.title, base.action = f"operator asked: {action}", action
    else:
        base.detail = ", ".join(f"{k} {v}" for k, v in sorted(p.items())
                                if k != "model" and isinstance(v, str | int | float))[:300]
        base.css = "bad" if kind.endswith(("failed", "rejected", "refused")) else ""
    return base


def _done(action: str, params: dict[str, Any]) -> str:
    if action == "stage_canary":
        return f"canary v{params.get('version')} staged"
    if action == "set_weight":
        return f"canary weight set to {params.get('weight')} %"
    if action == "promote":
        return f"v{params.get('version')} promoted to stable"
    if action == "rollback":
        return f"rolled back: v{params.get('from_version')} → v{params.get('to_version')}"
    return f"{action} done {_params(params)}".strip()


def _decided(action: str, params: dict[str, Any]) -> str:
    if action == "rollback":
        return f"roll back v{params.get('from_version')} → v{params.get('to_version')}"
    if action == "set_weight":
        return f"set the canary weight to {params.get('weight')} %"
    if action == "promote":
        return f"promote v{params.get('version')}" if "version" in params else "promote"
    return f"{action} {_params(params)}".strip()


def _action_css(action: str) -> str:
    return {"rollback": "bad", "promote": "ok", "hold": "warn"}.get(action, "progress")


def _roles(model: dict[str, Any]) -> dict[int, str]:
    roles: dict[int, str] = {}
    for key, role in (("previous_good", "previous"), ("canary_version", "canary"),
                      ("stable_version", "stable")):
        if isinstance(model.get(key), int):
            roles[model[key]] = role
    return roles


# -- latency ----------------------------------------------------------------------------------
def latency_rows(buckets: dict[int, list[Bucket]], roles: dict[int, str],
                 now: float) -> list[LatencyRow]:
    """The latest minute with data of each version (newest versions first)."""
    rows = []
    for i, (version, series) in enumerate(sorted(buckets.items())):
        last = series[-1]
        p50, p90, p99 = (number(q) for q in last.quantiles)
        rows.append(LatencyRow(version, roles.get(version, ""), PALETTE[i % len(PALETTE)],
                               p50, p90, p99, last.count, last.failed, ago(now, last.start)))
    return rows[::-1]


def _nice(top: float) -> float:
    """The smallest 1, 2 or 5 x 10^k at or above ``top``."""
    if top <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(top))
    return float(next(m * power for m in (1, 2, 5, 10) if m * power >= top))


def latency_chart(buckets: dict[int, list[Bucket]], roles: dict[int, str], since: float,
                  now: float, width: int = 640, height: int = 220) -> Markup:
    """p50 (solid) and p99 (dashed) per version and minute over [since, now], as inline SVG."""
    left, right, top, bottom = 52, 8, 12, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [q for series in buckets.values() for b in series
              for q in (b.quantiles[0], b.quantiles[-1]) if q is not None and math.isfinite(q)]
    y_max = _nice(max(values) * 1.05) if values else 1.0

    def x(t: float) -> float:
        return left + plot_w * min(1.0, max(0.0, (t - since) / max(1.0, now - since)))

    def y(v: float) -> float:
        return top + plot_h * (1 - min(1.0, v / y_max))

    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="probe latency per version over the last hour, milliseconds">']
    for i in range(5):
        v = y_max * i / 4
        parts.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y(v):.1f}" '
                     f'y2="{y(v):.1f}"/><text class="tick" x="{left - 4}" y="{y(v) + 4:.1f}" '
                     f'text-anchor="end">{number(v)}</text>')
    span = now - since
    for i in range(5):
        t = since + span * i / 4
        label = "now" if i == 4 else f"-{(now - t) / 60:.0f} min"
        anchor = "end" if i == 4 else "start" if i == 0 else "middle"
        parts.append(f'<text class="tick" x="{x(t):.1f}" y="{height - 6}" '
                     f'text-anchor="{anchor}">{label}</text>')
    parts.append(f'<text class="tick" x="4" y="{top + 8}">ms</text>')
    for i, (version, series) in enumerate(sorted(buckets.items())):
        color = PALETTE[i % len(PALETTE)]
        for index, dash in ((0, ""), (len(QUANTILES) - 1, ' stroke-dasharray="5 3"')):
            points = [(x(b.start + BUCKET_SECONDS / 2), y(q)) for b in series
                      if (q := b.quantiles[index]) is not None and math.isfinite(q)]
            name = f"p{QUANTILES[index] * 100:g}"
            attrs = (f'data-version="{version}" data-quantile="{name}" stroke="{color}"'
                     f'{dash}')
            if len(points) == 1:
                parts.append(f'<circle {attrs} fill="{color}" cx="{points[0][0]:.1f}" '
                             f'cy="{points[0][1]:.1f}" r="2.5"><title>v{version} {name}</title>'
                             '</circle>')
            elif points:
                path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
                parts.append(f'<polyline {attrs} fill="none" stroke-width="2" points="{path}">'
                             f'<title>v{version} {roles.get(version, "")} {name}</title>'
                             '</polyline>')
    if not buckets:
        parts.append(f'<text class="empty" x="{left + plot_w / 2}" y="{top + plot_h / 2}" '
                     'text-anchor="middle">no probe latency in the last hour</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # built here from numbers and ints only: nothing to escape


# -- drift, edge, health ----------------------------------------------------------------------
@dataclass
class FeatureRow:
    name: str
    kind: str
    test: str
    statistic: str
    p_value: str
    effect: str
    drifted: bool


@dataclass
class DriftView:
    model: str
    method: str
    engine: str
    drift: bool
    rows: str
    threshold: str
    version: str
    problem: str
    collecting: str
    features: list[FeatureRow]


def _drift_views(reports: dict[str, dict[str, Any]]) -> list[DriftView]:
    views = []
    for name, report in sorted(reports.items()):
        inputs = report.get("inputs") or {}
        features = []
        for f in inputs.get("features", []) if isinstance(inputs, dict) else []:
            if not isinstance(f, dict):
                continue
            drifted = bool(f.get("drifted", f.get("drift", False)))
            effect = f.get("effect", f.get("psi"))  # the window engines give the PSI
            features.append(FeatureRow(
                str(f.get("name", "")), str(f.get("kind", "")), str(f.get("test", "")),
                number(f.get("statistic")), number(f.get("p_adjusted", f.get("p_value"))),
                number(effect) if isinstance(effect, int | float) else "-", drifted))
        collecting = report.get("collecting_reference")
        views.append(DriftView(
            model=name, method=str(report.get("method", "")), engine=str(report.get("engine", "")),
            drift=bool(inputs.get("drift")) if isinstance(inputs, dict) else False,
            rows=number(inputs.get("rows_seen", inputs.get("rows"))) if isinstance(inputs, dict)
            else "-",
            threshold=number(inputs.get("log_threshold", inputs.get("p_value")))
            if isinstance(inputs, dict) else "-",
            version="-" if not isinstance(inputs, dict) or inputs.get("version") is None
            else f"v{inputs['version']}",
            problem=str(report.get("problem") or ""),
            collecting=(f"collecting the reference: {collecting['rows']} of {collecting['needed']} rows"
                        if isinstance(collecting, dict) else ""),
            features=features))
    return views


@dataclass
class CohortRow:
    name: str
    candidate: int
    current: int
    pinned: str


def _edge_view(rollout: dict[str, Any], now: float) -> dict[str, Any]:
    pinned = rollout.get("pinned") or {}
    cohorts = rollout.get("cohorts") or {}
    rows = [CohortRow(name, int(c.get("candidate", 0)), int(c.get("current", 0)),
                      f"v{pinned[name]}" if name in pinned else "")
            for name, c in sorted(cohorts.items())]
    rows += [CohortRow(name, 0, 0, f"v{v}") for name, v in sorted(pinned.items())
             if name not in cohorts]
    return {"model": rollout.get("model"), "phase": rollout.get("phase"),
            "current": rollout.get("current"), "candidate": rollout.get("candidate"),
            "percent": rollout.get("percent"), "steps": rollout.get("steps") or [],
            "reason": rollout.get("reason") or "", "age": ago(now, rollout.get("since")),
            "cohorts": rows, "findings": [evidence(f, now) for f in rollout.get("findings", [])]}


def _health(snap: Snapshot) -> dict[str, Any]:
    status, probes = snap.status, snap.probes
    failures = {name: entries[-1] for name, entries in (probes.get("failures") or {}).items()
                if entries}
    targets = []
    for target in probes.get("predict", []):
        outcomes = target.get("outcomes") or {}
        bad = sum(n for outcome, n in outcomes.items() if outcome != "ok")
        targets.append({**target, "bad": bad, "p50": number(target.get("p50_ms")),
                        "p99": number(target.get("p99_ms")),
                        "outcomes_text": ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))})
    jobs = [{**job, "duration": number(job.get("last_duration_seconds")),
             "last": ago(snap.now, job.get("last_start"))} for job in status.get("jobs", [])]
    config = status.get("config") or {}
    process = status.get("process") or {}
    uptime = status.get("uptime_seconds")
    return {"version": status.get("version", ""), "ready": status.get("ready"),
            "uptime": ago(snap.now, snap.now - uptime).removesuffix(" ago")
            if isinstance(uptime, int | float) else "-", "config": config,
            "heavy": process.get("heavy_modules_loaded") or [], "jobs": jobs,
            "targets": targets, "window": number(probes.get("window_seconds")),
            "failures": [{"probe": k, "age": ago(snap.now, v.get("t")), "error": v.get("error")}
                         for k, v in sorted(failures.items())],
            "worker": snap.drift_worker, "leases": _leases(status, snap.now)}


def _leases(status: dict[str, Any], now: float) -> dict[str, Any] | None:
    """Replicas: this one, and who holds each unit (None for one daemon alone)."""
    leases = status.get("leases") or {}
    if leases.get("kind") != "postgres-leases":
        return None
    elsewhere = [m for m in status.get("models", []) if m.get("owner") != leases.get("replica")]
    return {**leases, "elsewhere": elsewhere,
            "rows": [{**u, "expires": number(u.get("expires_in_seconds"))}
                     for u in leases.get("units", [])]}


def versions_text(values: Sequence[Any]) -> str:
    return ", ".join(f"v{v}" for v in values) if values else "-"


# -- runbooks ---------------------------------------------------------------------------------
RUNBOOK_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,99}")


def _runbook_files() -> dict[str, Traversable]:
    """The shipped runbook pages (docs/runbooks, installed as ``tfwarden.docs.runbooks``)."""
    try:
        folder = importlib.resources.files("tfwarden.docs.runbooks")
        return {f.name.removesuffix(".md"): f for f in folder.iterdir()
                if f.name.endswith(".md") and f.name != "README.md" and f.is_file()}
    except (ModuleNotFoundError, OSError):  # not installed: the index says so, pages are 404
        return {}


def runbook_names() -> list[str]:
    return sorted(_runbook_files())


def runbook_text(name: str) -> str | None:
    """The Markdown of alert ``name``'s runbook; None when there is none."""
    name = name.removesuffix(".md")
    page = _runbook_files().get(name) if RUNBOOK_NAME.fullmatch(name) else None
    return page.read_text("utf-8") if page is not None else None


def runbook(name: str) -> str | None:
    """The runbook of alert ``name`` as HTML (``NAME.md`` too: the pages link each other so);
    None when there is none. Links are relative: the page works behind a path prefix."""
    text = runbook_text(name)
    if text is None:
        return None
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)
    return _environment().get_template("runbook.html").render(title=name.removesuffix(".md"),
                                                              body=Markup(body),
                                                              up="../", index="./")


def runbook_index() -> str:
    names = runbook_names()
    return _environment().get_template("runbook.html").render(
        title="runbooks", names=names, body=None, up="../", index="./")
