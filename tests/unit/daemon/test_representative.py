"""Where the reoptimize action finds int8 calibration inputs without optimize.representative."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tfwarden.daemon.config import ModelConfig
from tfwarden.daemon.lifecycle_runner import representative_fallback


def model(tmp_path: Path, drift: dict[str, object] | None) -> ModelConfig:
    np.savez(tmp_path / "golden.npz", x=np.zeros((3, 2)))
    data: dict[str, object] = {"name": "m", "serving": "s",
                               "optimize": {"golden": str(tmp_path / "golden.npz")}}
    if drift is not None:
        data["drift"] = drift
    return ModelConfig.model_validate(data)


def test_the_drift_reference_file_comes_first(tmp_path: Path) -> None:
    np.save(tmp_path / "ref.npy", np.ones((200, 2)))
    found = representative_fallback(model(tmp_path, {"reference": str(tmp_path / "ref.npy")}),
                                    tmp_path / "state")
    assert found == tmp_path / "ref.npy"


def test_the_captured_drift_reference_is_written_as_csv(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "drift").mkdir(parents=True)
    rows = [[float(i), float(i) / 2] for i in range(150)]
    (state / "drift" / "m.reference.json").write_text(json.dumps({"features": ["x[0]", "x[1]"],
                                                                  "rows": rows}))
    found = representative_fallback(model(tmp_path, {}), state)
    assert found is not None
    loaded = np.loadtxt(found, delimiter=",", skiprows=1)
    assert found.read_text().splitlines()[0] == "x[0],x[1]" and loaded.shape == (150, 2)
    assert loaded[3].tolist() == [3.0, 1.5]


def test_nothing_usable_gives_none(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert representative_fallback(model(tmp_path, None), state) is None
    (state / "drift").mkdir(parents=True)
    (state / "drift" / "m.reference.json").write_text(json.dumps(
        {"features": ["c"], "rows": [["red"]] * 200}))  # categorical: not calibration data
    assert representative_fallback(model(tmp_path, {}), state) is None
