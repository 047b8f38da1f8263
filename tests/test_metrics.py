"""Tests for jaxnet.metrics on hand-computed examples."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from jaxnet import metrics
from jaxnet.metrics import (
    accuracy,
    confusion_matrix,
    per_class_table,
    precision_recall,
)

# Three classes, eight samples. Class 2 is never predicted; by hand (rows = true, cols = pred):
#   true 0: pred 0, 0, 1        -> [2, 1, 0]
#   true 1: pred 1, 1, 0        -> [1, 2, 0]
#   true 2: pred 0, 1           -> [1, 1, 0]
LABELS = [0, 0, 0, 1, 1, 1, 2, 2]
PREDS = [0, 0, 1, 1, 1, 0, 0, 1]
CONF = np.array([[2, 1, 0], [1, 2, 0], [1, 1, 0]])


def test_confusion_matrix_hand_example():
    c = confusion_matrix(np.array(LABELS), np.array(PREDS), 3)
    assert c.dtype == np.int64
    np.testing.assert_array_equal(c, CONF)
    assert c.sum() == len(LABELS)


def test_confusion_matrix_rows_are_true_columns_predicted():
    c = confusion_matrix([0], [2], 3)  # one sample of class 0 predicted as 2
    assert c[0, 2] == 1 and c.sum() == 1


def test_confusion_matrix_accepts_lists_and_other_int_dtypes():
    c = confusion_matrix(np.array(LABELS, np.uint8), np.array(PREDS, np.int32), 3)
    np.testing.assert_array_equal(c, CONF)


def test_confusion_matrix_empty_and_one_class():
    np.testing.assert_array_equal(confusion_matrix([], [], 4), np.zeros((4, 4), np.int64))
    np.testing.assert_array_equal(confusion_matrix([0, 0], [0, 0], 1), [[2]])


@pytest.mark.parametrize(
    ("labels", "preds", "k", "match"),
    [
        ([0, 1], [0], 2, "same length"),
        ([[0, 1]], [[0, 1]], 2, "labels must be 1-d"),
        ([0, 1], [[0, 1]], 2, "predictions must be 1-d"),
        (
            [0, 3],
            [0, 1],
            3,
            r"labels: 3 at index 1 is outside 0..2 \(1 out of range\) for num_classes=3",
        ),
        ([0, 1], [-1, 1], 3, r"predictions: -1 at index 0 is outside"),
        ([0], [0], 0, "at least 1"),
    ],
)
def test_confusion_matrix_value_errors(labels, preds, k, match):
    with pytest.raises(ValueError, match=match):
        confusion_matrix(labels, preds, k)


@pytest.mark.parametrize(
    ("labels", "preds", "k"),
    [([0.0, 1.0], [0, 1], 2), ([0, 1], [True, False], 2), ([0], [0], 2.0), ([0], [0], True)],
)
def test_confusion_matrix_type_errors(labels, preds, k):
    with pytest.raises(TypeError):
        confusion_matrix(labels, preds, k)


def test_precision_recall_hand_example_with_class_never_predicted():
    precision, recall = precision_recall(CONF)
    # precision = TP / column sum: 2/4, 2/4, 0/0 (class 2 never predicted)
    np.testing.assert_allclose(precision[:2], [0.5, 0.5])
    assert math.isnan(precision[2])
    # recall = TP / row sum: 2/3, 2/3, 0/2
    np.testing.assert_allclose(recall, [2 / 3, 2 / 3, 0.0])
    assert precision.dtype == recall.dtype == np.float64


def test_precision_recall_class_absent_from_labels():
    # class 1 never occurs in the labels but is predicted once (a false positive)
    c = confusion_matrix([0, 0, 2, 2], [0, 1, 2, 2], 3)
    np.testing.assert_array_equal(c, [[1, 1, 0], [0, 0, 0], [0, 0, 2]])
    precision, recall = precision_recall(c)
    np.testing.assert_allclose(precision, [1.0, 0.0, 1.0])  # class 1: 0 of 1 prediction right
    np.testing.assert_allclose(recall[[0, 2]], [0.5, 1.0])
    assert math.isnan(recall[1])


def test_precision_recall_are_not_swapped():
    # asymmetric: class 0 predicted for everything
    precision, recall = precision_recall([[5, 0], [5, 0]])
    assert precision[0] == 0.5 and recall[0] == 1.0
    assert math.isnan(precision[1]) and recall[1] == 0.0


def test_accuracy():
    assert accuracy(CONF) == pytest.approx(4 / 8)
    assert isinstance(accuracy(CONF), float)
    assert math.isnan(accuracy(np.zeros((3, 3), np.int64)))


@pytest.mark.parametrize(
    ("bad", "err"),
    [
        (np.zeros((2, 3)), ValueError),
        (np.zeros(3), ValueError),
        (np.zeros((0, 0)), ValueError),
        (np.array([[1, -1], [0, 1]]), ValueError),
        (np.array([[1.0, np.nan], [0, 1]]), ValueError),
        (np.array([["a", "b"], ["c", "d"]]), TypeError),
    ],
)
def test_confusion_validation(bad, err):
    with pytest.raises(err):
        precision_recall(bad)
    with pytest.raises(err):
        accuracy(bad)


def _table_rows(table: str) -> list[list[str]]:
    lines = [line for line in table.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_per_class_table_hand_example():
    table = per_class_table(CONF, ["zero", "one", "two"])
    rows = _table_rows(table)
    assert rows[0] == ["Class", "Precision", "Recall", "Support"]
    assert rows[2] == ["zero", "0.500", "0.667", "3"]
    assert rows[3] == ["one", "0.500", "0.667", "3"]
    assert rows[4] == ["two", "n/a", "0.000", "2"]
    # macro precision over the defined classes: (0.5 + 0.5) / 2; macro recall (2/3+2/3+0) / 3
    assert rows[5] == [
        "**macro average** (accuracy 0.500)",
        "**0.500**",
        "**0.444**",
        "**8**",
    ]
    assert "never predicted (two)" in table
    assert table.endswith("\n")


def test_per_class_table_macro_recall_equals_accuracy_when_balanced():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 50)
    preds = np.where(rng.random(500) < 0.7, labels, rng.integers(0, 10, 500))
    c = confusion_matrix(labels, preds, 10)
    _, recall = precision_recall(c)
    assert np.nanmean(recall) == pytest.approx(accuracy(c))
    rows = _table_rows(per_class_table(c, [f"c{i}" for i in range(10)], digits=4))
    assert len(rows) == 2 + 10 + 1
    last = rows[-1]
    assert last[0] == f"**macro average** (accuracy {accuracy(c):.4f})"
    assert last[2] == f"**{accuracy(c):.4f}**"
    assert last[3] == "**500**"
    assert "Note" not in per_class_table(c, [f"c{i}" for i in range(10)])


def test_per_class_table_absent_class_and_escaping():
    c = confusion_matrix([0, 0, 2, 2], [0, 1, 2, 2], 3)
    table = per_class_table(c, ["a|b", "ghost", "c"])
    rows = table.splitlines()
    assert rows[2].startswith("| a\\|b |")
    assert "| ghost | 0.000 | n/a | 0 |" in table
    assert "absent from the labels (ghost)" in table
    # macro precision (1 + 0 + 1) / 3, macro recall (0.5 + 1) / 2
    assert "| **0.667** | **0.750** | **4** |" in table


def test_per_class_table_validates_names():
    with pytest.raises(ValueError, match="2 names for a 3x3"):
        per_class_table(CONF, ["a", "b"])
    with pytest.raises(TypeError):
        per_class_table(CONF, "abc")


def test_summary_is_strict_json():
    s = metrics.summary(CONF, ["zero", "one", "two"])
    text = json.dumps(s, allow_nan=False)
    back = json.loads(text)
    assert back["per_class"]["two"] == {"precision": None, "recall": 0.0, "support": 2}
    assert back["accuracy"] == 0.5
    assert back["macro_precision"] == 0.5
    assert back["macro_recall"] == pytest.approx(4 / 9)
    assert back["confusion_matrix"] == CONF.tolist()
