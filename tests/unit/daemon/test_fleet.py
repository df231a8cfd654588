"""The fleet simulator without a daemon: its draws are a function of the seed (same seed, same
injected profile, whatever the order), profiles apply per (version, cohort), a device sends
one OTLP request per round with the SDK's exporter (protobuf, gzip, bearer token) and the
ledger counts what went through, crashes lose what was not exported, assignments switch
versions (downloads checked), and no module of the daemon imports the simulator."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
import zlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from tests.helpers import REPO
from tfwarden.core.errors import InvalidInput
from tfwarden.daemon.fleet import (
    MODEL_FILE,
    Assignment,
    DeviceSpec,
    Fleet,
    HttpAssignments,
    ModelStore,
    Profile,
    Profiles,
    fixed_assignment,
    plan_load,
    plan_round,
)

BASE = "http://fleet.test"
SLOW = "ml.delegate=gpu | device.model.identifier=pixel-8"


class FakeDaemon(requests.adapters.BaseAdapter):
    """Answers every request 200 (an empty Export*ServiceResponse) and keeps it; ``routes``
    maps a path to (status, body) for the other endpoints."""

    def __init__(self, routes: Mapping[str, tuple[int, bytes]] | None = None) -> None:
        super().__init__()
        self.sent: list[requests.PreparedRequest] = []
        self.routes = dict(routes or {})
        self.metrics_status = 200

    def send(self, request: requests.PreparedRequest, stream: bool = False,
             timeout: Any = None, verify: Any = True, cert: Any = None,
             proxies: Any = None) -> requests.Response:
        self.sent.append(request)
        path = (request.path_url or "").split("?")[0]
        status, body = self.routes.get(path, (200, b""))
        if path == "/v1/metrics":
            status = self.metrics_status
        response = requests.Response()
        response.status_code, response._content = status, body
        response.request, response.url = request, request.url or ""
        response.headers["Content-Type"] = "application/x-protobuf"
        return response

    def close(self) -> None:
        pass

    def bodies(self, path: str) -> list[bytes]:
        found = []
        for request in self.sent:
            if (request.path_url or "").split("?")[0] == path:
                body = request.body
                assert isinstance(body, bytes)
                found.append(gzip.decompress(body))
        return found


def version_of(device_id: str) -> int:
    return 1 + zlib.crc32(device_id.encode()) % 2


def profiles() -> Profiles:
    return Profiles(Profile(latency_ms=8, error_rate=0.01),
                    {(2, SLOW): Profile(latency_ms=8, multiplier=2.0, error_rate=0.2,
                                        crash_rate=0.3, error_types=("DelegateError", "OOM"))})


def fleet(seed: int = 3, per_cohort: int = 5, **kwargs: Any) -> tuple[Fleet, FakeDaemon]:
    kwargs.setdefault("assignment", fixed_assignment(version_of))
    made = Fleet(BASE, "digits", Fleet.grid(per_cohort), token="tok", seed=seed,
                 profile=profiles(), inferences=6, workers=2, **kwargs)
    fake = FakeDaemon()
    made.session.mount(BASE, fake)
    return made, fake


# -- draws -------------------------------------------------------------------------------------
def test_plans_are_a_function_of_seed_device_and_round() -> None:
    profile = Profile(latency_ms=5, error_rate=0.3, crash_rate=0.5)
    first = plan_round(7, "d-1", 0, profile, 20)
    assert first == plan_round(7, "d-1", 0, profile, 20)
    assert first != plan_round(8, "d-1", 0, profile, 20)
    assert first != plan_round(7, "d-2", 0, profile, 20)
    assert first != plan_round(7, "d-1", 1, profile, 20)
    assert plan_load(7, "d-1", 0, profile) == plan_load(7, "d-1", 0, profile)
    assert plan_load(7, "d-1", 0, profile) != plan_load(7, "d-1", 1, profile)


def test_injected_profile_medians_and_rates() -> None:
    base, slow = Profile(latency_ms=8, sigma=0.25), Profile(latency_ms=8, multiplier=2.0,
                                                            error_rate=0.1)
    fast = np.concatenate([plan_round(1, f"d{i}", 0, base, 50).injected_ms for i in range(200)])
    plans = [plan_round(1, f"d{i}", 0, slow, 50) for i in range(200)]
    slow_ms = np.concatenate([p.injected_ms for p in plans])
    assert 7.5 < np.median(fast) < 8.5 and 15 < np.median(slow_ms) < 17
    errors = sum(e is not None for p in plans for e in p.errors)
    assert 0.08 < errors / 10_000 < 0.12
    assert all(p.crash_at is None for p in plans)


def test_profiles_pick_the_most_specific_entry() -> None:
    a, b, c, d = (Profile(latency_ms=n) for n in (1, 2, 3, 4))
    table = Profiles(a, {(2, "x"): b, (2, None): c, (None, "y"): d})
    assert [table(2, "x"), table(2, "z"), table(1, "y"), table(1, "x")] == [b, c, d, a]
    with pytest.raises(InvalidInput):
        Profile(error_rate=1.5)


# -- a fleet against a fake transport ----------------------------------------------------------
def test_same_seed_same_injected_reports_and_ledger() -> None:
    runs = []
    for _ in range(2):
        made, fake = fleet(seed=11)
        with made:
            for _ in range(3):
                made.report_round()
            injected = [(p.crash_at, p.errors, p.injected_ms) for p in
                        (plan_round(11, d.spec.device_id, 0, d.profile(), 6) for d in made.devices)]
            runs.append((made.tallies(), injected))
    assert runs[0] == runs[1]
    other, _ = fleet(seed=12)
    with other:
        for _ in range(3):
            other.report_round()
        assert other.tallies() != runs[0][0]


def test_one_gzipped_protobuf_request_per_device_and_round() -> None:
    made, fake = fleet(per_cohort=3)
    with made:
        report = made.report_round()
        assert (report.devices, report.exports_failed, made.wrong_outputs) == (12, 0, 0)
        assert report.switched == 12
        bodies = fake.bodies("/v1/metrics")
        assert len(bodies) == 12
        request = next(r for r in fake.sent if r.path_url == "/v1/metrics")
        assert request.headers["Authorization"] == "Bearer tok"
        assert request.headers["Content-Encoding"] == "gzip"
        assert request.headers["Content-Type"] == "application/x-protobuf"
        inferences = 0
        for body in bodies:
            (resource,) = ExportMetricsServiceRequest.FromString(body).resource_metrics
            attributes = {kv.key: kv.value.string_value for kv in resource.resource.attributes}
            assert attributes["ml.model.name"] == "digits"
            assert attributes["ml.model.version"] == str(version_of(attributes["device.id"]))
            assert attributes["ml.runtime.name"] == "litert" and attributes["ml.runtime.version"]
            metrics = {m.name: m for s in resource.scope_metrics for m in s.metrics}
            assert set(metrics) >= {"ml.inference.duration", "ml.model.load.duration",
                                    "process.memory.usage"}
            assert metrics["ml.inference.duration"].unit == "ms"
            for point in metrics["ml.inference.duration"].histogram.data_points:
                if not any(kv.key == "error.type" for kv in point.attributes):
                    inferences += point.count
        assert inferences == report.inferences
        made.report_round()
        assert len(fake.bodies("/v1/metrics")) == 24  # one more per device, nothing else


def test_ledger_counts_crashes_errors_and_what_was_lost() -> None:
    made, fake = fleet(per_cohort=10)
    with made:
        reports = [made.report_round() for _ in range(4)]
        tallies = made.tallies()
        slow = tallies["2"][SLOW]
        assert slow["crashes"] > 0 and slow["failed_inferences"] > 0
        assert set(slow["exceptions"]) <= {"DelegateError", "OOM", "SIGSEGV"}
        assert slow["exceptions"]["SIGSEGV"] == slow["crashes"]
        assert slow["loads"] == slow["devices"] + slow["crashes"]  # a restart loads again
        ran = sum(r.inferences for r in reports)
        counted = sum(c["inferences"] for v in tallies.values() for c in v.values())
        assert counted < ran  # a crash loses what the device had not exported
        logs = [ExportLogsServiceRequest.FromString(b) for b in fake.bodies("/v1/logs")]
        records = [r for b in logs for rl in b.resource_logs for s in rl.scope_logs
                   for r in s.log_records]
        error_logs = sum(c["error_logs"] for v in tallies.values() for c in v.values())
        assert len(records) == error_logs
        assert all(any(kv.key == "exception.type" for kv in r.attributes) for r in records)


def test_failed_exports_are_not_counted_until_one_goes_through() -> None:
    made, fake = fleet(per_cohort=1)
    with made:
        fake.metrics_status = 400  # not retried
        report = made.report_round()
        assert report.exports_failed == 4 and made.tallies() == {}
        fake.metrics_status = 200
        second = made.report_round()
        assert second.exports_failed == 0
        total = sum(c["inferences"] + c["failed_inferences"]
                    for v in made.tallies().values() for c in v.values())
        assert total == 4 * 12  # cumulative: the second export carries both rounds


def test_a_new_assignment_switches_version_and_provider() -> None:
    versions = {"n": 1}
    made, fake = fleet(per_cohort=2, assignment=fixed_assignment(lambda _: versions["n"]))
    with made:
        made.report_round()
        providers = [d.meters for d in made.devices]
        versions["n"] = 2
        assert made.assign(force=True) == (8, 0)
        assert all(d.version == 2 and d.meters is not p
                   for d, p in zip(made.devices, providers, strict=True))
        made.report_round(assign=False)
        assert set(made.tallies()) == {"1", "2"}
        assert all(c["devices"] == 2 for v in made.tallies().values() for c in v.values())


# -- assignments and downloads -----------------------------------------------------------------
def test_http_assignments_ask_with_the_device_attributes_and_download_checked() -> None:
    data = MODEL_FILE.read_bytes()
    answer = {"model": "digits", "version": 4, "file": "model.tflite",
              "url": "/api/v1/edge/digits/versions/4/model.tflite",
              "sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data),
              "ttl_seconds": 3600, "cohort": "c", "reason": "r", "rollout": "idle"}
    fake = FakeDaemon({"/api/v1/edge/digits/assignment": (200, json.dumps(answer).encode()),
                       "/api/v1/edge/digits/versions/4/model.tflite": (200, data)})
    session = requests.Session()
    session.mount(BASE, fake)
    ask = HttpAssignments(BASE, "digits", "tok", session)
    got = ask(DeviceSpec("raw id/1", "gpu", "pixel-8"))
    assert (got.version, got.ttl_seconds, got.cohort) == (4, 3600.0, "c")
    (sent,) = fake.sent
    assert sent.headers["Authorization"] == "Bearer tok"
    query = urlsplit(sent.url or "").query
    assert "device_id=raw+id%2F1" in query and "ml.delegate=gpu" in query
    assert "device.model.identifier=pixel-8" in query
    store = ModelStore(BASE, "tok", session)
    model = store.model(got)
    assert model.half_plus_two and model.invoke(4.0)[0] == pytest.approx(4.0)
    assert store.model(got) is model and store.downloads == 1
    with pytest.raises(InvalidInput, match="sha256"):
        store.model(Assignment(5, got.url, "0" * 64, len(data)))
    with pytest.raises(InvalidInput, match="bytes"):
        store.model(Assignment(5, got.url, got.sha256, len(data) + 1))
    with pytest.raises(InvalidInput, match="not under"):
        store.model(Assignment(6, "http://elsewhere.example/m.tflite", "1" * 64, 1))
    store.close()


def test_assignment_answers_must_fit_the_contract() -> None:
    with pytest.raises(InvalidInput):
        Assignment.from_answer({"version": "4", "url": "/x", "sha256": "a", "size_bytes": 1,
                                "ttl_seconds": 1})
    with pytest.raises(InvalidInput):
        Assignment.from_answer([1])


def test_a_failed_assignment_sits_the_round_out() -> None:
    def refuse(spec: DeviceSpec) -> Assignment:
        if spec.delegate == "gpu":
            raise InvalidInput("HTTP 409")
        return Assignment(1, path=MODEL_FILE)

    made, fake = fleet(per_cohort=2, assignment=refuse)
    with made:
        report = made.report_round()
        assert (report.devices, report.assign_failed) == (4, 4) and len(made.errors) == 4


# -- the daemon never imports it ---------------------------------------------------------------
def test_the_daemon_modules_do_not_load_the_fleet() -> None:
    """The demo, the benchmark and the tests import it; what ``tfwarden run`` loads does not."""
    code = ("import sys, tfwarden.daemon.cli, tfwarden.daemon.app, tfwarden.daemon.http; "
            "print('tfwarden.daemon.fleet' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
