"""Drift engines behind one interface: ``check(batch) -> report`` against a :class:`Reference`.

- ``alibi``: alibi-detect's TabularDrift (KS per numeric feature, chi-square per categorical
  one, Bonferroni or FDR correction), optionally MMDDrift (TensorFlow backend) over all numeric
  features together for multivariate or embedding inputs. Business Source License 1.1.
- ``scipy``: the same per-feature tests from scipy.stats with Benjamini-Hochberg, for users who
  cannot run alibi-detect in production (BSD licence).

Both report per feature: the test, its statistic (KS distance / chi-square), the raw and the
adjusted p-value, PSI against the reference (reporting only, never a decision) and whether the
feature drifted; and the batch verdict. ``OnlineDrift`` wraps alibi-detect's CVMDriftOnline /
FETDriftOnline, whose thresholds are calibrated to an expected run time (ERT) by a slow bootstrap;
the thresholds are cached in a file named by the reference hash and the detector settings.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from tfwarden.detectors.drift.reference import CATEGORICAL, Array, Reference
from tfwarden.detectors.drift.settings import BatchSettings, OnlineSettings

PSI_EPS = 1e-4


def bh_adjust(p_values: Array) -> Array:
    """Benjamini-Hochberg adjusted p-values (monotone, capped at 1)."""
    return np.asarray(stats.false_discovery_control(np.asarray(p_values, dtype=float)), dtype=float)


def adjust(p_values: Array, correction: str) -> Array:
    if correction == "bonferroni":
        return np.minimum(1.0, np.asarray(p_values, dtype=float) * len(p_values))
    return bh_adjust(p_values)


def psi(reference: Array, batch: Array, categories: int | None) -> float:
    """Population stability index of one column: reference deciles (numeric) or categories."""
    if categories is not None:
        ref_counts = np.bincount(reference.astype(int), minlength=categories)
        new_counts = np.bincount(batch.astype(int), minlength=categories)
    else:
        edges = np.unique(np.quantile(reference, np.linspace(0, 1, 11)[1:-1]))
        ref_counts = np.bincount(np.searchsorted(edges, reference, side="right"),
                                 minlength=len(edges) + 1)
        new_counts = np.bincount(np.searchsorted(edges, batch, side="right"),
                                 minlength=len(edges) + 1)
    p = np.maximum(ref_counts / max(1, ref_counts.sum()), PSI_EPS)
    q = np.maximum(new_counts / max(1, new_counts.sum()), PSI_EPS)
    return float(np.sum((q - p) * np.log(q / p)))


def _chi_square(reference: Array, batch: Array, categories: int) -> tuple[float, float]:
    table = np.vstack([np.bincount(reference.astype(int), minlength=categories),
                       np.bincount(batch.astype(int), minlength=categories)])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 0.0, 1.0
    result = stats.chi2_contingency(table)
    return float(result.statistic), float(result.pvalue)


class DriftEngine:
    """One model's batch drift test against its reference."""

    name = ""

    def __init__(self, reference: Reference, settings: BatchSettings) -> None:
        self.reference, self.settings = reference, settings

    def _per_feature(self, batch: Array) -> tuple[list[str], Array, Array, Array | None]:
        """Tests, statistics, raw p-values and, when the engine decides itself, which features
        drifted (None: adjusted p-value <= ``p_value``)."""
        raise NotImplementedError

    def _multivariate(self, batch: Array) -> dict[str, Any] | None:
        return None

    def check(self, batch: Array) -> dict[str, Any]:
        ref = self.reference
        if batch.ndim != 2 or batch.shape[1] != len(ref.features):
            raise ValueError(f"batch: expected (rows, {len(ref.features)}), got {batch.shape}")
        tests, statistics, p_values, drifted_mask = self._per_feature(batch)
        adjusted = adjust(p_values, self.settings.correction)
        if drifted_mask is None:
            drifted_mask = adjusted <= self.settings.p_value
        features = []
        for j, name in enumerate(ref.features):
            categories = ref.categories(j) if ref.kinds[j] == CATEGORICAL else None
            features.append({
                "name": name, "kind": ref.kinds[j], "test": tests[j],
                "statistic": round(float(statistics[j]), 6),
                "p_value": float(p_values[j]), "p_adjusted": float(adjusted[j]),
                "psi": round(psi(ref.data[:, j], batch[:, j], categories), 6),
                "drift": bool(drifted_mask[j]),
            })
        multivariate = self._multivariate(batch)
        drifted = [f["name"] for f in features if f["drift"]]
        return {
            "engine": self.name, "rows": int(batch.shape[0]),
            "reference": {"hash": ref.hash, "rows": ref.rows, "source": ref.source},
            "p_value": self.settings.p_value, "correction": self.settings.correction,
            "drift": bool(drifted) or bool(multivariate and multivariate["drift"]),
            "drifted_features": drifted, "features": features, "multivariate": multivariate,
        }


