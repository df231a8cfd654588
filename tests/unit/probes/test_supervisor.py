"""The probe supervisor on fakes: the status job feeds the version sink (with the config file's
labels), predict loops follow the AVAILABLE versions or probe labels, failures are data,
a bad reload keeps the old probes, and stop ends everything."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.fakes import FakeClock, FakePoster, FakeServingClient, RecordingScheduler
from tfwarden.core.errors import ConfigError
from tfwarden.core.series import SeriesWindows
from tfwarden.core.types import Sample, VersionState
from tfwarden.daemon.recorder import Recorder
from tfwarden.probes.settings import PredictProbeSettings
from tfwarden.probes.supervisor import Endpoint, ProbedModel, ProbeSettings, ProbeSupervisor, _phase
from tfwarden.serving.tfserving.settings import EndpointSettings

STATUS_JOB = "status:tfs"
MODEL_CONFIG = """model_config_list {
  config {
    name: "m"
    base_path: "/models/m"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 1 versions: 2 } }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 2 }
  }
}
"""
GOLDEN = {"request": {"instances": [2.0]}, "expected": {"predictions": [3.0]}}



class PredictServer:
    """TF Serving's REST predict endpoint: counts requests per path; ``failing`` paths answer
    503."""

    def __init__(self, failing: Sequence[str] = ()) -> None:
        self.requests: dict[str, int] = {}
        self.failing = set(failing)

    def __call__(self, url: str, body: Any) -> tuple[int, Any]:
        path = urlsplit(url).path.removeprefix("/v1/models/m/").removesuffix(":predict")
        self.requests[path] = self.requests.get(path, 0) + 1
        if path in self.failing:
            return 503, {"error": "servable not ready"}
        assert body == GOLDEN["request"]
        return 200, {"predictions": [3.0]}


class Samples:
    def __init__(self) -> None:
        self.seen: list[Sample] = []

    def observe(self, sample: Sample) -> None:
        self.seen.append(sample)

    def predict(self, **where: Any) -> list[Sample]:
        return [s for s in self.seen if s.source == "predict"
                and all(getattr(s, k) == v for k, v in where.items())]


class VersionsSeen:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[VersionState], dict[str, int] | None]] = []

    def versions_seen(self, model: str, versions: Sequence[VersionState],
                      labels: Mapping[str, int] | None) -> None:
        self.calls.append((model, list(versions), None if labels is None else dict(labels)))


class Harness:
    """A supervisor for model ``m`` on endpoint ``tfs`` (status over the fake gRPC client,
    predict over a mock REST transport)."""

    def __init__(self, tmp_path: Path, probe: PredictProbeSettings | None, *,
                 versions: Mapping[int, str] | None = None, failing: Sequence[str] = (),
                 config_file: bool = False) -> None:
        self.tmp_path = tmp_path
        model_config = tmp_path / "models.config" if config_file else None
        if model_config is not None:
            model_config.write_text(MODEL_CONFIG)
        self.endpoint_settings = EndpointSettings(
            kind="tfserving", rest_url="http://tfs:8501", grpc_address="tfs:8500",
            model_config_file=model_config, status_interval_seconds=5.0)
        self.status = FakeServingClient(dict(versions) if versions is not None
                                        else {1: "AVAILABLE"})
        self.predict = PredictServer(failing)
        golden = tmp_path / "golden.jsonl"
        golden.write_text(json.dumps(GOLDEN) + "\n")
        self.model = ProbedModel("m", "tfs", probe, golden if probe is not None else None)
        self.jobs, self.windows = RecordingScheduler(), SeriesWindows()
        self.samples, self.seen, self.clock = Samples(), VersionsSeen(), FakeClock()
        self.metrics = Recorder()
        self.http = httpx.AsyncClient()  # scrapes and PromQL: none configured here
        self.supervisor = ProbeSupervisor(
            self.settings(self.model), self.jobs, self.http, self.windows, self.samples,
            self.seen, self.metrics, self.clock, predict_http=FakePoster(self.predict))

    def settings(self, model: ProbedModel) -> ProbeSettings:
        endpoint = Endpoint(self.endpoint_settings, self.status)
        return ProbeSettings({"tfs": endpoint}, [model])

    def metric(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)

    def loops(self) -> dict[Any, asyncio.Task[None]]:
        return self.supervisor._loops

    async def until(self, condition: Callable[[], bool], timeout: float = 3.0) -> None:
        """Let the predict loops run until ``condition`` holds (bounded)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            assert loop.time() < deadline, "condition not reached in time"
            await asyncio.sleep(0.005)


