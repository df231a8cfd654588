"""The drift engine contract (``detectors.drift.engines``), run over alibi and scipy on seeded
data: one report shape, shifts found in the shifted feature only, quiet on null data."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tfwarden.detectors.drift.engines import DriftEngine, make_engine
from tfwarden.detectors.drift.reference import Array, Reference
from tfwarden.detectors.drift.settings import BatchSettings

NUMERIC = ["age", "income", "score"]
REPORT_KEYS = {"engine", "rows", "reference", "p_value", "correction", "drift", "drifted_features",
               "features", "multivariate"}
FEATURE_KEYS = {"name", "kind", "test", "statistic", "p_value", "p_adjusted", "psi", "drift"}


def normal(seed: int, rows: int, columns: int = 3) -> Array:
    return np.random.default_rng(seed).normal(size=(rows, columns))


def _numeric_reference() -> Reference:
    return Reference.from_rows(normal(10, 2000).tolist(), NUMERIC, source="numeric")


def _mixed_reference() -> Reference:
    rng = np.random.default_rng(11)
    colors = rng.choice(["blue", "green", "red"], p=[0.5, 0.3, 0.2], size=2000)
    rows: list[list[float | str]] = [[str(c), float(x)] for c, x in
                                     zip(colors, rng.normal(size=2000), strict=True)]
    return Reference.from_rows(rows, ["color", "size"], source="mixed")


def _wide_reference() -> Reference:
    return Reference.from_rows(normal(0, 2000, 10).tolist(), [f"f{i}" for i in range(10)])


REFERENCES = {"numeric": _numeric_reference(), "mixed": _mixed_reference(),
              "wide": _wide_reference()}


class Engines:
    """One engine kind, each (reference, settings) built once per module (alibi's import of
    TensorFlow is the slow part)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._built: dict[tuple[str, float, str], DriftEngine] = {}

    def get(self, reference: str, p_value: float = 0.01, correction: str = "fdr") -> DriftEngine:
        key = (reference, p_value, correction)
        if key not in self._built:
            self._built[key] = make_engine(self.name, REFERENCES[reference],
                                           BatchSettings(p_value=p_value, correction=correction))
        return self._built[key]


@pytest.fixture(scope="module", params=["alibi", "scipy"])
def engines(request: pytest.FixtureRequest) -> Engines:
    return Engines(request.param)


def drifted(report: dict[str, Any]) -> list[str]:
    return [f["name"] for f in report["features"] if f["drift"]]


# -- the contract -------------------------------------------------------------------------------
def test_the_report_has_one_shape(engines: Engines) -> None:
    report = engines.get("numeric").check(normal(20, 300))
    assert set(report) == REPORT_KEYS
    assert report["engine"] == engines.name and report["rows"] == 300
    assert report["reference"] == {"hash": REFERENCES["numeric"].hash, "rows": 2000,
                                   "source": "numeric"}
    assert (report["p_value"], report["correction"], report["multivariate"]) == (0.01, "fdr", None)
    assert isinstance(report["drift"], bool) and isinstance(report["drifted_features"], list)
    assert [f["name"] for f in report["features"]] == NUMERIC
    for feature in report["features"]:
        assert set(feature) == FEATURE_KEYS
        assert (feature["kind"], feature["test"]) == ("numeric", "ks")
        assert isinstance(feature["drift"], bool)
        for key in ("statistic", "p_value", "p_adjusted", "psi"):
            assert type(feature[key]) is float, (key, feature[key])
        assert 0.0 <= feature["p_value"] <= feature["p_adjusted"] <= 1.0
        assert 0.0 <= feature["statistic"] <= 1.0  # a KS distance
        assert feature["psi"] >= 0.0


def test_a_clear_shift_in_one_feature_is_found_there_only(engines: Engines) -> None:
    batch = normal(21, 400)
    batch[:, 1] += 0.5
    report = engines.get("numeric").check(batch)
    assert report["drift"] is True
    assert report["drifted_features"] == ["income"] == drifted(report)
    age, income, score = report["features"]
    assert income["p_adjusted"] < 1e-6 and income["statistic"] > 0.15 and income["psi"] > 0.05
    assert min(age["p_adjusted"], score["p_adjusted"]) > 0.05
    assert max(age["psi"], score["psi"]) < 0.05


def test_a_half_sigma_shift_among_ten_features_is_found(engines: Engines) -> None:
    batch = normal(1, 400, 10)
    batch[:, 3] += 0.5
    report = engines.get("wide", p_value=0.05).check(batch)
    assert report["drift"] and report["drifted_features"] == ["f3"]
    f3 = report["features"][3]
    assert f3["test"] == "ks" and f3["p_adjusted"] < 1e-4 and f3["psi"] > 0.05