class ScipyEngine(DriftEngine):
    name = "scipy"

    def _per_feature(self, batch: Array) -> tuple[list[str], Array, Array, Array | None]:
        ref = self.reference
        tests, statistics, p_values = [], [], []
        for j, kind in enumerate(ref.kinds):
            if kind == CATEGORICAL:
                statistic, p = _chi_square(ref.data[:, j], batch[:, j], ref.categories(j))
                tests.append("chi2")
            else:
                result = stats.ks_2samp(ref.data[:, j], batch[:, j])
                statistic, p = float(result.statistic), float(result.pvalue)
                tests.append("ks")
            statistics.append(statistic)
            p_values.append(p)
        return tests, np.array(statistics), np.array(p_values), None


class AlibiEngine(DriftEngine):
    name = "alibi"

    def __init__(self, reference: Reference, settings: BatchSettings) -> None:
        super().__init__(reference, settings)
        from alibi_detect.cd import TabularDrift

        # None: alibi-detect takes each feature's categories from the reference and tests the
        # union with the batch's, so an unseen category counts and no column is all zeros
        # (a count including the never-seen 'unseen' code made chi2_contingency fail)
        categorical: dict[int, int | None] = {
            j: None for j, kind in enumerate(reference.kinds) if kind == CATEGORICAL}
        self.detector = TabularDrift(reference.data, p_val=settings.p_value,
                                     categories_per_feature=categorical,
                                     correction=settings.correction)
        self.mmd = None
        numeric = [j for j, kind in enumerate(reference.kinds) if kind != CATEGORICAL]
        if settings.multivariate == "mmd" and numeric:
            from alibi_detect.cd import MMDDrift

            self._numeric = numeric
            self.mmd = MMDDrift(reference.data[:, numeric].astype(np.float32), backend="tensorflow",
                                p_val=settings.p_value, n_permutations=settings.mmd_permutations)

    def _per_feature(self, batch: Array) -> tuple[list[str], Array, Array, Array | None]:
        result = self.detector.predict(batch, drift_type="batch", return_p_val=True,
                                       return_distance=True)["data"]
        p_values = np.asarray(result["p_val"], float)
        threshold = np.asarray(result["threshold"], float)
        # alibi-detect decides on raw p-values against its corrected cut-off; its fdr() answers
        # the cut-off when something drifted, else the array of candidate cut-offs
        drifted = p_values < threshold if result["is_drift"] and threshold.ndim == 0 \
            else np.zeros(p_values.shape, bool)
        tests = ["chi2" if kind == CATEGORICAL else "ks" for kind in self.reference.kinds]
        return tests, np.asarray(result["distance"], float), p_values, drifted

    def _multivariate(self, batch: Array) -> dict[str, Any] | None:
        if self.mmd is None:
            return None
        result = self.mmd.predict(batch[:, self._numeric].astype(np.float32))["data"]
        return {"test": "mmd", "p_value": float(result["p_val"]),
                "statistic": float(result["distance"]), "drift": bool(result["is_drift"])}


def make_engine(name: str, reference: Reference, settings: BatchSettings) -> DriftEngine:
    if name == "alibi":
        return AlibiEngine(reference, settings)
    if name == "scipy":
        return ScipyEngine(reference, settings)
    raise ValueError(f"engine: expected 'alibi' or 'scipy', got {name!r}")


# -- online ---------------------------------------------------------------------------------


