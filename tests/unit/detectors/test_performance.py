"""Label-free accuracy estimation (CBPE): estimate, calibration, interval, verdict, bad inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tfwarden.core.errors import InvalidInput
from tfwarden.core.types import INCONCLUSIVE, OK, REGRESSION
from tfwarden.detectors.performance import (
    CbpeReference,
    PerformanceWindows,
    fit_isotonic,
    load_labels,
    pav,
    select_output,
    top_class,
)
from tfwarden.detectors.performance_settings import PerformanceSettings, performance_finding


def calibrated(rng: np.random.Generator, n: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels drawn from them (so the probabilities are calibrated)."""
    if classes == 1:
        p = rng.beta(0.7, 0.7, n)
        return p, (rng.random(n) < p).astype(int)
    p = rng.dirichlet(np.full(classes, 0.6), n)
    labels = (rng.random((n, 1)) > np.cumsum(p, axis=1)).sum(axis=1).clip(0, classes - 1)
    return p, labels


def sharpen(p: np.ndarray, power: float) -> np.ndarray:
    """Overconfident probabilities: the same ranking, pushed towards 0 and 1."""
    q = p ** power
    return q / q.sum(axis=1, keepdims=True)


def realized(p: np.ndarray, labels: np.ndarray) -> float:
    predicted, _ = top_class(p if p.ndim == 2 else p[:, None])
    return float(np.mean(predicted == labels))


@pytest.mark.parametrize("classes", [1, 2, 4])
def test_calibrated_probabilities_estimate_the_realized_accuracy(classes: int) -> None:
    rng = np.random.default_rng(1)
    reference = CbpeReference.fit(*calibrated(rng, 2000, classes))
    p, labels = calibrated(rng, 20_000, classes)
    estimate = reference.estimate(p)
    truth = realized(p, labels)
    assert abs(estimate["estimated_accuracy"] - truth) < 0.012
    assert estimate["ci_low"] <= truth <= estimate["ci_high"]
    assert estimate["rows"] == 20_000 and estimate["calibrated"] is True
    assert estimate["classes"] == classes


def test_labels_calibrate_an_overconfident_model() -> None:
    rng = np.random.default_rng(2)
    truth_p, labels = calibrated(rng, 3000, 3)
    live_truth, live_labels = calibrated(rng, 10_000, 3)
    model, live = sharpen(truth_p, 3.0), sharpen(live_truth, 3.0)  # ranks kept, overconfident
    raw = CbpeReference.fit(model).estimate(live)
    fixed = CbpeReference.fit(model, labels).estimate(live)
    truth = realized(live, live_labels)
    assert raw["estimated_accuracy"] - truth > 0.1  # taken at its word, the model is far off
    assert not raw["ci_low"] <= truth <= raw["ci_high"]
    assert abs(fixed["estimated_accuracy"] - truth) < 0.015
    assert fixed["ci_low"] <= truth <= fixed["ci_high"]
    assert fixed["calibrator"] == "isotonic" and raw["calibrated"] is False
    assert "assumed" in raw["covers"] and "calibration error" in fixed["covers"]


def test_interval_covers_the_realized_accuracy_at_the_nominal_rate() -> None:
    rng = np.random.default_rng(3)
    reference = CbpeReference.fit(*calibrated(rng, 5000, 3))
    covered = []
    for _ in range(400):
        p, labels = calibrated(rng, 300, 3)
        e = reference.estimate(p, confidence=0.9)
        covered.append(e["ci_low"] <= realized(p, labels) <= e["ci_high"])
    assert 0.86 <= np.mean(covered) <= 0.94  # nominal 0.90; 400 draws: sd 0.015


def test_calibration_uncertainty_is_sized_like_the_spread_over_references() -> None:
    rng = np.random.default_rng(4)
    window, _ = calibrated(rng, 5000, 1)
    estimates, calibration_se, label_se = [], [], []
    for seed in range(25):
        e = CbpeReference.fit(*calibrated(rng, 150, 1), seed=seed).estimate(window)
        estimates.append(e["estimated_accuracy"])
        calibration_se.append(e["calibration_se"])
        label_se.append(e["label_noise_se"])
    spread = float(np.std(estimates, ddof=1))
    assert np.mean(calibration_se) > 2 * np.mean(label_se)  # small reference, large window
    assert 0.5 < np.mean(calibration_se) / spread < 2.0


