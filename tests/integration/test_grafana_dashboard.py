"""The Grafana dashboard deploy/grafana/tfwarden.json.

Grafana itself cannot be installed here, so its queries are checked the way Grafana would run
them: against a real Prometheus (Debian's) scraping tfwarden's /metrics and a devserver's TF
Serving metrics page once a second, with a (slower) canary live, captured rows and drift checks
of both methods, and OTLP telemetry of an edge model (kept, rejected and refused). The template
variables are resolved through Prometheus' label values API, every ``$variable`` is substituted
as Grafana substitutes it, and every panel query (nested rows included) must answer with real
series. The static checks (layout, ids, metric names) need no processes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.e2e.test_canary_lifecycle import new_version, status, wait_for
from tests.helpers import REPO, TESTDATA, DaemonProcess, DevServer, daemon_config, free_port

DASHBOARD = REPO / "deploy" / "grafana" / "tfwarden.json"
MODEL = TESTDATA / "tfserving" / "saved_model_half_plus_two_cpu" / "00000123"
EDGE_MODEL = "digits"  # an edge model (edge.models): OTLP telemetry from devices
# Grafana with the data source's scrape interval set to Prometheus' 1 s and a 5 minute range:
# $__interval is never below the scrape interval; $__rate_interval is
# max($__interval + scrape interval, 4 * scrape interval).
SCRAPE_SECONDS = 1
RANGE_SECONDS = 300
INTERVAL_SECONDS = SCRAPE_SECONDS
RATE_INTERVAL_SECONDS = max(INTERVAL_SECONDS + SCRAPE_SECONDS, 4 * SCRAPE_SECONDS)
BUILTINS = {
    "__rate_interval": f"{RATE_INTERVAL_SECONDS}s",
    "__interval": f"{INTERVAL_SECONDS}s",
    "__interval_ms": str(INTERVAL_SECONDS * 1000),
    "__range": f"{RANGE_SECONDS}s",
    "__range_s": str(RANGE_SECONDS),
    "__range_ms": str(RANGE_SECONDS * 1000),
}
# the first canary step and no rule after it (no rollback, no promotion): the canary, slower
# than stable, stays live at 10 %
RULES = """rules:
  - name: first-canary-step
    when:
      status: {phase: [canary_live], weight_below: 10}
      all:
        - {detector: errors, verdict: ok, role: canary, min_samples: 20}
    action: set_weight
    params: {steps: [10]}
    guards: {cooldown_seconds: 1}
"""
FUNCTIONS = {"sum", "count", "max", "min", "avg", "rate", "increase", "histogram_quantile",
             "time"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right"}
LABEL_VALUES = re.compile(r"^\s*label_values\((?:(?P<expr>.+),\s*)?(?P<label>\w+)\)\s*$", re.S)
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")


# -- the dashboard ------------------------------------------------------------------------------
def load() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, the panels of collapsed rows included."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title and refId, expr) of every target of every panel."""
    return [(f"{panel['title']} {target['refId']}", target["expr"])
            for panel in all_panels(dashboard["panels"]) for target in panel.get("targets", [])]


def variable_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, query) of every query variable, in the dashboard's order."""
    found = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            found.append((variable["name"], query["query"] if isinstance(query, dict) else query))
    return found


# -- Grafana's substitution ---------------------------------------------------------------------
def regex_escape(value: str) -> str:
    """Grafana's Prometheus regex escape of one value, inside a PromQL string literal."""
    return re.sub(r"[\\^$*+?.()|{}\[\]]", lambda m: "\\\\" + m.group(0), value)


