"""The drift checks on fakes, with the real scipy engine in process: the reference collected from
stable's first rows and saved, input windows and their verdicts, canary outputs and
disagreement, a crashed worker (inconclusive, rows kept within bounds, checked when it is back),
reconfiguration, the calibration inputs they offer, and each version's estimated accuracy
(performance findings, their refusals and a rule acting on them)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from tests.fakes import FakeClock, FakeServingClient, MemoryStateStore
from tfwarden.core.errors import WorkerDown, WorkerFailed
from tfwarden.core.ports import Row
from tfwarden.core.series import SeriesWindows
from tfwarden.core.status import ModelStatus, Phase
from tfwarden.core.types import Finding
from tfwarden.daemon.recorder import Recorder
from tfwarden.daemon.state import EventJournal
from tfwarden.detectors.drift.checks import MAX_PENDING_WINDOWS, DriftChecks, DriftedModel
from tfwarden.detectors.drift.settings import DriftSettings, OutputDriftSettings
from tfwarden.detectors.drift.worker import Worker
from tfwarden.detectors.performance_settings import PerformanceSettings
from tfwarden.detectors.roster import DetectionSettings, ModelObjectives, Roster
from tfwarden.policies.engine import PolicyMemory, evaluate, remember
from tfwarden.policies.rules import load_ruleset

INTERVAL = 10.0
WINDOW = 50
CRASH = "drift worker exited with code -9 (SIGKILL)"


class InProcessDriftWorker:
    """``DriftWorkerClient`` with the worker's request handler called in process (requests and
    answers go through JSON, as over the pipe). ``crash`` makes every call raise WorkerDown until
    ``restart``, which starts a fresh worker (it has forgotten every model) of a new
    generation."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.worker = Worker(state_dir)
        self.generation, self.restarts = 1, 0
        self.down: WorkerDown | None = None
        self.requests: list[str] = []

    @property
    def up(self) -> bool:
        return self.down is None

    def crash(self, message: str = CRASH) -> None:
        self.down = WorkerDown(message, cause="exit", exit_code=-9)
        self.restarts += 1

    def restart(self) -> None:
        self.down, self.worker = None, Worker(self.state_dir)
        self.generation += 1

    def status(self) -> dict[str, Any]:
        return {"up": self.up, "generation": self.generation, "restarts": self.restarts,
                "last_error": None if self.down is None else str(self.down)}

    async def _request(self, op: str, payload: dict[str, Any]) -> dict[str, Any]:
        if self.down is not None:
            raise self.down
        self.requests.append(op)
        answer = self.worker.handle(json.loads(json.dumps({"op": op, **payload})))
        if "error" in answer:
            raise WorkerFailed(answer["error"])
        decoded: dict[str, Any] = json.loads(json.dumps(answer))
        return decoded

    async def configure(self, payload: dict[str, Any]) -> dict[str, Any]:
        return await self._request("configure", payload)

    async def check(self, model: str, part: str, rows: Sequence[Row]) -> dict[str, Any]:
        return await self._request("check", {"model": model, "part": part, "rows": list(rows)})

    async def observe(self, model: str, rows: Sequence[Row]) -> dict[str, Any]:
        return await self._request("observe", {"model": model, "rows": list(rows)})

    async def sequential(self, model: str, rows: Sequence[Row],
                         versions: Sequence[int | None]) -> dict[str, Any]:
        return await self._request("sequential", {"model": model, "rows": list(rows),
                                                  "versions": list(versions)})

    async def sample(self, model: str, n: int) -> dict[str, Any]:
        return await self._request("sample", {"model": model, "n": n})

    async def performance(self, model: str, version: int, features: Sequence[str],
                          rows: Sequence[Row], confidence: float) -> dict[str, Any]:
        return await self._request("performance", {
            "model": model, "version": version, "features": list(features), "rows": list(rows),
            "confidence": confidence})

    async def stats(self) -> dict[str, Any]:
        return await self._request("stats", {})


