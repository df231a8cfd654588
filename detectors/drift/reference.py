"""Reference data for drift checks: feature rows, kinds, category vocabularies, content hash.

Rows arrive as lists of floats and strings (``serving.tfserving.rows`` order). Numeric features stay
floats; categorical features are encoded as codes into the reference's sorted vocabulary, with
one extra code for values the reference never saw. The content hash covers the feature names,
kinds and the encoded rows, so a reference and every calibration made from it are versioned by
what they contain, not by where they came from.
"""

from __future__ import annotations

import csv
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tfwarden.core.errors import ReferenceError

NUMERIC, CATEGORICAL = "numeric", "categorical"

Array = NDArray[Any]


@dataclass
class Reference:
    features: list[str]
    kinds: list[str]
    data: Array  # (n, d) float64; categorical columns hold codes
    vocab: dict[int, list[str]] = field(default_factory=dict)  # column -> sorted categories
    source: str = ""

    @property
    def rows(self) -> int:
        return int(self.data.shape[0])

    @property
    def hash(self) -> str:
        digest = hashlib.sha256()
        digest.update(repr((self.features, self.kinds, sorted(self.vocab.items()))).encode())
        digest.update(np.ascontiguousarray(self.data, dtype="<f8").tobytes())
        return digest.hexdigest()[:16]

    def categories(self, column: int) -> int:
        """Number of codes of a categorical column, the 'unseen' code included."""
        return len(self.vocab[column]) + 1

    def encode(self, rows: Sequence[Sequence[float | str]], where: str = "rows") -> Array:
        """Encode live rows like the reference (unseen categories get the extra code)."""
        width = len(self.features)
        out = np.empty((len(rows), width), dtype=np.float64)
        lookups = {c: {v: i for i, v in enumerate(values)} for c, values in self.vocab.items()}
        for i, row in enumerate(rows):
            if len(row) != width:
                raise ReferenceError(f"{where}[{i}]: expected {width} values, got {len(row)}")
            for j, value in enumerate(row):
                if j in lookups:
                    out[i, j] = lookups[j].get(_category(value), len(lookups[j]))
                else:
                    out[i, j] = _number(value, f"{where}[{i}][{j}] ({self.features[j]})")
        return out

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[float | str]], features: Sequence[str],
                  kinds: Sequence[str] | None = None, source: str = "") -> Reference:
        if not rows:
            raise ReferenceError(f"{source or 'reference'}: no rows")
        features = list(features)
        if kinds is None:
            kinds = [CATEGORICAL if isinstance(rows[0][j], str) else NUMERIC
                     for j in range(len(features))]
        kinds = list(kinds)
        if len(kinds) != len(features):
            raise ReferenceError(f"{source}: {len(kinds)} kinds for {len(features)} features")
        vocab = {j: sorted({_category(row[j]) for row in rows})
                 for j, kind in enumerate(kinds) if kind == CATEGORICAL}
        reference = cls(features, kinds, np.empty((0, len(features))), vocab, source)
        reference.data = reference.encode(rows, where=source or "reference")
        return reference


def _category(value: float | str) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _number(value: float | str, where: str) -> float:
    if isinstance(value, str):
        raise ReferenceError(f"{where}: expected a number for a numeric feature, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ReferenceError(f"{where}: {number} is not a finite number")
    return number


LoggedRows = Callable[[Path, int], tuple[list[str], list[list[float | str]]]]


def load_reference_file(path: Path, features: Sequence[str], kinds: Sequence[str] | None,
                        limit: int = 100_000, read_logged: LoggedRows | None = None) -> Reference:
    """A reference from ``.npz`` / ``.npy`` (2-D), CSV (header row) or, through ``read_logged``,
    PredictionLog TFRecord files (any other name; a directory reads all its files)."""
    suffix = path.suffix
    if not path.exists():
        raise ReferenceError(f"{path}: no such file")
    if path.is_dir() and read_logged is None:
        raise ReferenceError(f"{path}: a directory (PredictionLog files) cannot be read here")
    if suffix in (".npy", ".npz"):
        loaded = np.load(path, allow_pickle=False)
        if suffix == ".npz":
            names = list(loaded.files)
            if len(names) != 1:
                raise ReferenceError(f"{path}: expected one array in the .npz, found {names}")
            array = loaded[names[0]]
        else:
            array = loaded
        if array.ndim == 1:
            array = array.reshape(-1, 1)
        if array.ndim != 2 or array.shape[1] != len(features):
            raise ReferenceError(f"{path}: expected shape (rows, {len(features)}) for features "
                                 f"{list(features)}, got {tuple(array.shape)}")
        rows = array[:limit].tolist()
    elif suffix == ".csv":
        with path.open(newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header != list(features):
                raise ReferenceError(f"{path}: header {header} does not match the features "
                                     f"{list(features)}")
            rows = []
            for line, record in enumerate(reader, start=2):
                if len(rows) >= limit:
                    break
                if len(record) != len(features):
                    raise ReferenceError(f"{path}:{line}: expected {len(features)} values")
                rows.append([_csv_value(v) for v in record])
    elif read_logged is not None:
        try:
            got_features, rows = read_logged(path, limit)
        except ValueError as exc:  # the reader's own error (bad checksum, unknown entry...)
            raise ReferenceError(str(exc)) from None
        if got_features != list(features):
            raise ReferenceError(f"{path}: logged inputs {got_features} do not match the "
                                 f"features {list(features)}")
    else:
        raise ReferenceError(f"{path}: unknown reference format (expected .npz, .npy, .csv or "
                             f"a PredictionLog TFRecord file)")
    return Reference.from_rows(rows, features, kinds, source=str(path))


def _csv_value(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text
