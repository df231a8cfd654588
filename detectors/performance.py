"""Confidence-based performance estimation (CBPE): a classifier's accuracy without labels.

Runs in the drift worker (numpy; never imported by the daemon). The estimate of a window is the
mean, over its rows, of the probability that the predicted (top) class is right. That
probability is the model's top-class confidence mapped through a calibrator fitted on a
labelled reference (isotonic regression of "prediction correct" on confidence; sklearn's when
installed, else the pool-adjacent-violators below, which gives the same fit). Without labels
the model's probabilities are assumed calibrated (``calibrated: false``).

The interval is a normal one around the estimate, with the variance of the window's realized
accuracy given its inputs (Poisson-binomial: ``sum q(1-q) / n^2``) plus the variance of the
estimate from the calibrator's own finite reference (bootstrap refits). It assumes P(y | x) did
not change since the reference (no concept shift): see docs/performance.md for what it covers.
"""

from __future__ import annotations

import csv
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from tfwarden.core.errors import InvalidInput
from tfwarden.core.types import Finding
from tfwarden.detectors.performance_settings import PerformanceSettings, performance_finding

try:
    from sklearn.isotonic import IsotonicRegression
except ImportError:  # pragma: no cover - sklearn is a declared dependency of the workers
    IsotonicRegression = None

Array = NDArray[np.float64]
FOLDS = 5  # cross-fitting of the calibrator on the reference
RESAMPLES = 30  # bootstrap refits that size the calibration uncertainty
MIN_REFERENCE_ROWS = 50
SUM_TOLERANCE = 1e-3  # float32 softmax rows sum to 1 within ~1e-6; leave room for rounding
RANGE_TOLERANCE = 1e-6

__all__ = ["Calibrator", "CbpeReference", "PerformanceSettings", "PerformanceWindows",
           "check_probabilities", "fit_isotonic", "load_labels", "pav", "performance_finding",
           "select_output", "top_class"]


# -- inputs -------------------------------------------------------------------------------------
def check_probabilities(probabilities: ArrayLike, classes: int | None = None,
                        what: str = "probabilities") -> Array:
    """``probabilities`` as a float array [rows, classes]; InvalidInput saying what is wrong.

    One column (or a 1-D array) is P(class 1) of a binary model; two or more columns are class
    probabilities whose rows sum to 1.
    """
    try:
        array = np.asarray(probabilities, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what}: expected a 2-D array [rows, classes] of probabilities, "
                           f"got {type(probabilities).__name__} that is not one ({exc})") from None
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidInput(f"{what}: expected a 2-D array [rows, classes] (or one column of "
                           f"P(class 1)) with at least one row, got shape {array.shape}")
    if classes is not None and array.shape[1] != classes:
        raise InvalidInput(f"{what}: expected {classes} column(s) like the reference, got "
                           f"{array.shape[1]}")
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        raise InvalidInput(f"{what}: row {int(np.argmin(finite))} is not finite (NaN or "
                           f"infinity); expected probabilities in [0, 1]")
    outside = ((array < -RANGE_TOLERANCE) | (array > 1 + RANGE_TOLERANCE)).any(axis=1)
    if outside.any():
        row = int(np.argmax(outside))
        raise InvalidInput(f"{what}: row {row} has values outside [0, 1] "
                           f"({_short(array[row])}); expected probabilities (softmax or sigmoid "
                           f"outputs, not logits)")
    if array.shape[1] >= 2:
        off = np.abs(array.sum(axis=1) - 1.0) > SUM_TOLERANCE
        if off.any():
            row = int(np.argmax(off))
            raise InvalidInput(f"{what}: row {row} sums to {array[row].sum():.6g}; expected each "
                               f"row of {array.shape[1]} class probabilities to sum to 1")
    return np.clip(array, 0.0, 1.0)


def check_labels(labels: ArrayLike, rows: int, classes: int) -> NDArray[np.int64]:
    """Class indices, one per row, in 0..classes-1 (0/1 for a one-column binary model)."""
    array = np.asarray(labels)
    if array.ndim != 1 or array.shape[0] != rows:
        raise InvalidInput(f"labels: expected a 1-D array of {rows} class indices (one per row "
                           f"of probabilities), got shape {array.shape}")
    count = max(classes, 2)
    if array.dtype.kind not in "iub" and not (
            array.dtype.kind == "f" and np.isfinite(array).all() and (array == np.round(array)).all()):
        raise InvalidInput(f"labels: expected integer class indices in 0..{count - 1}, got "
                           f"dtype {array.dtype}")
    integers = array.astype(np.int64)
    bad = (integers < 0) | (integers >= count)
    if bad.any():
        raise InvalidInput(f"labels: row {int(np.argmax(bad))} is {integers[bad][0]}; expected "
                           f"a class index in 0..{count - 1}")
    return integers