class Captured:
    """Captured rows waiting for the drift checks, with the version each was captured for."""

    def __init__(self) -> None:
        self.queued: dict[str, list[tuple[int | None, Row]]] = {}

    def feed(self, version: int | None, rows: Sequence[Row], model: str = "m") -> None:
        self.queued.setdefault(model, []).extend((version, row) for row in rows)

    def take_new(self, model: str) -> list[tuple[int | None, Row]]:
        return self.queued.pop(model, [])

    def kept_rows(self, model: str, version: int) -> tuple[list[str], list[Row]]:
        return ["x"], []


class Roles:
    def __init__(self, stable: int | None = 1, canary: int | None = None) -> None:
        self.pair = (stable, canary)

    def roles(self, model: str) -> tuple[int | None, int | None]:
        return self.pair



def stable_fn(x: float) -> float:
    return x / 2 + 2


def bad_canary_fn(x: float) -> float:
    return x / 2 + 5


def settings(**overrides: Any) -> DriftSettings:
    values: dict[str, Any] = {
        "method": "window", "engine": "scipy", "reference_rows": 100, "window_rows": WINDOW, "consecutive": 2,
        "interval_seconds": INTERVAL,
        "outputs": OutputDriftSettings(enabled=False)}
    return DriftSettings(**{**values, **overrides})


def outputs(**overrides: Any) -> OutputDriftSettings:
    return OutputDriftSettings(**{"reference_rows": 50, "rows_per_check": WINDOW,
                                  "min_rows": WINDOW, **overrides})


def normal(seed: int, n: int, shift: float = 0.0) -> list[Row]:
    return [[float(v)] for v in np.random.default_rng(seed).normal(shift, 1.0, size=n)]


class Harness:
    """Drift checks of model ``m`` on a fresh state directory (or ``state_dir``)."""

    def __init__(self, tmp_path: Path, drift: DriftSettings, *, roles: Roles | None = None,
                 functions: dict[int, Callable[[float], float]] | None = None,
                 state_dir: Path | None = None) -> None:
        self.state_dir = state_dir or tmp_path / "state"
        self.clock, self.metrics = FakeClock(), Recorder()
        self.roster = Roster(DetectionSettings(), {"m": ModelObjectives()}, {}, SeriesWindows(),
                             self.clock, EventJournal(MemoryStateStore(), self.clock, Recorder()),
                             self.metrics)
        self.worker = InProcessDriftWorker(self.state_dir)
        self.captured, self.roles = Captured(), roles or Roles()
        self.serving = FakeServingClient(functions=functions or {1: stable_fn})
        self.checks = DriftChecks(
            {"m": self.model(drift)}, self.state_dir, self.worker,  # type: ignore[arg-type]
            self.captured, self.roles, self.roster, self.metrics, self.clock)

    def model(self, drift: DriftSettings, client: FakeServingClient | None = None) -> DriftedModel:
        return DriftedModel("m", drift, client or self.serving)

    def tick(self) -> None:
        asyncio.run(self.checks.tick())
        self.clock.advance(INTERVAL)

    def finding(self, part: str = "inputs") -> Finding:
        return self.roster.latest[("drift", "m", part)]

    def drift_findings(self) -> dict[Any, Finding]:
        return {key[2]: f for key, f in self.roster.latest.items() if key[0] == "drift"}

    def performance(self, role: str) -> Finding:
        return self.roster.latest[("performance", "m", f"accuracy:{role}")]

    def metric(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)

    def collect_reference(self, seed: int = 0) -> list[Row]:
        rows = normal(seed, 100)
        self.captured.feed(1, rows)
        self.tick()
        assert not self.checks.states["m"].windows.collecting
        return rows