def test_identical_distribution_is_not_drift(engines: Engines) -> None:
    report = engines.get("numeric").check(normal(22, 500))
    assert report["drift"] is False and report["drifted_features"] == [] == drifted(report)
    assert min(f["p_adjusted"] for f in report["features"]) > 0.01
    assert max(f["psi"] for f in report["features"]) < 0.05


def test_null_batches_rarely_drift(engines: Engines) -> None:
    detector = engines.get("wide", p_value=0.05)
    rng = np.random.default_rng(2)
    drifted_batches = sum(detector.check(rng.normal(size=(400, 10)))["drift"] for _ in range(40))
    assert drifted_batches <= 6  # FDR at 5 %: about 2 expected in 40 batches


def test_a_categorical_feature_is_tested_with_chi_square(engines: Engines) -> None:
    rng = np.random.default_rng(23)
    colors = rng.choice(["blue", "green", "red", "purple"], p=[0.3, 0.3, 0.3, 0.1], size=500)
    batch = REFERENCES["mixed"].encode([[str(c), float(x)] for c, x in
                                        zip(colors, rng.normal(size=500), strict=True)])
    assert set(batch[:, 0]) == {0.0, 1.0, 2.0, 3.0}  # purple: the reference never saw it
    report = engines.get("mixed").check(batch)
    color, size = report["features"]
    assert (color["name"], color["kind"], color["test"]) == ("color", "categorical", "chi2")
    assert (size["name"], size["kind"], size["test"]) == ("size", "numeric", "ks")
    assert report["drifted_features"] == ["color"]
    assert color["p_adjusted"] < 1e-6 and color["statistic"] > 50 and color["psi"] > 0.1
    assert size["p_adjusted"] > 0.01


def test_a_categorical_batch_of_known_categories_only_is_checked(engines: Engines) -> None:
    rng = np.random.default_rng(29)  # the reference's own mix: no unseen category in the batch
    colors = rng.choice(["blue", "green", "red"], p=[0.5, 0.3, 0.2], size=500)
    batch = REFERENCES["mixed"].encode([[str(c), float(x)] for c, x in
                                        zip(colors, rng.normal(size=500), strict=True)])
    assert set(batch[:, 0]) == {0.0, 1.0, 2.0}
    report = engines.get("mixed").check(batch)
    assert report["drifted_features"] == [] and report["features"][0]["p_adjusted"] > 0.01


def test_bonferroni_adjusts_at_least_as_much_as_fdr(engines: Engines) -> None:
    batch = normal(24, 400)
    batch[:, 1] += 0.12
    batch[:, 2] += 0.25
    fdr = engines.get("numeric", p_value=0.05, correction="fdr").check(batch)
    bonferroni = engines.get("numeric", p_value=0.05, correction="bonferroni").check(batch)
    assert (fdr["correction"], bonferroni["correction"]) == ("fdr", "bonferroni")
    raw = [f["p_value"] for f in fdr["features"]]
    assert raw == [f["p_value"] for f in bonferroni["features"]]
    assert [f["p_adjusted"] for f in bonferroni["features"]] == \
        pytest.approx([min(1.0, 3 * p) for p in raw])
    for f, b in zip(fdr["features"], bonferroni["features"], strict=True):
        assert b["p_adjusted"] >= f["p_adjusted"] >= f["p_value"]
    assert sum(b["p_adjusted"] > f["p_adjusted"]
               for f, b in zip(fdr["features"], bonferroni["features"], strict=True)) >= 1
    assert set(bonferroni["drifted_features"]) <= set(fdr["drifted_features"])


@pytest.mark.parametrize("correction", ["fdr", "bonferroni"])
def test_a_feature_drifts_exactly_when_its_adjusted_p_value_is_at_most_p_value(
        engines: Engines, correction: str) -> None:
    engine = engines.get("numeric", p_value=0.05, correction=correction)
    verdicts = set()
    for seed, shifts in enumerate([(0.0, 0.0, 0.0), (0.0, 0.1, 0.2), (0.15, 0.0, 0.3),
                                   (0.2, 0.2, 0.2), (0.0, 0.6, 0.05)]):
        batch = normal(30 + seed, 400) + np.array(shifts)
        report = engine.check(batch)
        for feature in report["features"]:
            assert feature["drift"] == (feature["p_adjusted"] <= 0.05), (seed, feature)
            verdicts.add(feature["drift"])
        assert report["drift"] == bool(report["drifted_features"])
    assert verdicts == {True, False}


def test_a_batch_of_the_wrong_width_is_refused(engines: Engines) -> None:
    with pytest.raises(ValueError, match=r"batch: expected \(rows, 3\), got \(10, 2\)"):
        engines.get("numeric").check(normal(25, 10, 2))