def test_pav_gives_the_same_fit_as_sklearn() -> None:
    rng = np.random.default_rng(5)
    x = np.round(rng.random(700), 2)  # ties too
    y = (rng.random(700) < x ** 2).astype(float)
    grid = np.linspace(-0.1, 1.1, 500)
    assert np.allclose(pav(x, y)(grid), fit_isotonic(x, y)(grid), atol=1e-12)
    assert np.all(np.diff(pav(x, y)(grid)) >= 0)


# -- the finding --------------------------------------------------------------------------------
SETTINGS = PerformanceSettings(tolerance=0.05, min_rows=200)


def report(estimate: float, low: float, high: float, rows: int = 1000,
           reference: float = 0.9, calibrated: bool = True) -> dict[str, Any]:
    return {"estimated_accuracy": estimate, "ci_low": low, "ci_high": high, "rows": rows,
            "reference_accuracy": reference, "calibrated": calibrated, "confidence": 0.95,
            "reference_accuracy_source": "labels", "reference_rows": 2000,
            "calibrator": "isotonic"}


@pytest.mark.parametrize("low,high,rows,verdict", [
    (0.78, 0.8499, 1000, REGRESSION),  # upper bound below 0.9 - 0.05
    (0.78, 0.85, 1000, INCONCLUSIVE),  # touching the threshold is not below it
    (0.84, 0.86, 1000, INCONCLUSIVE),  # straddles
    (0.8501, 0.92, 1000, OK),
    (0.85, 0.92, 1000, INCONCLUSIVE),
    (0.70, 0.80, 199, INCONCLUSIVE),  # too few rows, however clear
])
def test_verdict_boundaries(low: float, high: float, rows: int, verdict: str) -> None:
    finding = performance_finding("m", 2, report((low + high) / 2, low, high, rows), SETTINGS,
                                  10.0)
    assert finding.verdict == verdict, finding.reason
    assert (finding.detector, finding.model, finding.version, finding.target) == \
        ("performance", "m", 2, "accuracy")
    assert finding.evidence["statistic"] == "estimated_accuracy"
    assert finding.evidence["threshold"] == pytest.approx(0.85)
    assert finding.evidence["samples"] == rows and finding.evidence["reference_accuracy"] == 0.9
    assert finding.evidence["calibrated"] is True
    assert finding.effect["estimated_accuracy_ci"] == [round(low, 6), round(high, 6)]
    assert finding.effect["accuracy_drop"] == pytest.approx(0.9 - (low + high) / 2, abs=1e-6)


def test_no_report_and_no_labels_say_so() -> None:
    missing = performance_finding("m", 2, None, SETTINGS, 0.0, reason="worker down")
    assert missing.verdict == INCONCLUSIVE and missing.reason == "worker down"
    assumed = performance_finding("m", 2, report(0.7, 0.68, 0.72, calibrated=False), SETTINGS, 0)
    assert assumed.verdict == REGRESSION and "assumed calibrated" in assumed.reason
    assert assumed.evidence["calibrated"] is False


def test_reference_finding_estimates_the_last_window_rows() -> None:
    rng = np.random.default_rng(6)
    reference = CbpeReference.fit(*calibrated(rng, 1000, 2))
    good = np.tile([[0.99, 0.01]], (500, 1))
    poor = np.tile([[0.55, 0.45]], (300, 1))
    finding = reference.finding("m", 3, np.vstack([good, poor]),
                                PerformanceSettings(window_rows=300), 0.0)
    assert finding.evidence["samples"] == 300 and finding.verdict == REGRESSION
    assert finding.effect["estimated_accuracy"] == pytest.approx(0.55, abs=0.03)


def test_select_output_takes_the_named_probability_columns() -> None:
    names = ["logits[0]", "logits[1]", "probabilities[0]", "probabilities[1]"]
    rows: list[list[float | str]] = [[2.0, -1.0, 0.9, 0.1], [0.0, 1.0, 0.3, 0.7]]
    assert select_output(names, rows, "probabilities").tolist() == [[0.9, 0.1], [0.3, 0.7]]
    assert select_output(["output"], [[0.2]], None).tolist() == [[0.2]]
    with pytest.raises(InvalidInput, match="outputs logits, probabilities; name the one"):
        select_output(names, rows, None)
    with pytest.raises(InvalidInput, match="no output 'scores'"):
        select_output(names, rows, "scores")