def test_the_first_stable_rows_become_the_reference_saved_for_a_restart(tmp_path: Path) -> None:
    h = Harness(tmp_path, settings())
    stable, unversioned, other = normal(1, 60), normal(2, 10), normal(3, 30, shift=5.0)
    h.captured.feed(1, stable[:30])
    h.captured.feed(2, other)  # a canary's rows are not the reference
    h.captured.feed(None, unversioned)
    h.captured.feed(1, stable[30:])
    h.tick()
    finding = h.finding()
    assert finding.verdict == "inconclusive"
    assert finding.reason == "collecting the reference: 70 of 100 rows"
    assert "configure" not in h.worker.requests  # nothing to configure yet
    saved = h.state_dir / "drift" / "m.reference.json"
    assert not saved.exists()

    more = normal(4, 50)
    h.captured.feed(1, more)  # 30 complete the reference, 20 wait for the first window
    h.tick()
    assert json.loads(saved.read_text()) == {"features": ["x"],
                                             "rows": stable[:30] + unversioned + stable[30:] +
                                             more[:30]}
    finding = h.finding()
    assert (finding.verdict, finding.reason) == ("inconclusive", "20 of 50 rows for the first check")
    first = h.checks.report("m")
    assert first is not None and first["reference"]["rows"] == 100
    assert first["reference"]["source"] == str(saved) and first["pending_rows"] == 20

    again = Harness(tmp_path, settings(), state_dir=h.state_dir)  # a restart: same state dir
    assert not again.checks.states["m"].windows.collecting
    again.captured.feed(1, normal(5, WINDOW))
    again.tick()
    assert again.finding().verdict == "ok"
    second = again.checks.report("m")
    assert second is not None and second["reference"]["hash"] == first["reference"]["hash"]


def test_clean_windows_are_ok_and_drift_needs_consecutive_windows(tmp_path: Path) -> None:
    h = Harness(tmp_path, settings())
    h.collect_reference()
    h.captured.feed(1, normal(10, WINDOW))
    h.tick()
    assert h.finding().verdict == "ok"
    assert h.finding().reason == f"no drift in the last {WINDOW} rows"

    h.captured.feed(1, normal(11, WINDOW, shift=1.5))
    h.tick()
    first = h.finding()
    assert first.verdict == "ok" and first.reason == "drift in x in 1 of 2 windows needed"
    assert h.metric("tfwarden_drift_detected", model="m") == 0

    h.captured.feed(None, normal(12, WINDOW, shift=1.5))
    h.tick()
    second = h.finding()
    assert second.verdict == "regression" and second.effect["drifted_features"] == ["x"]
    assert second.evidence["consecutive"] == 2 and second.evidence["windows"] == 3
    assert h.metric("tfwarden_drift_detected", model="m") == 1
    assert h.metric("tfwarden_drift_checks_total", model="m", result="drift") == 2

    h.captured.feed(1, normal(13, WINDOW))  # one clean window clears it
    h.tick()
    assert h.finding().verdict == "ok" and h.finding().evidence["consecutive"] == 0
    kinds = [e.payload["verdict"] for e in h.roster.journal.store.entries()  # type: ignore[union-attr]
             if e.payload.get("target") == "inputs"]
    assert kinds == ["inconclusive", "ok", "regression", "ok"]


def test_sequential_drift_is_found_within_a_tick_and_names_the_rows_version(
        tmp_path: Path) -> None:
    h = Harness(tmp_path, settings(method="sequential"))
    h.collect_reference()
    h.captured.feed(1, normal(20, 300))
    h.tick()
    clean = h.finding()
    assert clean.verdict == "ok" and clean.reason == "no drift in 300 rows"
    assert clean.evidence["statistic"] == "log_e_value"
    assert clean.evidence["value"] < clean.evidence["threshold"]
    threshold = h.metric("tfwarden_drift_log_e_threshold", model="m")
    assert threshold == clean.evidence["threshold"]
    assert h.metric("tfwarden_finding_threshold", detector="drift", model="m", version="",
                    target="inputs", statistic="log_e_value") == threshold

    h.captured.feed(2, normal(21, 200, shift=2.0))  # the canary's rows drift
    h.tick()
    drifted = h.finding()
    assert drifted.verdict == "regression" and drifted.version == 2
    assert drifted.effect["drifted_features"] == ["x"] and drifted.effect["wasserstein_sd"] > 1
    assert h.metric("tfwarden_drift_detected", model="m") == 1
    assert h.metric("tfwarden_drift_log_e_value", model="m", feature="x") >= threshold
    assert h.metric("tfwarden_finding_samples", detector="drift", model="m", version="2",
                    target="inputs") == 500
    assert "check" not in h.worker.requests  # no window checks: every row was tested
    report = h.checks.report("m")
    assert report is not None and report["method"] == "sequential"


