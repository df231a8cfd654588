"""PredictionLog TFRecord files written by TensorFlow's own TFRecordWriter (tests/testdata)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import TESTDATA
from tfwarden.core.errors import PredictionLogError
from tfwarden.serving.tfserving.predictionlog import read_rows, read_tfrecords

LOGS = TESTDATA / "predictionlog"


def test_predict_logs_in_tensor_content_and_float_val_form() -> None:
    features, rows = read_rows(LOGS / "predict.tfrecord", 1000)
    rng = np.random.default_rng(7)  # the generator that wrote the file
    expected = np.concatenate([rng.normal(size=(4, 1)).astype(np.float32) for _ in range(5)])
    assert features == ["x"]
    assert rows[:20] == expected.tolist() and rows[20:] == [[1.0], [2.0]]
    assert read_rows(LOGS / "predict.tfrecord", 3)[1] == expected[:3].tolist()


def test_classify_logs_read_examples() -> None:
    assert read_rows(LOGS / "classify.tfrecord", 10) == (
        ["color", "size"], [["red", 1.5], ["blue", 2.5], ["red", 0.5]])


def test_a_directory_reads_every_file_and_refuses_mixed_inputs(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes((LOGS / "predict.tfrecord").read_bytes())
    (tmp_path / "b").write_bytes((LOGS / "predict.tfrecord").read_bytes())
    assert len(read_rows(tmp_path, 1000)[1]) == 44
    (tmp_path / "c").write_bytes((LOGS / "classify.tfrecord").read_bytes())
    with pytest.raises(PredictionLogError, match="entries log different inputs"):
        read_rows(tmp_path, 1000)


def test_corruption_is_detected_by_the_checksums(tmp_path: Path) -> None:
    data = bytearray((LOGS / "predict.tfrecord").read_bytes())
    data[30] ^= 0xFF
    (tmp_path / "bad").write_bytes(bytes(data))
    with pytest.raises(PredictionLogError, match="record 0: corrupt data"):
        list(read_tfrecords(tmp_path / "bad"))
    (tmp_path / "text").write_text("not a tfrecord file at all")
    with pytest.raises(PredictionLogError, match="corrupt length"):
        list(read_tfrecords(tmp_path / "text"))
    (tmp_path / "short").write_bytes(bytes((LOGS / "predict.tfrecord").read_bytes()[:40]))
    with pytest.raises(PredictionLogError, match="truncated data"):
        list(read_tfrecords(tmp_path / "short"))