def top_class(probabilities: Array) -> tuple[NDArray[np.int64], Array]:
    """Predicted class and its probability (the confidence) of each row."""
    if probabilities.shape[1] == 1:
        positive = probabilities[:, 0]
        predicted = (positive >= 0.5).astype(np.int64)
        return predicted, np.where(predicted == 1, positive, 1.0 - positive)
    predicted = np.argmax(probabilities, axis=1).astype(np.int64)
    return predicted, probabilities[np.arange(len(predicted)), predicted]


def select_output(names: Sequence[str], rows: Sequence[Sequence[float | str]],
                  output: str | None) -> Array:
    """The probability columns of ``output`` from flat prediction rows (``predict_rows``).

    Column names are ``NAME`` (one value) or ``NAME[i]``; ``output`` None takes the only output.
    """
    outputs = sorted({name.split("[", 1)[0] for name in names})
    if output is None:
        if len(outputs) != 1:
            raise InvalidInput(f"performance.output: the model has outputs {', '.join(outputs)}; "
                               f"name the one with the class probabilities")
        output = outputs[0]
    columns = [i for i, name in enumerate(names) if name == output or name.startswith(f"{output}[")]
    if not columns:
        raise InvalidInput(f"performance.output: no output {output!r}; the model has "
                           f"{', '.join(outputs) or 'none'}")
    try:
        return np.asarray([[float(row[i]) for i in columns] for row in rows], dtype=np.float64)
    except (TypeError, ValueError, IndexError):
        raise InvalidInput(f"output {output!r}: expected numeric probabilities in columns "
                           f"{columns[0]}..{columns[-1]} of every row") from None


def _short(row: Array) -> str:
    return ", ".join(f"{v:.4g}" for v in row[:6]) + (", ..." if len(row) > 6 else "")


# -- calibration --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Calibrator:
    """An increasing map from top-class confidence to P(correct): linear between knots."""

    x: Array
    y: Array

    def __call__(self, confidence: Array) -> Array:
        return np.clip(np.interp(confidence, self.x, self.y), 0.0, 1.0)


IDENTITY = Calibrator(np.array([0.0, 1.0]), np.array([0.0, 1.0]))


def pav(x: Array, y: Array) -> Calibrator:
    """Least-squares increasing fit of ``y`` on ``x`` (pool adjacent violators)."""
    order = np.argsort(x, kind="mergesort")
    unique, starts, counts = np.unique(x[order], return_index=True, return_counts=True)
    sums = np.add.reduceat(y[order], starts)
    values: list[float] = []
    weights: list[float] = []
    sizes: list[int] = []
    for total, count in zip(sums.tolist(), counts.tolist(), strict=True):
        value, weight, size = total / count, float(count), 1
        while values and values[-1] >= value:
            value = (values[-1] * weights[-1] + value * weight) / (weights[-1] + weight)
            weight += weights.pop()
            size += sizes.pop()
            values.pop()
        values.append(value)
        weights.append(weight)
        sizes.append(size)
    return Calibrator(unique.astype(np.float64), np.repeat(values, sizes).astype(np.float64))


def fit_isotonic(x: Array, y: Array) -> Calibrator:
    """Isotonic regression of ``y`` (0/1) on ``x``: sklearn's when installed, else ``pav``."""
    if IsotonicRegression is None:
        return pav(x, y)
    model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(x, y)
    return Calibrator(np.asarray(model.X_thresholds_, dtype=np.float64),
                      np.asarray(model.y_thresholds_, dtype=np.float64))


def _cross_fitted(confidence: Array, correct: Array, rng: np.random.Generator) -> Array:
    """Out-of-fold calibrated confidences: each fold mapped by a calibrator fitted without it."""
    folds = rng.permutation(len(confidence)) % FOLDS
    out = np.empty_like(confidence)
    for fold in range(FOLDS):
        held = folds == fold
        out[held] = fit_isotonic(confidence[~held], correct[~held])(confidence[held])
    return out