def test_ticks_wait_for_the_interval(tmp_path: Path) -> None:
    h = Harness(tmp_path, settings())
    h.collect_reference()
    h.captured.feed(1, normal(10, WINDOW))
    h.clock.advance(-INTERVAL / 2)  # only half an interval since the last check
    asyncio.run(h.checks.tick())
    assert h.checks.states["m"].windows.windows == 0 and h.captured.queued["m"]
    h.clock.advance(INTERVAL / 2)
    asyncio.run(h.checks.tick())
    assert h.checks.states["m"].windows.windows == 1


def test_a_canary_whose_outputs_differ_regresses(tmp_path: Path) -> None:
    h = Harness(tmp_path, settings(outputs=outputs()), roles=Roles(1, 2),
                functions={1: stable_fn, 2: bad_canary_fn})
    h.collect_reference()
    h.captured.feed(2, normal(20, WINDOW))
    h.tick()
    found = h.drift_findings()
    assert found["inputs"].verdict == "ok"
    assert (found["outputs:stable"].verdict, found["outputs:stable"].version) == ("ok", 1)
    assert (found["outputs:canary"].verdict, found["outputs:canary"].version) == ("regression", 2)
    assert found["outputs:canary"].effect["drifted_features"] == ["output"]
    disagreement = found["disagreement"]
    assert (disagreement.verdict, disagreement.version) == ("regression", 2)
    assert {k: disagreement.evidence[k] for k in ("samples", "disagreeing", "stable_version")} \
        == {"samples": WINDOW, "disagreeing": WINDOW, "stable_version": 1}
    assert disagreement.evidence["statistic"] == "disagreement_ci_low"
    assert h.metric("tfwarden_drift_disagreement_ratio", model="m", version="2") == 1.0
    # the output reference: stable's predictions on 50 reference rows, then each version's window
    assert [c[2:] for c in h.serving.calls if c[0] == "predict_rows"] == \
        [(1, 50), (1, WINDOW), (2, WINDOW)]


def test_a_canary_that_agrees_is_ok_once_enough_rows_were_compared(tmp_path: Path) -> None:
    h = Harness(tmp_path, settings(outputs=outputs(min_rows=100)), roles=Roles(1, 2),
                functions={1: stable_fn, 2: stable_fn})
    h.collect_reference()
    h.captured.feed(2, normal(21, WINDOW))
    h.tick()
    assert h.finding("disagreement").verdict == "inconclusive"  # 50 of 100 rows
    h.captured.feed(2, normal(22, WINDOW))
    h.tick()
    found = h.drift_findings()
    assert found["disagreement"].verdict == "ok"
    assert found["disagreement"].evidence["disagreeing"] == 0
    assert found["outputs:canary"].verdict == "ok" and found["outputs:stable"].verdict == "ok"