def interpolate(expr: str, variables: dict[str, list[str]]) -> str:
    """Substitute ``$name``, ``${name}`` and ``[[name]]``: a multi-value or All selection
    becomes ``(a|b)`` of regex-escaped values, as Grafana's Prometheus data source does;
    built-in interval and range variables their durations."""
    def value(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name in BUILTINS:
            return BUILTINS[name]
        if name == "datasource":
            return "prometheus"
        values = variables[name]
        return "(" + "|".join(regex_escape(v) for v in values) + ")"
    return VARIABLE.sub(value, expr)


# -- static checks ------------------------------------------------------------------------------
def recorder_metrics() -> set[str]:
    """Every series name daemon/recorder.py declares (histograms with their suffixes)."""
    source = (REPO / "daemon" / "recorder.py").read_text()
    names: set[str] = set()
    for kind, name in re.findall(r"\b(Counter|Gauge|Histogram)\(\s*\"(tfwarden_\w+)\"", source):
        names.add(name)
        if kind == "Histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    assert len(names) > 40, names
    return names


def tf_serving_metrics() -> set[str]:
    """TF Serving's series names, as the devserver (which reproduces its page) declares them."""
    source = (REPO / "serving" / "devserver" / "monitoring.py").read_text()
    source += "\n".join(p.read_text() for p in (REPO / "serving" / "devserver").glob("*.py"))
    names: set[str] = set()
    for kind, path in re.findall(r"\b(Counter|Histogram)\(\s*\"(/tensorflow/[\w/]+)\"", source):
        name = re.sub(r"[^a-zA-Z0-9_]", ":", path)
        names.add(name)
        if kind == "Histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    assert ":tensorflow:serving:request_count" in names, names
    return names


def metrics_of(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (bare or as ``__name__``); a function it
    calls must be one of FUNCTIONS."""
    names = set(re.findall(r"__name__\s*=~?\s*\"([^\"]+)\"", expr))
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)  # matchers, ranges
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    for word, call in re.findall(r"(?<![\w.:$])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        if call:
            assert word in FUNCTIONS, f"{word}() in {expr!r}"
        elif word not in KEYWORDS:
            names.add(word)
    return names


def overlaps(a: dict[str, int], b: dict[str, int]) -> bool:
    return (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
            and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])


def test_panels_have_titles_unique_ids_and_a_valid_layout() -> None:
    dashboard = load()
    assert 38 <= dashboard["schemaVersion"] <= 41 and dashboard["uid"] == "tfwarden"
    panels = list(all_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), ids
    for panel in panels:
        assert panel.get("title"), panel
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("h", "w", "x", "y")), panel["title"]
        assert grid["w"] >= 1 and grid["h"] >= 1 and grid["x"] >= 0 and grid["y"] >= 0
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            assert grid["w"] == 24 and grid["h"] == 1 and not panel.get("targets")
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
    # no two panels of one layout (the dashboard, or a collapsed row's panels) overlap
    for layout in [dashboard["panels"], *[p["panels"] for p in panels if p.get("panels")]]:
        for i, a in enumerate(layout):
            for b in layout[i + 1:]:
                assert not overlaps(a["gridPos"], b["gridPos"]), (a["title"], b["title"])


def test_variables_are_prometheus_queries_on_the_datasource_variable() -> None:
    variables = {v["name"]: v for v in load()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("model", "instance"):
        variable = variables[name]
        assert variable["type"] == "query" and variable["datasource"]["uid"] == "${datasource}"
        assert LABEL_VALUES.match(variable["query"]["query"]), variable["query"]
        assert variable["definition"] == variable["query"]["query"]
    exprs = [expr for _, expr in panel_queries(load())]
    assert all("$instance" in e for e in exprs if "tfwarden_" in e)
    assert all("$model" in e for e in exprs if "model" in e and "tfwarden_" not in e)


def test_queries_name_only_metrics_tfwarden_or_tf_serving_export() -> None:
    known = recorder_metrics() | tf_serving_metrics()
    dashboard = load()
    queries = panel_queries(dashboard) + [
        (f"variable {name}", match["expr"]) for name, query in variable_queries(dashboard)
        if (match := LABEL_VALUES.match(query)) and match["expr"]]
    assert len(queries) > 30
    for where, expr in queries:
        used = metrics_of(expr)
        assert used, f"{where}: no metric in {expr!r}"
        unknown = used - known
        assert not unknown, f"{where}: {sorted(unknown)} are not exported metrics"
        assert "vector(" not in expr and " or " not in expr, f"{where}: padded query {expr!r}"


# -- the stack ----------------------------------------------------------------------------------
class Prometheus:
    def __init__(self, work: Path, targets: dict[str, tuple[str, str]]) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is not installed (apt-get install prometheus); scripts/test does")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        jobs = "".join(f"""  - job_name: {job}
    metrics_path: {path}
    static_configs: [{{targets: ["{address}"]}}]
""" for job, (address, path) in targets.items())
        config = work / "prometheus.yml"
        config.write_text(f"global: {{scrape_interval: {SCRAPE_SECONDS}s, "
                          f"evaluation_interval: {SCRAPE_SECONDS}s}}\nscrape_configs:\n{jobs}")
        self.log = work / "prometheus.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={work / 'prom'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=out, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if self.client.get("/-/ready").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(0.2)

    def query(self, expr: str) -> dict[str, Any]:
        return dict(self.client.get("/api/v1/query", params={"query": expr}).json())

    def label_values(self, query: str) -> dict[str, Any]:
        """A label_values(...) variable query the way Grafana runs it."""
        match = LABEL_VALUES.match(query)
        assert match, query
        params = {"match[]": match["expr"]} if match["expr"] else {}
        return dict(self.client.get(f"/api/v1/label/{match['label']}/values", params=params).json())

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(timeout=15)


def write_models(work: Path) -> Path:
    base = work / "models" / "m"
    shutil.copytree(MODEL, base / "1")
    shutil.copytree(MODEL, work / "models" / "w" / "1")
    (work / "models.config").write_text(
        "model_config_list { "
        f'config {{ name: "m" base_path: "{base}" model_platform: "tensorflow" '
        "model_version_policy { specific { versions: 1 } } } "
        f'config {{ name: "w" base_path: "{work}/models/w" model_platform: "tensorflow" }} }}')
    (work / "monitoring.config").write_text(
        'prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }')
    (work / "golden.jsonl").write_text(json.dumps(
        {"request": {"instances": [2.0]}, "expected": {"predictions": [3.0]}}) + "\n")
    (work / "rules.yaml").write_text(RULES)
    rng = np.random.default_rng(14)
    np.savez(work / "reference.npz", x=rng.normal(size=(1000, 1)))
    return base


def stack_config(work: Path, dev: DevServer, port: int) -> Path:
    """m: a canary model (labels, probes on stable and canary, sequential input drift and
    output checks); w: window (batch) drift, so both drift methods export their statistic."""
    return daemon_config(
        work, port, dev, model_config_file="./models.config",
        models=[{"name": "m", "golden_requests": "golden.jsonl",
                 "probe": {"address": "labels", "labels": ["stable", "canary"],
                           "rate_per_second": 20, "timeout_seconds": 1},
                 "lifecycle": {"version_poll_seconds": 1, "router": "labels"},
                 "drift": {"engine": "scipy", "reference": "reference.npz", "window_rows": 50,
                           "interval_seconds": 0.5,
                           "outputs": {"rows_per_check": 50, "min_rows": 50,
                                       "reference_rows": 50}}},
                {"name": "w",
                 "drift": {"method": "window", "engine": "scipy", "reference": "reference.npz",
                           "window_rows": 100, "interval_seconds": 0.5,
                           "outputs": {"enabled": False}}}],
        capture={"client_rows_per_second": 100000},
        edge={"models": [{"name": EDGE_MODEL, "cohort_by": ["ml.delegate"]}]},
        policies={"ruleset": "rules.yaml"})


def otlp_metrics(model: str, count: int) -> dict[str, Any]:
    """An OTLP JSON ExportMetricsServiceRequest: one device's cumulative inference histogram
    of ``model`` version 1 after ``count`` inferences."""
    def attribute(key: str, value: str) -> dict[str, Any]:
        return {"key": key, "value": {"stringValue": value}}
    return {"resourceMetrics": [{
        "resource": {"attributes": [attribute("ml.model.name", model),
                                    attribute("ml.model.version", "1"),
                                    attribute("ml.delegate", "gpu"),
                                    attribute("device.id", "board-1")]},
        "scopeMetrics": [{"scope": {"name": "app"}, "metrics": [{
            "name": "ml.inference.duration", "unit": "ms", "histogram": {
                "aggregationTemporality": 2, "dataPoints": [{
                    "startTimeUnixNano": "1000", "timeUnixNano": str(2000 + count),
                    "count": str(count), "sum": 4.0 * count, "explicitBounds": [1, 5, 20],
                    "bucketCounts": ["0", str(count), "0", "0"]}]}}]}]}]}


def post_edge_telemetry(daemon: DaemonProcess) -> None:
    """What the edge panels show: accepted metrics requests, points of a model not in
    edge.models (rejected), a log record, and a request refused whole (415)."""
    for count in (2, 4, 6):
        answer = daemon.client.post("/v1/metrics", json=otlp_metrics(EDGE_MODEL, count))
        assert answer.status_code == 200 and answer.json() == {}, answer.text
    answer = daemon.client.post("/v1/metrics", json=otlp_metrics("not-configured", 2))
    assert answer.status_code == 200, answer.text
    assert answer.json()["partialSuccess"]["rejectedDataPoints"] in (1, "1"), answer.text
    answer = daemon.client.post("/v1/logs", json={"resourceLogs": [{
        "resource": {"attributes": [
            {"key": "ml.model.name", "value": {"stringValue": EDGE_MODEL}},
            {"key": "ml.model.version", "value": {"stringValue": "1"}}]},
        "scopeLogs": [{"logRecords": [{"severityNumber": 17, "body": {"stringValue": "crash"},
                                       "attributes": [{"key": "exception.type",
                                                       "value": {"stringValue": "SIGSEGV"}}]}]}]
    }]})
    assert answer.status_code == 200 and answer.json() == {}, answer.text
    answer = daemon.client.post("/v1/metrics", content=b"not otlp",
                                headers={"Content-Type": "text/plain"})
    assert answer.status_code == 415, answer.text
    stats = daemon.client.get(f"/api/v1/edge/{EDGE_MODEL}").json()
    assert stats["versions"]["1"]["ml.delegate=gpu"]["inferences"] == 6, stats


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("grafana")
    base = write_models(work)
    dev = DevServer(f"--model_config_file={work / 'models.config'}",
                    f"--monitoring_config_file={work / 'monitoring.config'}", workdir=work)
    port = free_port()
    prometheus = Prometheus(work, {
        "tfwarden": (f"127.0.0.1:{port}", "/metrics"),
        "tfserving": (f"127.0.0.1:{dev.rest_port}", "/monitoring/prometheus/metrics")})
    daemon: DaemonProcess | None = None
    try:
        prometheus.wait_ready()
        dev.wait_ready()
        daemon = DaemonProcess(stack_config(work, dev, port), port)
        daemon.wait_ready()
        wait_for(lambda: status(daemon).get("stable_version") == 1, 30, "adoption", daemon)
        # a slower canary: the latency detector alarms (and exports its median ratio); no
        # rule rolls it back
        new_version(base, 2, {"latency": {"fixed_ms": 40}})
        wait_for(lambda: status(daemon).get("canary_version") == 2, 30, "canary", daemon)
        # rows captured while the canary runs: sequential (m) and window (w) drift checks,
        # and m's output checks compare the canary's predictions with stable's
        rng = np.random.default_rng(7)
        for model in ("m", "w"):
            response = daemon.client.post(f"/api/v1/samples/{model}", json={
                "features": ["x"], "rows": rng.normal(size=(300, 1)).tolist()})
            assert response.status_code == 200, response.text
        post_edge_telemetry(daemon)
        wait_for(lambda: status(daemon).get("weight") == 10, 30, "canary at 10 %", daemon)
        yield {"daemon": daemon, "dev": dev, "prometheus": prometheus, "port": port}
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.close()
        prometheus.stop()
        dev.stop()


def series(results: dict[str, dict[str, Any]], where: str, *labels: str) -> set[tuple[str, ...]]:
    """The values of ``labels`` ("value": the sample's) of each series a query returned."""
    return {tuple(r["value"][1] if label == "value" else r["metric"].get(label, "")
                  for label in labels) for r in results[where]["data"]["result"]}


def resolve_variables(prometheus: Prometheus, dashboard: dict[str, Any]) -> dict[str, list[str]]:
    """Each query variable's values (All selected), each query seeing the ones before it."""
    values: dict[str, list[str]] = {}
    for name, query in variable_queries(dashboard):
        answer = prometheus.label_values(interpolate(query, values))
        assert answer["status"] == "success", (name, answer)
        values[name] = list(answer["data"])
    return values


@pytest.mark.integration
def test_every_query_returns_series_from_a_live_stack(stack: dict[str, Any]) -> None:
    prometheus: Prometheus = stack["prometheus"]
    dashboard = load()
    queries = panel_queries(dashboard)
    deadline = time.monotonic() + 45
    while True:
        variables = resolve_variables(prometheus, dashboard)
        results = {}
        if all(variables.values()):
            results = {where: prometheus.query(interpolate(expr, variables))
                       for where, expr in queries}
        empty = sorted(where for where, answer in results.items()
                       if answer["status"] != "success" or not answer["data"]["result"])
        if results and not empty:
            break
        if time.monotonic() > deadline:
            failed = {where: results[where] for where in empty}
            raise AssertionError(f"variables {variables}; no data for {len(empty)} of "
                                 f"{len(queries)} queries: {json.dumps(failed, indent=1)[:6000]}"
                                 f"\n{stack['daemon'].stderr()[-3000:]}")
        time.sleep(1)
    assert set(variables["model"]) == {"m", "w"}
    # what the series say is what the stack did
    assert series(results, "Model phase A", "model", "phase") == {("m", "canary_live"),
                                                                   ("w", "stable")}
    assert series(results, "Canary weight A", "model", "value") >= {("m", "10")}
    # probes on labels: the target label names it, the version label is empty
    assert series(results, "Probe latency p50 / p99 A", "version", "target") == {
        ("", "stable"), ("", "canary")}
    assert series(results, "Drift p-values (window method) A", "model") == {("w",)}
    assert series(results, "Drift log e-values (sequential method) A", "model") == {("m",)}
    assert ("m", "2") in series(results, "Canary disagreement A", "model", "version")
    assert ("latency", "regression") in series(results, "Current verdicts A", "detector",
                                               "verdict")
    assert ("m",) in series(results, "TF Serving request rate A", "model_name")
    assert series(results, "Edge ingest A", "signal", "outcome") >= {
        ("metrics", "accepted"), ("metrics", "rejected"), ("logs", "accepted")}
    assert series(results, "Edge requests refused A", "signal", "status") == {("metrics", "415")}
    assert variables["instance"] == [f"127.0.0.1:{stack['port']}"]
    for where, expr in queries:
        assert "$" not in interpolate(expr, variables), where
    panels = [p for p in all_panels(dashboard["panels"]) if p["type"] != "row"]
    print(f"{len(panels)} panels, {len(queries)} panel queries and {len(variables)} variable "
          f"queries: all returned data")
