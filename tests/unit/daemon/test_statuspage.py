"""The status page from a fake daemon: what each part shows, escaping, and the runbooks."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from tfwarden.core.series import Bucket
from tfwarden.daemon import statuspage
from tfwarden.daemon.http import create_app
from tfwarden.daemon.recorder import Recorder

NOW = 1_800_000_000.0


def finding(detector: str, verdict: str, version: int = 2, **evidence: Any) -> dict[str, Any]:
    return {"t": NOW - 30, "detector": detector, "model": "m", "version": version, "target": "v1",
            "verdict": verdict, "severity": "", "reason": "median 1.9x stable", "effect": {},
            "evidence": {"statistic": "log_e_value", "value": 17.5, "threshold": 16.118,
                         "samples": 65, **evidence}}


class FakeDaemon:
    def __init__(self) -> None:
        self.status_ = {"model": "m", "phase": "canary_live", "stable_version": 1,
                        "canary_version": 2, "previous_good": None, "weight": 25,
                        "since": NOW - 120, "promoted_at": None, "paused_from": None,
                        "last_error": "", "rejected": [], "awaiting_approval": None,
                        "decisions": []}
        self.entries: list[dict[str, Any]] = [
            {"id": 1, "t": NOW - 300, "kind": "lifecycle_adopted", "model": "m",
             "payload": {"model": "m", "stable_version": 1}},
            {"id": 2, "t": NOW - 200, "kind": "new_version", "model": "m",
             "payload": {"model": "m", "version": 2}},
            {"id": 3, "t": NOW - 199, "kind": "action_done", "model": "m",
             "payload": {"action": "stage_canary", "params": {"version": 2}, "seconds": 0.2}},
            {"id": 4, "t": NOW - 10, "kind": "decision", "model": "m",
             "payload": {"rule": "rollback-canary-on-regression", "action": "rollback",
                         "params": {"from_version": 2, "to_version": 1},
                         "reason": "latency regression v2", "dry_run": False,
                         "findings": [finding("latency", "regression")]}},
        ]
        self.buckets: dict[int, list[Bucket]] = {
            1: [Bucket(NOW - 600 + 60 * i, (10.0, 12.0, 15.0), 100, 0) for i in range(10)],
            2: [Bucket(NOW - 120, (30.0, 40.0, 55.0), 50, 1)]}
        self.drift: dict[str, Any] | None = None
        self.rollout: dict[str, Any] | None = None
        self.leases: dict[str, Any] = {"kind": "sole", "units": []}

    def now(self) -> float:
        return NOW

    def status(self) -> dict[str, Any]:
        return {"version": "0.1.0", "ready": True, "uptime_seconds": 12.5,
                "config": {"path": "/etc/tfwarden.yaml", "generation": 3,
                           "last_reload": {"ok": False, "error": "models[0].slo: bad"},
                           "pending_restart": []},
                "models": [{"name": "m", "serving": "dev"}], "leases": self.leases,
                "jobs": [{"name": "policy", "interval_seconds": 2.0, "runs": 5,
                          "last_start": NOW - 1, "last_duration_seconds": 0.001,
                          "last_outcome": "failure", "last_error": "boom"}],
                "process": {"heavy_modules_loaded": []}}

    def models(self) -> list[dict[str, Any]]:
        return [self.status_]

    def model_detail(self, name: str) -> dict[str, Any] | None:
        if name != "m":
            return None
        return dict(self.status_)

    def findings(self) -> list[dict[str, Any]]:
        return [finding("latency", "regression"),
                {"t": NOW, "detector": "memory", "model": "", "version": None,
                 "target": "devserver", "verdict": "inconclusive", "evidence": {"samples": 3}}]

    def probes_debug(self) -> dict[str, Any]:
        return {"window_seconds": 60.0, "predict": [
            {"target": "m/canary", "samples": 20, "outcomes": {"ok": 18, "timeout": 2},
             "p50_ms": 30.0, "p99_ms": 80.0, "last_t": NOW - 1}],
            "failures": {"predict:m": [{"t": NOW - 5, "error": "timed out"}]}}

    def drift_report(self, name: str) -> dict[str, Any] | None:
        return self.drift if name == "m" else None

    def edge_rollout(self, model: str) -> dict[str, Any] | None:
        return self.rollout

    def edge_models(self) -> list[str]:
        return ["e"] if self.rollout else []

    def drift_worker(self) -> dict[str, Any] | None:
        return {"up": True, "restarts": 1, "last_error": None} if self.drift else None

    def timeline(self, model: str, limit: int) -> list[dict[str, Any]]:
        return sorted(self.entries, key=lambda e: -e["id"])[:limit] if model == "m" else []

    def latency(self, model: str, since: float, bucket_seconds: float) -> dict[int, list[Bucket]]:
        return self.buckets if model == "m" else {}


def page(daemon: FakeDaemon, **kwargs: Any) -> str:
    return statuspage.render(daemon, statuspage.collect(daemon, **kwargs))


def test_model_versions_weight_and_timeline_with_the_decision_evidence() -> None:
    html = page(FakeDaemon())
    assert 'data-model="m" data-phase="canary_live"' in html
    assert re.search(r'data-role="stable">v1<', html) and re.search(r'data-role="canary">v2<', html)
    assert 'data-role="weight">25 %' in html
    kinds = re.findall(r'<li class="[^"]*" data-kind="([a-z_]+)"', html)
    assert kinds == ["decision", "action_done", "new_version", "lifecycle_adopted"]  # latest first
    decision = html[html.index('data-kind="decision"'):html.index('data-kind="action_done"')]
    assert "decision: roll back v2 → v1" in decision
    assert "rule rollback-canary-on-regression: latency regression v2" in decision
    assert "log_e_value" in decision and ">17.5<" in decision and ">16.12<" in decision
    assert "canary v2 staged" in html


def test_latency_chart_draws_each_version_and_the_table_gives_its_latest_minute() -> None:
    html = page(FakeDaemon())
    assert re.search(r'<polyline data-version="1" data-quantile="p50"', html)
    assert re.search(r'<polyline data-version="1" data-quantile="p99"[^>]*stroke-dasharray', html)
    assert re.search(r'<circle data-version="2" data-quantile="p50"', html)  # a single minute
    row = re.search(r'<tr data-version="2">(.*?)</tr>', html, re.S)
    assert row and ">30<" in row.group(1) and ">55<" in row.group(1) and "canary" in row.group(1)


def test_an_empty_history_says_so() -> None:
    daemon = FakeDaemon()
    daemon.buckets = {}
    assert "no probe latency in the last hour" in page(daemon)


def test_health_shows_failed_jobs_probe_failures_and_a_failed_reload() -> None:
    html = page(FakeDaemon())
    assert "Last reload failed: models[0].slo: bad" in html
    assert "boom" in html and "timed out" in html and "timeout 2" in html
    assert "no TensorFlow in the daemon" in html
    assert "devserver" in html  # a memory target's finding, under other findings


def test_replicas_show_who_holds_each_unit_and_which_models_run_elsewhere() -> None:
    daemon = FakeDaemon()
    assert 'id="replicas"' not in page(daemon)  # one daemon alone: no such section
    daemon.leases = {
        "kind": "postgres-leases", "replica": "r1", "url": "http://r1:9321", "ttl_seconds": 15.0,
        "confirmed": False, "live_replicas": ["r1", "r2"],
        "last_error": "postgresql://db:5432/tfwarden: unreachable", "held": ["serving/dev"],
        "units": [{"unit": "serving/dev", "owner": "r1", "token": 7, "expires_in_seconds": -2.0,
                   "url": "http://r1:9321", "mine": True, "state": "inconclusive"},
                  {"unit": "serving/other", "owner": "r2", "token": 9, "expires_in_seconds": 11.0,
                   "url": "http://r2:9321", "mine": False, "state": "other"}]}
    html = page(daemon)
    assert 'id="replicas"' in html and "This is replica <b>r1</b>" in html
    assert "inconclusive: nothing acts" in html and "unreachable" in html
    assert '<a href="http://r2:9321">r2</a>' in html and 'data-unit="serving/other"' in html


def test_drift_features_and_edge_cohorts() -> None:
    daemon = FakeDaemon()
    daemon.drift = {"method": "sequential", "engine": "scipy", "inputs": {
        "drift": True, "rows_seen": 900, "log_threshold": 14.2, "version": 2,
        "features": [{"name": "age", "kind": "numeric", "test": "e-cusum", "statistic": 20.1,
                      "drifted": True, "effect": 0.4},
                     {"name": "city", "kind": "categorical", "test": "e-cusum",
                      "statistic": 1.0, "alarmed": False}]}}
    daemon.rollout = {"model": "e", "phase": "rolling_out", "current": 1, "candidate": 2,
                      "percent": 5, "steps": [5, 25, 100], "since": NOW - 60, "reason": "",
                      "pinned": {"gpu | s23": 1}, "cohorts": {"cpu | a": {"candidate": 40,
                                                                          "current": 900}},
                      "findings": []}
    html = page(daemon)
    assert "Data drift" in html and "<td>age</td>" in html and "rows of v2" in html
    assert "Drift worker" in html
    assert "cpu | a" in html and "gpu | s23" in html and ">v1<" in html


def test_text_from_the_journal_is_escaped() -> None:
    daemon = FakeDaemon()
    daemon.entries.append({"id": 9, "t": NOW, "kind": "action_failed", "model": "m",
                           "payload": {"action": "rollback", "error": "<script>alert(1)</script>"}})
    html = page(daemon)
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html


def test_one_model_and_an_unknown_one() -> None:
    daemon = FakeDaemon()
    assert 'data-model="m"' in page(daemon, only="m")
    assert statuspage.collect(daemon, only="nope").unknown  # a JSON 404 (below)
    assert not statuspage.collect(daemon, only="devserver").unknown  # a memory target's findings


def test_ages() -> None:
    assert statuspage.ago(NOW, NOW - 5) == "5 s ago"
    assert statuspage.ago(NOW, NOW - 600) == "10 min ago"
    assert statuspage.ago(NOW, NOW - 9000) == "2.5 h ago"
    assert statuspage.ago(NOW, None) == "-"


def get(path: str) -> httpx.Response:
    daemon = FakeDaemon()
    daemon.recorder = Recorder(CollectorRegistry(), version="test")  # type: ignore[attr-defined]

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(daemon))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.get(path)

    return asyncio.run(go())


def test_served_at_the_root_as_html_that_loads_nothing_from_elsewhere() -> None:
    response = get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'sha256-" in policy
    assert "unsafe-inline" not in policy.split("script-src")[1].split(";")[0]
    script = re.findall(r"<script>(.*?)</script>", response.text, re.S)
    assert script == [statuspage.REFRESH_SCRIPT]  # the one script, the one the hash allows
    assert not re.search(r'(src|href)="(https?:)?//', response.text)  # no CDN, no other origin
    assert 'http-equiv="refresh" content="5"' in response.text  # without JavaScript too
    assert get("/?refresh=2").text.count('data-refresh="2"') == 1
    bad = get("/?refresh=0")
    assert bad.status_code == 400 and "refresh" in bad.json()["error"]
    unknown = get("/?model=nope")
    assert unknown.status_code == 404 and "no model named 'nope'" in unknown.json()["error"]


def test_runbooks_are_served_for_every_shipped_alert() -> None:
    index = get("/runbooks/")
    assert index.status_code == 200
    names = re.findall(r'<li><a href="([A-Za-z0-9_-]+)">', index.text)
    assert names, "no runbook pages installed (docs/runbooks as tfwarden.docs.runbooks)"
    page_ = get(f"/runbooks/{names[0]}")
    assert page_.status_code == 200 and "<h1>" in page_.text
    assert get(f"/runbooks/{names[0]}.md").text == page_.text  # as the pages link each other
    assert 'href="../">status' in page_.text
    for bad in ("/runbooks/Nope", "/runbooks/..%2Fstatus", "/runbooks/README"):
        response = get(bad)
        assert response.status_code == 404 and "runbook" in response.json()["error"], bad


def test_pages_asked_for_within_a_second_are_rendered_once() -> None:
    daemon = FakeDaemon()
    daemon.recorder = Recorder(CollectorRegistry(), version="test")  # type: ignore[attr-defined]
    renders = []
    original = daemon.latency

    def counting(model: str, since: float, bucket_seconds: float) -> dict[int, list[Bucket]]:
        renders.append(model)
        return original(model, since, bucket_seconds)

    daemon.latency = counting  # type: ignore[method-assign]

    async def go() -> list[int]:
        transport = httpx.ASGITransport(app=create_app(daemon))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            answers = await asyncio.gather(*(client.get("/") for _ in range(5)),
                                           client.get("/?refresh=2"))
            return [a.status_code for a in answers]

    assert asyncio.run(go()) == [200] * 6
    assert renders == ["m", "m"]  # one render for "/", one for "/?refresh=2"


def test_sparse_answers_still_render() -> None:
    """Whatever key a part of the daemon leaves out, the page renders the rest."""
    daemon = FakeDaemon()
    daemon.status = lambda: {}  # type: ignore[method-assign]
    daemon.probes_debug = lambda: {}  # type: ignore[method-assign]
    daemon.entries.append({"id": 10, "t": NOW, "kind": "decision", "model": "m",
                           "payload": {"findings": [{}, "not a finding"], "params": [1]}})
    daemon.entries.append({"id": 11, "t": NOW, "kind": "something_new", "model": "m",
                           "payload": {"nested": {"a": 1}, "n": float("nan")}})
    daemon.status_ = {"model": "m", "phase": "stable"}
    html = page(daemon)
    assert 'data-model="m" data-phase="stable"' in html and 'data-kind="something_new"' in html


def test_other_findings_name_their_model_or_target() -> None:
    daemon = FakeDaemon()
    burn = {**finding("burn", "regression", version=4), "model": "other", "target": "slo"}
    daemon.findings = lambda: [burn]  # type: ignore[method-assign]
    html = page(daemon)
    other = html[html.index('id="findings-other"'):]
    assert "<td>other</td><td>burn</td><td>v4</td><td>slo</td>" in other


def test_odd_journal_entries_and_values_do_not_break_the_page() -> None:
    daemon = FakeDaemon()
    daemon.entries += [
        {"id": 20, "t": NOW, "kind": "decision", "model": "m", "payload": {"findings": None}},
        {"id": 21, "t": NOW, "kind": "finding", "model": "m", "payload": {"evidence": [1, 2]}},
        {"id": 22, "t": NOW, "kind": "action_done", "model": "m", "payload": ["not", "a", "dict"]},
        {"id": 23, "t": "yesterday", "kind": "new_version", "model": "m", "payload": {}},
    ]
    daemon.buckets[3] = [Bucket(NOW - 60, (float("inf"), float("nan"), float("inf")), 1, 0)]
    html = page(daemon)
    for entry in (20, 21, 22, 23):
        assert f'data-id="{entry}"' in html