def test_a_down_worker_makes_every_finding_inconclusive_and_rows_wait(tmp_path: Path) -> None:
    h = Harness(tmp_path, settings(outputs=outputs()), roles=Roles(1, 2),
                functions={1: stable_fn, 2: stable_fn})
    h.collect_reference()
    h.captured.feed(1, normal(30, WINDOW))
    h.tick()
    assert h.finding().verdict == "ok"

    h.worker.crash()
    # while down: 100 shifted rows, then 350 clean ones; only the newest 4 windows are kept
    h.captured.feed(1, normal(31, 100, shift=3.0) + normal(32, 50))
    h.tick()
    found = h.drift_findings()
    assert set(found) == {"inputs", "outputs:stable", "outputs:canary", "disagreement"}
    assert {(f.verdict, f.reason) for f in found.values()} == {("inconclusive", CRASH)}
    assert h.checks.states["m"].windows.pending == normal(31, 100, shift=3.0) + normal(32, 50)
    h.captured.feed(1, normal(33, 150))
    h.tick()
    dropped = 300 - MAX_PENDING_WINDOWS * WINDOW
    assert h.metric("tfwarden_capture_rows_total", model="m", outcome="dropped",
                    status="200") == dropped
    assert h.checks.states["m"].windows.pending == normal(32, 50) + normal(33, 150)
    assert h.finding().verdict == "inconclusive" and h.checks.states["m"].windows.windows == 1

    h.worker.restart()  # a fresh worker: the model must be configured again
    before = len(h.worker.requests)
    h.tick()
    state = h.checks.states["m"]
    assert state.windows.windows == 1 + MAX_PENDING_WINDOWS and state.windows.pending == []
    # configured again, 4 input windows, then stable's and the canary's outputs on the last one
    assert h.worker.requests[before:] == ["configure", *["check"] * (MAX_PENDING_WINDOWS + 2),
                                          "stats"]
    found = h.drift_findings()
    assert found["inputs"].verdict == "ok" and found["inputs"].evidence["consecutive"] == 0
    assert found["outputs:stable"].verdict == "ok"
    assert h.checks.report("m")["worker"]["generation"] == 2  # type: ignore[index]


def test_an_unreadable_signature_leaves_the_captured_rows_queued(tmp_path: Path) -> None:
    h = Harness(tmp_path, settings())
    h.collect_reference()
    h.serving.error = "UNAVAILABLE: connection refused"
    h.captured.feed(1, normal(40, WINDOW))
    h.tick()
    finding = h.finding()
    assert finding.verdict == "inconclusive"
    assert finding.reason == "drift check: inputs('m'): UNAVAILABLE: connection refused"
    assert len(h.captured.queued["m"]) == WINDOW
    h.serving.error = None
    h.tick()
    assert h.finding().verdict == "ok" and "m" not in h.captured.queued


def test_reconfigure_keeps_the_state_of_unchanged_settings(tmp_path: Path) -> None:
    h = Harness(tmp_path, settings())
    h.collect_reference()
    h.captured.feed(1, normal(50, WINDOW + 10))
    h.tick()
    state = h.checks.states["m"]
    assert state.windows.windows == 1 and len(state.windows.pending) == 10

    new_client = FakeServingClient(functions={1: stable_fn})
    h.checks.reconfigure({"m": h.model(settings(), new_client)})
    assert h.checks.states["m"] is state and state.model.client is new_client  # type: ignore[comparison-overlap]

    h.checks.reconfigure({"m": h.model(settings(consecutive=3))})
    fresh = h.checks.states["m"]
    assert fresh is not state and fresh.settings.consecutive == 3
    assert fresh.inputs is None and fresh.windows.windows == 0 and fresh.windows.pending == []
    # the saved reference is read again, not collected again
    assert not fresh.windows.collecting and len(fresh.windows.collected) == 100

    h.checks.reconfigure({})
    assert h.checks.states == {}


def test_calibration_inputs_are_the_reference_file_or_the_saved_rows(tmp_path: Path) -> None:
    npy = tmp_path / "reference.npy"
    np.save(npy, np.random.default_rng(60).normal(size=(200, 1)))
    configured = Harness(tmp_path, settings(reference=npy), state_dir=tmp_path / "a")
    assert configured.checks.calibration_inputs("m") == npy
    assert not configured.checks.states["m"].windows.collecting  # nothing to collect
    configured.captured.feed(1, normal(61, WINDOW))
    configured.tick()
    assert configured.finding().verdict == "ok"
    report = configured.checks.report("m")
    assert report is not None and report["reference"]["rows"] == 100  # reference_rows of 200

    logged = tmp_path / "requests.tfrecord"
    logged.write_bytes(b"")
    as_log = Harness(tmp_path, settings(reference=logged), state_dir=tmp_path / "b")
    assert as_log.checks.calibration_inputs("m") is None  # not a format calibration reads

    captured = Harness(tmp_path, settings(), state_dir=tmp_path / "c")
    assert captured.checks.calibration_inputs("m") is None  # nothing saved yet
    rows = captured.collect_reference()
    assert captured.checks.calibration_inputs("m") == (["x"], rows)
    assert captured.checks.calibration_inputs("unknown") is None


