from __future__ import annotations

import re

import pytest

from tfwarden.core.errors import CaptureError
from tfwarden.serving.tfserving.rows import (
    InputSpec,
    flatten_prediction,
    rows_from_predict_body,
    rows_from_samples,
    rows_to_instances,
)

VECTOR = [InputSpec("x", 1, (-1, 3))]
NAMED = [InputSpec("age", 9, (-1,)), InputSpec("name", 7, (-1,))]


def test_row_and_columnar_bodies_become_feature_rows() -> None:
    assert rows_from_predict_body({"instances": [[1, 2, 3], [4.5, 5, 6]]}, VECTOR) == [
        [1.0, 2.0, 3.0], [4.5, 5.0, 6.0]]
    assert rows_from_predict_body({"inputs": [[1, 2, 3]]}, VECTOR) == [[1.0, 2.0, 3.0]]
    assert rows_from_predict_body({"instances": [{"age": 7, "name": {"b64": "Ym9i"}}]}, NAMED) == [
        [7.0, "bob"]]
    assert rows_from_predict_body({"inputs": {"age": [1, 2], "name": ["a", "b"]}}, NAMED) == [
        [1.0, "a"], [2.0, "b"]]
    assert VECTOR[0].feature_names() == ["x[0]", "x[1]", "x[2]"]
    assert [n for s in NAMED for n in s.feature_names()] == ["age", "name"]


@pytest.mark.parametrize("body,message", [
    ({"instances": [[1, 2]]}, "instances[0]: shape [2] does not fit the signature's [-1, 3]"),
    ({"instances": [[1, "a", 3]]}, "instances[0][1]: expected a number (float), got 'a'"),
    ({"instances": []}, "instances: expected a non-empty list"),
    ({"instances": [[1, 2, 3]], "inputs": [[1, 2, 3]]}, "exactly one of"),
    ({"instances": [[1, 2, 3], [1, [2], 3]]}, "ragged"),
    ([1, 2], "expected a JSON object"),
])
def test_bad_bodies_name_the_problem(body: object, message: str) -> None:
    with pytest.raises(CaptureError, match=re.escape(message)):
        rows_from_predict_body(body, VECTOR)


def test_named_inputs_must_match() -> None:
    with pytest.raises(CaptureError, match="do not match the signature"):
        rows_from_predict_body({"instances": [{"age": 1}]}, NAMED)
    with pytest.raises(CaptureError, match="batch sizes differ"):
        rows_from_predict_body({"inputs": {"age": [1, 2], "name": ["a"]}}, NAMED)


def test_samples_batches_check_feature_names_and_widths() -> None:
    rows, version = rows_from_samples({"version": 3, "features": ["x[0]", "x[1]", "x[2]"],
                                       "rows": [[1, 2, 3]]}, VECTOR)
    assert rows == [[1.0, 2.0, 3.0]] and version == 3
    with pytest.raises(CaptureError, match="features: expected"):
        rows_from_samples({"features": ["a"], "rows": [[1]]}, VECTOR)
    with pytest.raises(CaptureError, match=r"rows\[1\]: expected 3 values"):
        rows_from_samples({"rows": [[1, 2, 3], [1]]}, VECTOR)


def test_rows_to_instances_inverts_rows_from_predict_body() -> None:
    specs = [InputSpec("a", 1, (-1, 2)), InputSpec("b", 7, (-1,))]
    body = {"instances": [{"a": [1.0, 2.0], "b": "x"}, {"a": [3.0, 4.0], "b": "y"}]}
    rows = rows_from_predict_body(body, specs)
    assert rows_to_instances(rows, specs) == body["instances"]
    single = [InputSpec("x", 1, (-1, 1))]
    assert rows_to_instances([[1.5], [2.5]], single) == [[1.5], [2.5]]


def test_flatten_prediction() -> None:
    assert flatten_prediction(2.5) == (["output"], [2.5])
    assert flatten_prediction([0.1, 0.9]) == (["output[0]", "output[1]"], [0.1, 0.9])
    assert flatten_prediction({"scores": [0.2, 0.8], "label": "cat"}) == (
        ["label", "scores[0]", "scores[1]"], ["cat", 0.2, 0.8])
