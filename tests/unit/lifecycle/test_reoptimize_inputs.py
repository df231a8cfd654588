"""Where the reoptimize action finds int8 calibration inputs without optimize.representative:
the drift reference (a configured file, or the captured reference saved by the drift checks),
else the rows captured for the stable version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tests.fakes import FakeClock, MemoryStateStore
from tfwarden.daemon.recorder import Recorder
from tfwarden.daemon.state import EventJournal
from tfwarden.detectors.drift.checks import DriftChecks, DriftedModel
from tfwarden.detectors.drift.client import DriftWorkerClient
from tfwarden.detectors.drift.settings import DriftSettings, DriftWorkerSettings
from tfwarden.lifecycle.reoptimize import Reoptimizer


class _Captured:
    def __init__(self, rows: list[list[float | str]]) -> None:
        self.rows = rows

    def take_new(self, model: str) -> list[Any]:
        return []

    def kept_rows(self, model: str, version: int) -> tuple[list[str], list[list[float | str]]]:
        return ["x[0]", "x[1]"], self.rows


class _Alerts:
    def failed(self, model: str, action: str, error: str, severity: str = "page") -> None:
        pass


def checks(state: Path, drift: DriftSettings | None) -> DriftChecks:
    recorder = Recorder()
    models = {"m": DriftedModel("m", drift, None)} if drift is not None else {}  # type: ignore[arg-type]
    return DriftChecks(models, state, DriftWorkerClient(state, DriftWorkerSettings(), recorder),
                       _Captured([]), roles=None, findings=None, metrics=recorder,  # type: ignore[arg-type]
                       clock=FakeClock())


def reoptimizer(tmp_path: Path, drift: DriftChecks, captured: list[list[float | str]]) -> Reoptimizer:
    store = MemoryStateStore()
    return Reoptimizer({}, tmp_path / "optimize", EventJournal(store, FakeClock(), Recorder()),
                       _Alerts(), store, captured=_Captured(captured), calibration=drift)


def test_the_drift_reference_file_comes_first(tmp_path: Path) -> None:
    np.save(tmp_path / "ref.npy", np.ones((200, 2)))
    drift = checks(tmp_path / "state", DriftSettings(reference=tmp_path / "ref.npy"))
    assert reoptimizer(tmp_path, drift, [])._reference_file("m") == tmp_path / "ref.npy"


def test_the_captured_drift_reference_is_written_as_csv(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "drift").mkdir(parents=True)
    rows = [[float(i), float(i) / 2] for i in range(150)]
    (state / "drift" / "m.reference.json").write_text(json.dumps({"features": ["x[0]", "x[1]"],
                                                                  "rows": rows}))
    found = reoptimizer(tmp_path, checks(state, DriftSettings()), [])._reference_file("m")
    assert found is not None
    loaded = np.loadtxt(found, delimiter=",", skiprows=1)
    assert found.read_text().splitlines()[0] == "x[0],x[1]" and loaded.shape == (150, 2)
    assert loaded[3].tolist() == [3.0, 1.5]


def test_captured_rows_come_last_and_too_few_or_categorical_rows_give_none(tmp_path: Path) -> None:
    state = tmp_path / "state"
    unusable = reoptimizer(tmp_path, checks(state, None), [[1.0, 2.0]] * 50)
    assert unusable._reference_file("m") is None and unusable._captured_file("m", 1) is None
    (state / "drift").mkdir(parents=True)
    (state / "drift" / "m.reference.json").write_text(json.dumps(
        {"features": ["c"], "rows": [["red"]] * 200}))  # categorical: not calibration data
    captured = reoptimizer(tmp_path, checks(state, DriftSettings()), [[1.0, 2.0]] * 120)
    assert captured._reference_file("m") is None
    found = captured._captured_file("m", 1)
    assert found is not None and found.name == "m-v1-captured.csv"
    assert np.loadtxt(found, delimiter=",", skiprows=1).shape == (120, 2)
