"""Classification metrics in plain NumPy: confusion matrix, precision and recall, the per-class
table, and their JSON summary.

Conventions:

- The confusion matrix ``C`` is ``(K, K)`` int64 with **rows = true class, columns = predicted
  class**: ``C[i, j]`` counts the samples of class ``i`` predicted as ``j``.
- precision of class ``k`` = ``C[k, k] / C[:, k].sum()`` (true positives over everything predicted
  as ``k``); recall of class ``k`` = ``C[k, k] / C[k, :].sum()`` (true positives over everything
  that actually is ``k``, its *support*).
- ``0 / 0`` is NaN, never 0: a class never predicted has NaN precision, a class absent from the
  labels has NaN recall. The Markdown table prints NaN as ``n/a``; macro averages are taken over the
  classes where the value is defined (``np.nanmean``), and the table says so when any is missing.
- On a balanced test set the macro-averaged recall equals the accuracy; a table whose recalls
  average far from its accuracy (the seed's Table 4) has been miscomputed.

Nothing here imports JAX: pass ``np.asarray(jax_array)`` or the array itself (NumPy converts it).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxnet._validate import out_of_range

__all__ = [
    "accuracy",
    "confusion_matrix",
    "per_class_table",
    "precision_recall",
    "summary",
]


def _check_int_vector(name: str, x: Any) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-d (N,), got shape {arr.shape}")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        if arr.size == 0 and arr.dtype != np.bool_:
            return arr.astype(np.int64)  # np.asarray([]) is float64; an empty list is fine
        raise TypeError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def confusion_matrix(labels: Any, predictions: Any, num_classes: int) -> np.ndarray:
    """Count (true class, predicted class) pairs.

    Args:
        labels: int ``(N,)``, the true classes, each in ``[0, num_classes)``.
        predictions: int ``(N,)``, the predicted classes, each in ``[0, num_classes)``.
        num_classes: ``K >= 1``.

    Returns:
        int64 ``(K, K)``, rows = true class, columns = predicted; sums to ``N`` (zeros for none).

    Raises:
        TypeError: ``num_classes`` or a class is not an integer.
        ValueError: a shape other than these, ``num_classes < 1``, or a class outside
            ``[0, num_classes)`` (the message names the first such index and value).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise TypeError(f"num_classes must be an int, got {num_classes!r}")
    k = int(num_classes)
    if k < 1:
        raise ValueError(f"num_classes must be at least 1, got {k}")
    y = _check_int_vector("labels", labels)
    p = _check_int_vector("predictions", predictions)
    if y.shape != p.shape:
        raise ValueError(
            f"labels and predictions must have the same length, got {y.shape[0]} labels and "
            f"{p.shape[0]} predictions"
        )
    for name, arr in (("labels", y), ("predictions", p)):
        if wrong := out_of_range(arr, k):
            raise ValueError(f"{name}: {wrong} for num_classes={k}")
    counts = np.bincount(y * k + p, minlength=k * k)
    return counts.reshape(k, k).astype(np.int64)


def _check_confusion(confusion: Any) -> np.ndarray:
    c = np.asarray(confusion)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] == 0:
        raise ValueError(f"confusion must be a square (K, K) matrix with K >= 1, got {c.shape}")
    if c.dtype == np.bool_ or not np.issubdtype(c.dtype, np.number):
        raise TypeError(f"confusion must hold counts (a numeric dtype), got dtype {c.dtype}")
    if np.iscomplexobj(c):
        raise TypeError(f"confusion must hold real counts, got dtype {c.dtype}")
    if not np.all(np.isfinite(c)) or np.any(c < 0):
        raise ValueError("confusion must hold finite, non-negative counts")
    return c


