"""Drift engines on seeded data: both engines agree, chi-square, PSI, references, MMD (the
contract both engines keep is tests/contract/test_drift_engines.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tfwarden.core.errors import ReferenceError
from tfwarden.detectors.drift.engines import ScipyEngine, bh_adjust, make_engine, psi
from tfwarden.detectors.drift.reference import Reference, load_reference_file
from tfwarden.detectors.drift.settings import BatchSettings

FEATURES = [f"f{i}" for i in range(10)]


def reference(seed: int = 0, rows: int = 2000) -> Reference:
    data = np.random.default_rng(seed).normal(size=(rows, 10))
    return Reference.from_rows(data.tolist(), FEATURES)


def test_engines_give_the_same_p_values() -> None:
    ref = reference()
    batch = np.random.default_rng(3).normal(size=(300, 10)) * 1.3
    scipy = make_engine("scipy", ref, BatchSettings(p_value=0.05)).check(batch)
    alibi = make_engine("alibi", ref, BatchSettings(p_value=0.05)).check(batch)
    # alibi-detect uses the asymptotic KS distribution, scipy the exact one where it can
    assert [f["p_value"] for f in scipy["features"]] == \
        pytest.approx([f["p_value"] for f in alibi["features"]], rel=0.05)
    assert scipy["drifted_features"] == alibi["drifted_features"]


def test_categorical_frequency_change_uses_chi_square() -> None:
    rng = np.random.default_rng(4)
    rows = [[str(rng.choice(["a", "b", "c"], p=[0.5, 0.3, 0.2])), float(rng.normal())]
            for _ in range(2000)]
    ref = Reference.from_rows(rows, ["color", "size"])
    assert ref.kinds == ["categorical", "numeric"] and ref.vocab[0] == ["a", "b", "c"]
    live = [[str(rng.choice(["a", "b", "c", "new"], p=[0.3, 0.3, 0.3, 0.1])), float(rng.normal())]
            for _ in range(500)]
    encoded = ref.encode(live)
    assert set(encoded[:, 0]) == {0.0, 1.0, 2.0, 3.0}  # "new" gets the unseen code
    report = ScipyEngine(ref, BatchSettings(p_value=0.05)).check(encoded)
    assert report["features"][0]["test"] == "chi2" and report["drifted_features"] == ["color"]


def test_bh_and_psi() -> None:
    assert bh_adjust(np.array([0.01, 0.04, 0.03, 0.5])).tolist() == \
        pytest.approx([0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.5])
    same = np.random.default_rng(5).normal(size=5000)
    assert psi(same, np.random.default_rng(6).normal(size=5000), None) < 0.01
    assert psi(same, np.random.default_rng(6).normal(size=5000) + 1, None) > 0.5


def test_reference_hash_is_content_based(tmp_path: Path) -> None:
    data = np.random.default_rng(7).normal(size=(100, 2))
    np.save(tmp_path / "r.npy", data)
    np.savez(tmp_path / "r.npz", x=data)
    (tmp_path / "r.csv").write_text("a,b\n" + "\n".join(f"{x!r},{y!r}" for x, y in data))
    hashes = {load_reference_file(tmp_path / f"r.{ext}", ["a", "b"], None).hash
              for ext in ("npy", "npz", "csv")}
    assert len(hashes) == 1
    assert Reference.from_rows((data + 1).tolist(), ["a", "b"]).hash not in hashes


@pytest.mark.parametrize(("name", "content", "error"), [
    ("r.csv", "a,c\n1,2\n", "header ['a', 'c'] does not match the features ['a', 'b']"),
    ("r.csv", "a,b\n1,2\n3\n", "r.csv:3: expected 2 values"),
    ("r.csv", "a,b\n1,x\n", "r.csv[0][1] (b): expected a number for a numeric feature"),
    ("r.txt", "1 2\n", "unknown reference format"),
])
def test_bad_references_name_the_problem(tmp_path: Path, name: str, content: str,
                                         error: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(ReferenceError, match=None) as info:
        load_reference_file(tmp_path / name, ["a", "b"], ["numeric", "numeric"])
    assert error in str(info.value)


def test_wrong_width_npy(tmp_path: Path) -> None:
    np.save(tmp_path / "r.npy", np.zeros((5, 3)))
    with pytest.raises(ReferenceError, match=r"expected shape \(rows, 2\)"):
        load_reference_file(tmp_path / "r.npy", ["a", "b"], None)


def test_mmd_finds_a_joint_shift_the_marginals_hide() -> None:
    rng = np.random.default_rng(8)
    ref_data = rng.normal(size=(300, 2))
    ref = Reference.from_rows(ref_data.tolist(), ["a", "b"])
    engine = make_engine("alibi", ref, BatchSettings(p_value=0.05, multivariate="mmd", mmd_permutations=100))
    same = engine.check(rng.normal(size=(200, 2)))
    assert same["multivariate"]["test"] == "mmd" and not same["multivariate"]["drift"]
    # the same marginals, but b = -a instead of independent: only a joint test can see it
    a = rng.normal(size=200)
    joint = engine.check(np.column_stack([a, -a + 0.05 * rng.normal(size=200)]))
    assert joint["multivariate"]["drift"] and joint["drift"]