def test_a_worker_failure_is_inconclusive_and_configures_again(tmp_path: Path) -> None:
    h = Harness(tmp_path, settings(features=[{"name": "y", "kind": "numeric"}]))
    h.collect_reference()
    h.captured.feed(1, normal(70, WINDOW))
    h.tick()
    finding = h.finding()
    assert finding.verdict == "inconclusive" and finding.reason.startswith(
        "drift check: drift.features names ['y'], not inputs of the signature (['x'])")
    assert h.checks.report("m")["problem"] is not None  # type: ignore[index]
    with pytest.raises(KeyError):
        h.finding("outputs:stable")  # outputs disabled: no such finding


# -- performance (estimated accuracy) -----------------------------------------------------------
PERF_ROWS = 200


def confident(x: float) -> float:
    """A binary classifier's P(class 1): sure of itself away from the boundary."""
    return float(1 / (1 + np.exp(-4 * x)))


def unsure(x: float) -> float:
    """The same ranking, much less confident: a worse canary."""
    return float(1 / (1 + np.exp(-0.3 * x)))


def with_performance(**overrides: Any) -> DriftSettings:
    values: dict[str, Any] = {"min_rows": 100, "tolerance": 0.1, "window_rows": 400}
    performance = PerformanceSettings(**{**values, **overrides.pop("performance", {})})
    return settings(window_rows=PERF_ROWS, performance=performance,
                    outputs=outputs(rows_per_check=PERF_ROWS, min_rows=PERF_ROWS), **overrides)


def test_a_less_confident_canary_has_an_estimated_accuracy_regression(tmp_path: Path) -> None:
    h = Harness(tmp_path, with_performance(), roles=Roles(1, 2),
                functions={1: confident, 2: unsure})
    h.collect_reference()
    h.captured.feed(2, normal(80, PERF_ROWS))
    h.tick()
    stable, canary = h.performance("stable"), h.performance("canary")
    assert (stable.detector, stable.target, stable.version, stable.verdict) == \
        ("performance", "accuracy", 1, "ok")
    assert (canary.version, canary.verdict) == (2, "regression")
    assert canary.effect["accuracy_drop"] > 0.2
    assert canary.evidence["samples"] == PERF_ROWS and canary.evidence["calibrated"] is False
    assert canary.evidence["reference_accuracy_source"] == "estimated"
    assert "assumed calibrated" in canary.reason
    # both versions are judged against stable's confidence on the reference inputs
    assert canary.evidence["reference_accuracy"] == stable.evidence["reference_accuracy"]

    h.captured.feed(2, normal(81, PERF_ROWS))
    h.captured.feed(2, normal(82, PERF_ROWS))
    h.tick()  # two windows: only the last one is predicted; the worker keeps 400 rows a version
    assert h.performance("canary").evidence["samples"] == 2 * PERF_ROWS
    h.captured.feed(2, normal(83, PERF_ROWS))
    h.tick()
    assert h.performance("canary").evidence["samples"] == 400  # window_rows, not more
    report = h.checks.report("m")
    assert report is not None and report["performance"]["reference"]["rows"] == 50
    assert set(report["performance"]["versions"]) == {"1", "2"}
    assert h.metric("tfwarden_finding_samples", detector="performance", model="m", version="2",
                    target="accuracy") == 400