# -- the estimator ------------------------------------------------------------------------------
@dataclass(frozen=True)
class CbpeReference:
    """What the estimate needs from the reference: the calibrator and the reference accuracy.

    Build with ``CbpeReference.fit``; ``estimate`` is cheap (no refit).
    """

    classes: int
    rows: int
    reference_accuracy: float
    reference_accuracy_source: str  # labels | estimated (mean confidence, no labels)
    calibrated: bool  # the confidence -> P(correct) map was checked against labels
    calibrator: str  # isotonic | identity (labels said raw confidences were better) | none
    mapping: Calibrator = IDENTITY
    resamples: tuple[Calibrator, ...] = ()
    check: dict[str, float] = field(default_factory=dict)

    @classmethod
    def fit(cls, probabilities: ArrayLike, labels: ArrayLike | None = None, *,
            seed: int = 0) -> CbpeReference:
        """Fit on reference probabilities [rows, classes] and, when known, their labels.

        With labels: the calibrator is isotonic regression of "top class correct" on the top
        confidence, kept only when it beats the raw confidences out of fold (5-fold
        cross-fitting, Brier score), and bootstrap refits size its uncertainty; the reference
        accuracy is the realized one. Without labels: raw confidences, and the reference
        accuracy is their mean (``calibrated`` False). InvalidInput on bad arrays.
        """
        p = check_probabilities(probabilities, what="reference probabilities")
        rows, classes = p.shape
        if rows < MIN_REFERENCE_ROWS:
            raise InvalidInput(f"reference probabilities: expected at least {MIN_REFERENCE_ROWS} "
                               f"rows, got {rows}")
        predicted, confidence = top_class(p)
        if labels is None:
            return cls(classes, rows, float(confidence.mean()), "estimated", False, "none")
        correct = (predicted == check_labels(labels, rows, classes)).astype(np.float64)
        rng = np.random.default_rng(seed)
        out_of_fold = _cross_fitted(confidence, correct, rng)
        brier_raw = float(np.mean((confidence - correct) ** 2))
        brier_calibrated = float(np.mean((out_of_fold - correct) ** 2))
        isotonic = brier_calibrated < brier_raw
        resamples = tuple(fit_isotonic(confidence[i], correct[i])
                          for i in rng.integers(0, rows, size=(RESAMPLES, rows)))
        check = {"brier_raw": round(brier_raw, 6), "brier_calibrated": round(brier_calibrated, 6),
                 "mean_confidence": round(float(confidence.mean()), 6),
                 "out_of_fold_estimate": round(float(out_of_fold.mean()), 6)}
        return cls(classes, rows, float(correct.mean()), "labels", True,
                   "isotonic" if isotonic else "identity",
                   fit_isotonic(confidence, correct) if isotonic else IDENTITY, resamples, check)

    def estimate(self, probabilities: ArrayLike, confidence: float = 0.95) -> dict[str, Any]:
        """Expected accuracy of a window [rows, classes], its interval and what it rests on.

        The interval (``ci_low``..``ci_high``, two-sided at ``confidence``) is for the accuracy
        the window's rows would show if labelled: label noise given the inputs plus the
        calibrator's reference sampling error; not concept shift. JSON-ready.
        """
        p = check_probabilities(probabilities, self.classes, "window probabilities")
        _, top = top_class(p)
        q = self.mapping(top)
        rows = len(q)
        estimate = float(q.mean())
        label_variance = float(np.sum(q * (1.0 - q))) / rows ** 2
        calibration_variance = float(np.var([g(top).mean() for g in self.resamples], ddof=1)) \
            if len(self.resamples) > 1 else 0.0
        se = math.sqrt(label_variance + calibration_variance)
        z = NormalDist().inv_cdf(0.5 + confidence / 2)
        return {
            "estimated_accuracy": estimate,
            "ci_low": max(0.0, estimate - z * se), "ci_high": min(1.0, estimate + z * se),
            "confidence": confidence, "rows": rows, "standard_error": se,
            "label_noise_se": math.sqrt(label_variance),
            "calibration_se": math.sqrt(calibration_variance),
            "mean_confidence": float(top.mean()),
            "reference_accuracy": self.reference_accuracy,
            "reference_accuracy_source": self.reference_accuracy_source,
            "reference_rows": self.rows, "classes": self.classes,
            "calibrated": self.calibrated, "calibrator": self.calibrator,
            "covers": "label noise given the inputs" + (
                " + calibration error from the reference's size" if self.resamples else
                "; calibration assumed, not checked") + "; not concept shift (P(y|x) changed)",
        }

    def finding(self, model: str, version: int | None, probabilities: ArrayLike,
                settings: PerformanceSettings, now: float) -> Finding:
        """Estimate the last ``settings.window_rows`` rows and judge them (a Finding)."""
        p = check_probabilities(probabilities, self.classes, "window probabilities")
        report = self.estimate(p[-settings.window_rows:], settings.confidence)
        return performance_finding(model, version, report, settings, now)