# -- bad inputs ---------------------------------------------------------------------------------
GOOD = np.tile([[0.7, 0.2, 0.1]], (60, 1))


def with_row(row: list[float]) -> np.ndarray:
    bad = GOOD.copy()
    bad[7] = row
    return bad


@pytest.mark.parametrize("probabilities,message", [
    (np.zeros((4, 3, 2)), r"expected a 2-D array \[rows, classes\].*got shape \(4, 3, 2\)"),
    (np.zeros((0, 3)), "at least one row"),
    (with_row([2.0, -0.5, -0.5]), r"row 7 has values outside \[0, 1\].*not logits"),
    (with_row([0.5, 0.4, 0.3]), "row 7 sums to 1.2; expected each row of 3 class probabilities"),
    (with_row([np.nan, 0.5, 0.5]), "row 7 is not finite"),
    ([[0.5, "x"]], "expected a 2-D array"),
])
def test_bad_probabilities_name_what_was_expected(probabilities: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        CbpeReference.fit(probabilities)


@pytest.mark.parametrize("labels,message", [
    (np.zeros(59, dtype=int), "expected a 1-D array of 60 class indices"),
    (np.full(60, 3), r"row 0 is 3; expected a class index in 0\.\.2"),
    (np.full(60, 0.5), "expected integer class indices"),
])
def test_bad_labels_name_what_was_expected(labels: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        CbpeReference.fit(GOOD, labels)


def test_window_must_match_the_reference_and_reference_needs_rows() -> None:
    reference = CbpeReference.fit(GOOD, np.zeros(60, dtype=int))
    with pytest.raises(InvalidInput, match="window probabilities: expected 3 column"):
        reference.estimate(np.full((10, 2), 0.5))
    with pytest.raises(InvalidInput, match="at least 50 rows"):
        CbpeReference.fit(GOOD[:10])
    assert issubclass(InvalidInput, ValueError)  # the worker answers ValueErrors as errors


def test_labels_load_from_npy_and_csv_and_bad_files_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "column.npy", np.array([[0], [2], [1]]))
    assert load_labels(tmp_path / "column.npy").tolist() == [0, 2, 1]
    (tmp_path / "labels.csv").write_text("label\n1\n0\n\n1.0\n")
    assert load_labels(tmp_path / "labels.csv").tolist() == [1, 0, 1]
    (tmp_path / "headerless.csv").write_text("3\n4\n")
    assert load_labels(tmp_path / "headerless.csv").tolist() == [3, 4]
    np.save(tmp_path / "floats.npy", np.array([0.5, 1.0]))
    with pytest.raises(InvalidInput, match="expected integer class indices"):
        load_labels(tmp_path / "floats.npy")
    np.save(tmp_path / "wide.npy", np.zeros((3, 2)))
    with pytest.raises(InvalidInput, match="expected a 1-D array of class indices"):
        load_labels(tmp_path / "wide.npy")
    (tmp_path / "two.csv").write_text("1,2\n")
    with pytest.raises(InvalidInput, match="expected one column"):
        load_labels(tmp_path / "two.csv")
    with pytest.raises(InvalidInput, match="missing.npy"):
        load_labels(tmp_path / "missing.npy")


def test_windows_are_fitted_on_the_picked_labels_and_keep_each_versions_last_rows() -> None:
    rng = np.random.default_rng(7)
    p, labels = calibrated(rng, 400, 3)
    names = ["probs[0]", "probs[1]", "probs[2]"]
    picked = list(range(0, 400, 2))
    windows = PerformanceWindows.fit(("k",), names, p[picked].tolist(), "probs", 50, labels,
                                     picked)
    assert windows.reference is not None and windows.summary()["calibrated"] is True
    assert windows.summary()["reference_accuracy"] == pytest.approx(
        realized(p[picked], labels[picked]))
    for _ in range(3):
        report = windows.observe(2, names, p[:30].tolist(), 0.95)
    assert report["rows"] == 50 and windows.observe(3, names, p[:5].tolist(), 0.9)["rows"] == 5
    short = PerformanceWindows.fit(("k",), names, p[picked].tolist(), "probs", 50, labels[:100],
                                   picked)
    assert short.reference is None and "100 labels" in short.summary()["error"]
    with pytest.raises(InvalidInput, match="no performance reference: reference_labels"):
        short.observe(2, names, p[:5].tolist(), 0.95)