def test_outputs_that_are_not_probabilities_are_inconclusive_and_say_why(tmp_path: Path) -> None:
    h = Harness(tmp_path, with_performance(), roles=Roles(1, 2),
                functions={1: stable_fn, 2: stable_fn})  # x / 2 + 2: not probabilities
    h.collect_reference()
    h.captured.feed(1, normal(84, PERF_ROWS))
    h.tick()
    for role in ("stable", "canary"):
        finding = h.performance(role)
        assert finding.verdict == "inconclusive"
        assert finding.reason.startswith("no performance estimate: performance: no performance "
                                         "reference: reference probabilities: row 0 has values "
                                         "outside [0, 1]")
        assert "not logits" in finding.reason
    assert h.finding("outputs:stable").verdict == "ok"  # the other checks go on
    assert h.finding("disagreement").verdict == "ok"
    report = h.checks.report("m")
    assert report is not None and "outside [0, 1]" in report["performance"]["reference"]["error"]


def test_an_unknown_output_is_inconclusive_and_names_the_outputs(tmp_path: Path) -> None:
    h = Harness(tmp_path, with_performance(performance={"output": "probabilities"}),
                functions={1: confident})
    h.collect_reference()
    h.captured.feed(1, normal(85, PERF_ROWS))
    h.tick()
    finding = h.performance("stable")
    assert finding.verdict == "inconclusive"
    assert "no output 'probabilities'; the model has output" in finding.reason


def test_reference_labels_calibrate_and_are_aligned_with_the_reference_rows(
        tmp_path: Path) -> None:
    x = np.random.default_rng(86).normal(size=200)
    np.save(tmp_path / "reference.npy", x[:, None])
    predicted = (x > 0).astype(int)
    labels = np.where(np.arange(200) % 2 == 0, predicted, 1 - predicted)  # odd rows all wrong
    labels[0:40:8] = 1 - labels[0:40:8]  # and a few even rows
    np.save(tmp_path / "labels.npy", labels)
    drift = with_performance(reference=tmp_path / "reference.npy",
                             performance={"reference_labels": tmp_path / "labels.npy"})
    h = Harness(tmp_path, drift, functions={1: confident})
    h.captured.feed(1, normal(87, PERF_ROWS))
    h.tick()
    finding = h.performance("stable")
    assert finding.evidence["calibrated"] is True
    assert finding.evidence["reference_accuracy_source"] == "labels"
    # 100 reference rows read (reference_rows), 50 predicted: every second one, even rows
    assert finding.evidence["reference_accuracy"] == 0.9
    assert finding.evidence["reference_rows"] == 50


def test_too_few_reference_labels_are_inconclusive(tmp_path: Path) -> None:
    np.save(tmp_path / "reference.npy", np.random.default_rng(88).normal(size=(200, 1)))
    (tmp_path / "labels.csv").write_text("label\n" + "1\n" * 60)
    drift = with_performance(reference=tmp_path / "reference.npy",
                             performance={"reference_labels": tmp_path / "labels.csv"})
    h = Harness(tmp_path, drift, functions={1: confident})
    h.captured.feed(1, normal(89, PERF_ROWS))
    h.tick()
    finding = h.performance("stable")
    assert finding.verdict == "inconclusive"
    assert "60 labels for a reference of 100 rows" in finding.reason


def test_performance_settings_are_checked_at_load(tmp_path: Path) -> None:
    labels = tmp_path / "labels.npy"
    np.save(labels, np.zeros(10, dtype=int))
    with pytest.raises(ValidationError, match="aligned with the rows of the drift reference"):
        DriftSettings(performance={"reference_labels": labels})
    with pytest.raises(ValidationError, match="performance needs outputs.enabled"):
        DriftSettings(performance={}, outputs={"enabled": False})
    with pytest.raises(ValidationError, match="does not exist"):
        PerformanceSettings(reference_labels=tmp_path / "missing.npy")
    (tmp_path / "labels.txt").write_text("1\n")
    with pytest.raises(ValidationError, match="expected a .npy or .csv file"):
        PerformanceSettings(reference_labels=tmp_path / "labels.txt")
    assert DriftSettings().performance is None  # opt-in