# -- the drift worker's state -------------------------------------------------------------------
def load_labels(path: Path) -> NDArray[np.int64]:
    """Class indices from ``.npy`` (1-D or one column) or ``.csv`` (one column, a non-numeric
    first line is a header); InvalidInput naming the file when it is not that."""
    try:
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
            if array.ndim == 2 and array.shape[1] == 1:
                array = array[:, 0]
        elif path.suffix == ".csv":
            with path.open(newline="") as handle:
                records = [r for r in csv.reader(handle) if r]
            if records and len(records[0]) == 1 and not _is_number(records[0][0]):
                records = records[1:]
            if any(len(r) != 1 for r in records):
                raise InvalidInput(f"reference_labels {path}: expected one column of class "
                                   f"indices")
            array = np.asarray([float(r[0]) for r in records])
        else:
            raise InvalidInput(f"reference_labels {path}: expected a .npy or .csv file")
    except InvalidInput:
        raise
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"reference_labels {path}: {exc}") from None
    if array.ndim != 1:
        raise InvalidInput(f"reference_labels {path}: expected a 1-D array of class indices, "
                           f"got shape {array.shape}")
    if array.dtype.kind == "f" and not (np.isfinite(array).all() and
                                        (array == np.round(array)).all()):
        raise InvalidInput(f"reference_labels {path}: expected integer class indices")
    if array.dtype.kind not in "iubf":
        raise InvalidInput(f"reference_labels {path}: expected integer class indices, got "
                           f"dtype {array.dtype}")
    labels: NDArray[np.int64] = array.astype(np.int64)
    return labels


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass
class PerformanceWindows:
    """One model's estimator in the drift worker: the reference fitted on stable's predictions
    on the reference inputs, and the most recent ``window_rows`` probability rows of each
    version. ``error`` says why there is no reference (the fit refused its inputs)."""

    key: tuple[Any, ...]
    output: str | None
    window_rows: int
    reference: CbpeReference | None = None
    error: str = ""
    windows: dict[int | None, deque[Array]] = field(default_factory=dict)

    @classmethod
    def fit(cls, key: tuple[Any, ...], names: Sequence[str],
            rows: Sequence[Sequence[float | str]], output: str | None, window_rows: int,
            labels: NDArray[np.int64] | None = None,
            indices: Sequence[int] | None = None) -> PerformanceWindows:
        """Fit on stable's prediction rows; ``labels`` of the reference file's rows, picked by
        ``indices`` (the rows that were predicted). A refused fit is kept as ``error``."""
        state = cls(key, output, window_rows)
        try:
            probabilities = select_output(names, rows, output)
            picked = None
            if labels is not None:
                picked = _aligned(labels, indices, len(rows))
            state.reference = CbpeReference.fit(probabilities, picked)
        except InvalidInput as exc:
            state.error = str(exc)
        return state

    def summary(self) -> dict[str, Any]:
        if self.reference is None:
            return {"error": self.error}
        r = self.reference
        return {"rows": r.rows, "classes": r.classes, "reference_accuracy": r.reference_accuracy,
                "reference_accuracy_source": r.reference_accuracy_source,
                "calibrated": r.calibrated, "calibrator": r.calibrator}

    def observe(self, version: int | None, names: Sequence[str],
                rows: Sequence[Sequence[float | str]], confidence: float) -> dict[str, Any]:
        """Add a version's new prediction rows; the estimate of its last ``window_rows`` rows
        (InvalidInput, nothing added, when they are not probabilities like the reference's)."""
        if self.reference is None:
            raise InvalidInput(f"no performance reference: {self.error}")
        new = check_probabilities(select_output(names, rows, self.output),
                                  self.reference.classes, "window probabilities")
        window = self.windows.setdefault(version, deque(maxlen=self.window_rows))
        window.extend(new)
        report = self.reference.estimate(np.vstack(window), confidence)
        report["window_rows"] = self.window_rows
        return report


def _aligned(labels: NDArray[np.int64], indices: Sequence[int] | None,
             rows: int) -> NDArray[np.int64]:
    picked = np.arange(rows) if indices is None else np.asarray(indices, dtype=np.int64)
    if len(picked) != rows:
        raise InvalidInput(f"reference_labels: {len(picked)} row indices for {rows} predicted "
                           f"rows")
    if len(picked) and int(picked.max()) >= len(labels):
        raise InvalidInput(f"reference_labels: {len(labels)} labels, but the reference has at "
                           f"least {int(picked.max()) + 1} rows; expected one label per row of "
                           f"the reference file")
    return np.asarray(labels[picked], dtype=np.int64)