def precision_recall(confusion: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-class precision and recall of a ``(K, K)`` confusion matrix (rows = true class).

    Returns:
        ``(precision, recall)``, each float64 ``(K,)``, NaN where ``0 / 0`` (module docstring).

    Raises:
        ValueError: ``confusion`` is not square ``(K, K)`` with ``K >= 1``, or holds a negative
            or non-finite entry.
        TypeError: ``confusion`` is not numeric.
    """
    c = _check_confusion(confusion).astype(np.float64)
    tp = np.diag(c)
    predicted = c.sum(axis=0)
    actual = c.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, np.nan)
        recall = np.where(actual > 0, tp / actual, np.nan)
    return precision, recall


def accuracy(confusion: Any) -> float:
    """Overall accuracy of a confusion matrix: ``C.trace() / C.sum()`` as a Python float; NaN
    for an all-zero matrix (no samples).

    Raises:
        ValueError, TypeError: as :func:`precision_recall`.
    """
    c = _check_confusion(confusion).astype(np.float64)
    total = c.sum()
    return float(np.trace(c) / total) if total > 0 else math.nan


def _nanmean(x: np.ndarray) -> float:
    finite = x[~np.isnan(x)]
    return float(finite.mean()) if finite.size else math.nan


def _per_class(
    confusion: Any, class_names: Sequence[str]
) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray, np.ndarray]:
    """The checked matrix and names, and per class precision, recall and support."""
    c = _check_confusion(confusion)
    precision, recall = precision_recall(c)
    return c, _check_names(class_names, c.shape[0]), precision, recall, c.sum(axis=1)


def _check_names(class_names: Sequence[str], k: int) -> list[str]:
    if isinstance(class_names, str):
        raise TypeError("class_names must be a sequence of K strings, got a single string")
    names = [str(n) for n in class_names]
    if len(names) != k:
        raise ValueError(
            f"class_names must have one name per class: got {len(names)} names for a "
            f"{k}x{k} confusion matrix"
        )
    return names


def _fmt(x: float, digits: int) -> str:
    return "n/a" if math.isnan(x) else f"{x:.{digits}f}"


def _count(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{float(x):g}"


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def per_class_table(confusion: Any, class_names: Sequence[str], digits: int = 3) -> str:
    """The report's per-class precision and recall table (Tables 2 and 4) in Markdown.

    Columns: class, precision, recall, support (how many test samples are of that class). One row
    per class, then a bold final row: the macro averages of precision and recall (unweighted mean
    over classes, NaN classes left out), the total support, and the overall accuracy in the class
    cell. ``0 / 0`` prints as ``n/a``; when any value is ``n/a`` a note under the table says which
    classes the averages leave out.

    Example (``digits=3``)::

        | Class | Precision | Recall | Support |
        |---|---:|---:|---:|
        | cat | 0.500 | 1.000 | 1 |
        | dog | 1.000 | 0.500 | 2 |
        | **macro average** (accuracy 0.667) | **0.750** | **0.750** | **3** |

    Args:
        confusion: ``(K, K)`` counts, rows = true class, columns = predicted class.
        class_names: ``K`` names, in class-index order. ``|`` in a name is escaped.
        digits: decimals printed for precision, recall and accuracy (fractions in [0, 1]).

    Raises:
        ValueError, TypeError: as :func:`precision_recall`, or ``class_names`` is not ``K``
            names (a single string is not).
    """
    c, names, precision, recall, support = _per_class(confusion, class_names)
    lines = ["| Class | Precision | Recall | Support |", "|---|---:|---:|---:|"]
    for name, p, r, s in zip(names, precision, recall, support, strict=True):
        lines.append(
            f"| {_md_escape(name)} | {_fmt(p, digits)} | {_fmt(r, digits)} | {_count(s)} |"
        )
    acc, mp, mr = accuracy(c), _nanmean(precision), _nanmean(recall)
    lines.append(
        f"| **macro average** (accuracy {_fmt(acc, digits)}) | **{_fmt(mp, digits)}**"
        f" | **{_fmt(mr, digits)}** | **{_count(support.sum())}** |"
    )
    notes = []
    for value, values, which in (
        ("precision", precision, "never predicted"),
        ("recall", recall, "absent from the labels"),
    ):
        if missing := [n for n, v in zip(names, values, strict=True) if math.isnan(v)]:
            notes.append(f"{value} is n/a (0/0) for the classes {which} ({', '.join(missing)})")
    if notes:
        notes.append("each macro average is over the classes where its value is defined.")
        lines += ["", "Note: " + "; ".join(notes)]
    return "\n".join(lines) + "\n"


def summary(confusion: Any, class_names: Sequence[str]) -> dict[str, Any]:
    """Every metric of a confusion matrix as a JSON-ready dict (for ``metrics.json``).

    NaN (``0 / 0``) becomes ``None``, so ``json.dumps(..., allow_nan=False)`` accepts the result.

    Returns:
        A dict with the keys ``"accuracy"``, ``"macro_precision"``, ``"macro_recall"`` (floats),
        ``"per_class"`` (``{name: {"precision", "recall", "support"}}``) and
        ``"confusion_matrix"`` (``K`` lists of ``K`` ints, rows = true class); precision, recall
        and accuracy values are floats or ``None``.

    Raises:
        ValueError, TypeError: as :func:`per_class_table`.
    """
    c, names, precision, recall, support = _per_class(confusion, class_names)
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be distinct, got {names}")

    def clean(x: float) -> float | None:
        return None if math.isnan(x) else float(x)

    return {
        "accuracy": clean(accuracy(c)),
        "macro_precision": clean(_nanmean(precision)),
        "macro_recall": clean(_nanmean(recall)),
        "per_class": {
            name: {"precision": clean(p), "recall": clean(r), "support": int(s)}
            for name, p, r, s in zip(names, precision, recall, support, strict=True)
        },
        "confusion_matrix": [[int(v) for v in row] for row in c],
    }