def fast(**overrides: Any) -> PredictProbeSettings:
    return PredictProbeSettings(**{"rate_per_second": 200.0, "timeout_seconds": 1.0, **overrides})


def run(h: Harness, scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def go() -> None:
        try:
            await scenario()
        finally:
            await h.supervisor.stop()
            await h.http.aclose()

    asyncio.run(go())


def test_the_status_job_reports_versions_and_the_config_files_labels(tmp_path: Path) -> None:
    h = Harness(tmp_path, None, versions={1: "AVAILABLE", 2: "LOADING"}, config_file=True)

    async def scenario() -> None:
        h.supervisor.start()
        job = h.jobs.jobs[STATUS_JOB]
        assert (job.interval_seconds, job.run_now) == (5.0, True)
        await h.jobs.run(STATUS_JOB)

    run(h, scenario)
    assert h.status.calls == [("model_status", "m")]
    assert h.seen.calls == [("m", [VersionState(1, "AVAILABLE"), VersionState(2, "LOADING")],
                             {"stable": 1, "canary": 2})]
    assert h.supervisor.versions["m"]["labels"] == {"stable": 1, "canary": 2}
    assert h.metric("tfwarden_model_version_state", serving="tfs", model="m", version="1") == 30
    assert h.metric("tfwarden_model_version_state", serving="tfs", model="m", version="2") == 20
    assert h.metric("tfwarden_probe_runs_total", probe=STATUS_JOB, outcome="success") == 1
    states = h.windows.window("m", 2, "state")
    assert [(s.source, s.value) for s in states] == [("status", 20)]
    assert [s.version for s in h.samples.seen] == [1, 2]
    assert not h.loops()  # no predict probe configured: status only


def test_without_a_model_config_file_the_labels_are_unknown(tmp_path: Path) -> None:
    h = Harness(tmp_path, None, versions={3: "AVAILABLE"})

    async def scenario() -> None:
        h.supervisor.start()
        await h.jobs.run(STATUS_JOB)

    run(h, scenario)
    assert h.seen.calls == [("m", [VersionState(3, "AVAILABLE")], None)]


def test_each_available_version_gets_a_predict_loop_until_it_leaves(tmp_path: Path) -> None:
    h = Harness(tmp_path, fast(address="versions"),
                versions={1: "AVAILABLE", 2: "AVAILABLE", 3: "LOADING"}, failing=["versions/2"])

    async def scenario() -> None:
        h.supervisor.start()
        assert not h.loops()  # versions are only known once the status job ran
        await h.jobs.run(STATUS_JOB)
        assert sorted(h.loops()) == [("m", 1, ""), ("m", 2, "")]
        await h.until(lambda: len(h.windows.window("m", 1, "latency_ms")) >= 3
                      and len(h.windows.window("m", 2, "latency_ms")) >= 3)

        h.status.versions[2] = "UNLOADING"
        await h.jobs.run(STATUS_JOB)
        assert sorted(h.loops()) == [("m", 1, "")]
        await asyncio.sleep(0.02)  # the cancelled loop and its in-flight requests end
        sent_to_2 = h.predict.requests["versions/2"]
        sent_to_1 = h.predict.requests["versions/1"]
        await h.until(lambda: h.predict.requests["versions/1"] >= sent_to_1 + 5)
        assert h.predict.requests["versions/2"] == sent_to_2
        assert "versions/3" not in h.predict.requests

    run(h, scenario)
    good, bad = h.samples.predict(version=1), h.samples.predict(version=2)
    assert good and all(s.ok and s.labels["outcome"] == "ok" for s in good)
    assert bad and all(not s.ok and s.labels == {"outcome": "error", "status": "503"} for s in bad)
    assert len(h.samples.predict()) == len(good) + len(bad)
    assert len(h.windows.window("m", 1, "latency_ms")) == len(good)
    assert h.metric("tfwarden_probe_requests_total", model="m", version="2", target="",
                    outcome="error") == len(bad)


def test_debug_summarises_each_target_and_keeps_recent_results(tmp_path: Path) -> None:
    h = Harness(tmp_path, fast(address="versions"), versions={1: "AVAILABLE"})

    async def scenario() -> None:
        h.supervisor.start()
        await h.jobs.run(STATUS_JOB)
        await h.until(lambda: len(h.windows.window("m", 1, "latency_ms")) >= 5)
        debug = h.supervisor.debug()
        [target] = debug["predict"]
        assert (target["target"], target["version"], target["label"]) == ("m/v1", 1, None)
        assert target["samples"] >= 5 and target["outcomes"].keys() == {"ok"}
        assert target["p50_ms"] is not None and target["p50_ms"] <= target["p99_ms"]
        assert [r["ok"] for r in debug["recent"][STATUS_JOB]] == [True]
        assert debug["failures"] == {}

    run(h, scenario)


def test_label_targets_take_their_version_from_the_last_status(tmp_path: Path) -> None:
    h = Harness(tmp_path, fast(address="labels"), versions={1: "AVAILABLE", 2: "AVAILABLE"},
                config_file=True)

    def by_label(label: str) -> list[Sample]:
        return h.samples.predict(target=label)

    async def scenario() -> None:
        h.supervisor.start()  # label loops start at once, before any status
        assert sorted(h.loops()) == [("m", None, "canary"), ("m", None, "stable")]
        await h.until(lambda: len(by_label("stable")) >= 2 and len(by_label("canary")) >= 2)
        assert {s.version for s in h.samples.predict()} == {None}
        await h.jobs.run(STATUS_JOB)  # its calls run concurrently: probes may send meanwhile
        before = len(h.samples.predict())
        assert sorted(h.loops()) == [("m", None, "canary"), ("m", None, "stable")]  # no new loops
        await h.until(lambda: len(h.samples.predict(target="stable", version=1)) >= 3
                      and len(h.samples.predict(target="canary", version=2)) >= 3)
        # every sample answered after the status has its label's version
        later = h.samples.predict()[before:]
        assert {(s.target, s.version) for s in later} == {("stable", 1), ("canary", 2)}

    run(h, scenario)
    assert set(h.predict.requests) == {"labels/stable", "labels/canary"}
    assert h.windows.window("m", 1, "latency_ms", "stable")
    assert h.windows.window("m", 2, "latency_ms", "canary")
    assert not h.windows.window("m", 1, "latency_ms", "canary")
    assert h.metric("tfwarden_probe_requests_total", model="m", version="", target="canary",
                    outcome="ok") == len(by_label("canary"))


def test_a_failing_status_call_is_a_failed_result_and_reports_no_versions(tmp_path: Path) -> None:
    h = Harness(tmp_path, fast(address="versions"), versions={1: "AVAILABLE"}, config_file=True)
    h.status.error = "UNAVAILABLE: connection refused"

    async def scenario() -> None:
        h.supervisor.start()
        await h.jobs.run(STATUS_JOB)

    run(h, scenario)
    assert h.seen.calls == [] and h.supervisor.versions == {}
    assert not h.loops() and not h.predict.requests
    debug = h.supervisor.debug()
    [failure] = debug["failures"][STATUS_JOB]
    assert failure["ok"] is False
    assert failure["error"] == "m: UNAVAILABLE: connection refused"
    assert failure["detail"] == {"models": {"m": {"error": "UNAVAILABLE: connection refused"}}}
    assert debug["recent"][STATUS_JOB] == [failure]
    assert h.metric("tfwarden_probe_runs_total", probe=STATUS_JOB, outcome="failure") == 1
    assert h.metric("tfwarden_probe_runs_total", probe=STATUS_JOB, outcome="success") is None


def test_a_reload_with_a_missing_golden_file_keeps_the_old_probes(tmp_path: Path) -> None:
    h = Harness(tmp_path, fast(address="versions"), versions={1: "AVAILABLE"})

    async def scenario() -> None:
        h.supervisor.start()
        await h.jobs.run(STATUS_JOB)
        [task] = h.loops().values()
        missing = tmp_path / "missing.jsonl"
        broken = ProbedModel("m", "tfs", fast(address="labels"), missing)
        with pytest.raises(ConfigError) as info:
            await h.supervisor.reconfigure(h.settings(broken))
        assert str(missing) in str(info.value) and "cannot read" in str(info.value)
        assert h.supervisor.settings.models == [h.model]
        assert list(h.loops().values()) == [task] and not task.done()
        assert list(h.jobs.jobs) == [STATUS_JOB] and h.jobs.removed == []
        sent = h.predict.requests.get("versions/1", 0)
        await h.until(lambda: h.predict.requests.get("versions/1", 0) >= sent + 3)

    run(h, scenario)


def test_a_good_reload_replaces_the_probes(tmp_path: Path) -> None:
    h = Harness(tmp_path, fast(address="versions"), versions={1: "AVAILABLE"}, config_file=True)

    async def scenario() -> None:
        h.supervisor.start()
        await h.jobs.run(STATUS_JOB)
        [old] = h.loops().values()
        assert h.model.golden_requests is not None
        labelled = ProbedModel("m", "tfs", fast(address="labels", labels=["stable"]),
                               h.model.golden_requests)
        await h.supervisor.reconfigure(h.settings(labelled))
        assert old.cancelled()
        assert sorted(h.loops()) == [("m", None, "stable")]
        assert h.jobs.removed == [STATUS_JOB] and list(h.jobs.jobs) == [STATUS_JOB]
        await h.until(lambda: h.predict.requests.get("labels/stable", 0) >= 2)

    run(h, scenario)


def test_stop_cancels_the_loops_and_removes_the_jobs(tmp_path: Path) -> None:
    h = Harness(tmp_path, fast(address="versions"), versions={1: "AVAILABLE", 2: "AVAILABLE"})

    async def scenario() -> None:
        h.supervisor.start()
        await h.jobs.run(STATUS_JOB)
        tasks = list(h.loops().values())
        await h.until(lambda: len(h.predict.requests) == 2)
        await h.supervisor.stop()
        assert len(tasks) == 2 and all(t.cancelled() for t in tasks)
        assert h.jobs.jobs == {} and h.jobs.removed == [STATUS_JOB]
        assert h.loops() == {} and h.supervisor.debug()["predict"] == []
        sent = dict(h.predict.requests)
        await asyncio.sleep(0.05)  # 10 send slots at 200/s
        assert h.predict.requests == sent

    run(h, scenario)


def test_models_send_at_phases_spread_over_the_interval() -> None:
    phases = [_phase(f"m{i:04d}") for i in range(1000)]
    assert all(0 <= p < 1 for p in phases)
    tenths = [0] * 10
    for p in phases:
        tenths[int(p * 10)] += 1
    assert max(tenths) < 150  # 100 each if even; all at one instant would be 1,000 in one
    assert _phase("m0001") == _phase("m0001")  # the same after a restart