def test_a_down_worker_makes_performance_findings_inconclusive(tmp_path: Path) -> None:
    h = Harness(tmp_path, with_performance(), roles=Roles(1, 2),
                functions={1: confident, 2: unsure})
    h.collect_reference()
    h.captured.feed(1, normal(90, PERF_ROWS))
    h.tick()
    assert h.performance("canary").verdict == "regression"
    h.worker.crash()
    h.captured.feed(1, normal(91, PERF_ROWS))
    h.tick()
    for role, version in (("stable", 1), ("canary", 2)):
        finding = h.performance(role)
        assert (finding.verdict, finding.version, finding.reason) == ("inconclusive", version,
                                                                       CRASH)
    h.worker.restart()  # a fresh worker: refitted, its window starts afresh
    h.tick()
    assert h.performance("canary").verdict == "regression"
    assert h.performance("canary").evidence["samples"] == PERF_ROWS


def test_a_policy_rule_on_the_performance_finding_rolls_the_canary_back(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("""rules:
  - name: rollback-canary-on-accuracy-drop
    when:
      status: {phase: [canary_live]}
      any:
        - {detector: performance, verdict: regression, role: canary, target: [accuracy],
           min_samples: 100, min_effect: {accuracy_drop: 0.1}}
    action: rollback
""")
    h = Harness(tmp_path, with_performance(), roles=Roles(1, 2),
                functions={1: confident, 2: unsure})
    h.collect_reference()
    h.captured.feed(1, normal(92, PERF_ROWS))
    h.tick()
    status = ModelStatus("m", Phase.CANARY_LIVE, stable_version=1, canary_version=2, since=0.0)
    findings = h.roster.findings()
    memory = PolicyMemory()
    remember(memory, findings, h.clock.now())
    (decision,) = evaluate(load_ruleset(str(rules)), findings, {"m": status}, h.clock.now(),
                           memory)
    assert decision.action == "rollback" and decision.params["to_version"] == 1
    (used,) = decision.findings
    assert (used["detector"], used["version"], used["target"]) == ("performance", 2, "accuracy")


def test_the_worker_refuses_bad_performance_requests(tmp_path: Path) -> None:
    worker = Worker(tmp_path)
    reference = normal(93, 100)
    predictions = [[confident(float(row[0]))] for row in reference]
    base = {"op": "configure", "model": "m", "engine": "scipy", "features": ["x"],
            "reference": {"rows": reference}}
    worker.handle({**base, "outputs": {"features": ["output"], "rows": predictions}})
    asked = {"op": "performance", "model": "m", "version": 2, "features": ["output"],
             "rows": [[0.9], [0.2]]}
    assert worker.handle(asked)["error"] == (
        "performance: model 'm' has no performance estimation configured (it needs the "
        "outputs reference)")
    answer = worker.handle({**base, "outputs": {"features": ["output"], "rows": predictions},
                            "performance": {"output": None, "window_rows": 30, "labels": None}})
    assert answer["performance"]["rows"] == 100 and answer["performance"]["calibrated"] is False
    logits = worker.handle({**asked, "rows": [[2.5], [-1.0]]})
    assert logits["error"].startswith("performance: window probabilities: row 0 has values "
                                      "outside [0, 1]")
    wrong = worker.handle({**asked, "features": ["output[0]", "output[1]"],
                           "rows": [[0.5, 0.5]]})
    assert wrong["error"] == ("performance: window probabilities: expected 1 column(s) like the "
                              "reference, got 2")
    assert worker.handle({**asked, "rows": [["a"]]})["error"].startswith(
        "performance: output 'output': expected numeric probabilities")
    assert "not configured" in worker.handle({**asked, "model": "other"})["error"]
    for _ in range(20):  # the refused rows were not kept; the buffer is bounded
        report = worker.handle(asked)
    assert report["rows"] == 30 and report["window_rows"] == 30
    assert report["estimated_accuracy"] == pytest.approx(0.85)
    other = worker.handle({**asked, "version": 3})
    assert other["rows"] == 2  # each version has its own window