def _online_class(kind: str) -> Any:
    from alibi_detect.cd import CVMDriftOnline, FETDriftOnline

    base = CVMDriftOnline if kind == "cvm" else FETDriftOnline

    class Cached(base):  # type: ignore[misc, valid-type]
        """Thresholds from a file when it exists (calibration is the slow part of __init__)."""

        def __init__(self, *args: Any, thresholds_file: Path, **kwargs: Any) -> None:
            self._thresholds_file = thresholds_file
            super().__init__(*args, **kwargs)

        def _configure_thresholds(self) -> None:
            if self._thresholds_file.exists():
                self.thresholds = np.load(self._thresholds_file, allow_pickle=False)
                return
            super()._configure_thresholds()
            _atomic_save(self._thresholds_file, self.thresholds)

    return Cached


def _atomic_save(path: Path, array: Array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy.tmp")
    with os.fdopen(fd, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@dataclass
class OnlineDrift:
    """Online (per-row) drift detection on the numeric features (CVM) and the two-category
    features (FET) of a reference; other categorical features are left to the batch test."""

    reference: Reference
    settings: OnlineSettings
    cache_dir: Path
    detectors: dict[str, tuple[list[int], Any]] = field(default_factory=dict)
    t: int = 0
    detections: list[dict[str, Any]] = field(default_factory=list)

    def parts(self) -> dict[str, list[int]]:
        ref = self.reference
        numeric = [j for j, kind in enumerate(ref.kinds) if kind != CATEGORICAL]
        binary = [j for j, kind in enumerate(ref.kinds)
                  if kind == CATEGORICAL and len(ref.vocab[j]) == 2]
        return {name: cols for name, cols in (("cvm", numeric), ("fet", binary)) if cols}

    def thresholds_file(self, detector: str) -> Path:
        return self.cache_dir / f"{detector}-{self.settings.key(self.reference.hash, detector)}.npy"

    def calibrated(self) -> bool:
        return all(self.thresholds_file(d).exists() for d in self.parts())

    def build(self) -> None:
        """Construct the detectors; calibrates (slow) unless the thresholds are cached."""
        np.random.seed(self.settings.seed)
        for detector, columns in self.parts().items():
            x_ref = self.reference.data[:, columns]
            cls = _online_class(detector)
            kwargs = {"window_sizes": list(self.settings.window_sizes),
                      "n_bootstraps": self.settings.bootstraps(len(columns)), "verbose": False,
                      "thresholds_file": self.thresholds_file(detector)}
            if detector == "fet":
                x_ref = np.clip(x_ref, 0, 1)  # the 'unseen' code counts as the second category
                kwargs["alternative"] = "two-sided"
            self.detectors[detector] = (columns, cls(x_ref, ert=self.settings.ert, **kwargs))

    def observe(self, batch: Array) -> dict[str, Any]:
        """Feed rows one at a time; a detection is recorded and the stream restarts."""
        found = []
        for row in batch:
            self.t += 1
            for name, (columns, detector) in self.detectors.items():
                x = row[columns] if name == "cvm" else np.clip(row[columns], 0, 1)
                result = detector.predict(x, return_test_stat=True)["data"]
                if result["is_drift"]:
                    stat = np.nan_to_num(np.atleast_2d(np.asarray(result["test_stat"], float)),
                                         nan=-np.inf)
                    over = np.any(stat > np.asarray(result["threshold"], float), axis=0)
                    found.append({"t": self.t, "detector": name,
                                  "features": [self.reference.features[c]
                                               for c, hit in zip(columns, np.atleast_1d(over),
                                                                 strict=False) if hit],
                                  "run_rows": int(detector.t)})
                    detector.reset_state()
                _trim(detector)
        self.detections.extend(found)
        del self.detections[:-20]
        return {"rows_seen": self.t, "detections": found}


def _trim(detector: Any) -> None:
    """alibi-detect's online detectors append every row, statistic and prediction to arrays that
    are re-concatenated per row (memory and time grow with the stream); only the last window of
    rows and the last statistic are ever read, so keep just those."""
    keep = int(detector.max_ws)
    xs = getattr(detector, "xs", None)
    if isinstance(xs, np.ndarray) and xs.ndim == 2 and len(xs) > 2 * keep:
        detector.xs = xs[-keep:]
    if len(detector.test_stats) > 64:
        detector.test_stats = detector.test_stats[-1:]
        detector.drift_preds = detector.drift_preds[-1:]
