"""A run folder's files by name (whole runs that fill it: test_mnist.py, test_cifar10.py)."""

from __future__ import annotations

import csv
import json
import math

from experiments.run_folder import OUTPUT_FILES, RunFolder
from jaxnet.training import HISTORY_FIELDS


def test_a_folder_is_occupied_by_a_config_or_checkpoints(tmp_path):
    folder = RunFolder(tmp_path / "run")
    assert not folder.occupied
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    assert folder.occupied
    other = RunFolder(tmp_path / "other")
    other.write_config({"experiment": "mnist", "fit": {"seed": 3}})
    assert other.occupied
    assert other.config == {"experiment": "mnist", "fit": {"seed": 3}}
    assert json.loads((tmp_path / "other" / "config.json").read_text())["fit"]["seed"] == 3


def test_clear_removes_the_run_and_nothing_else(tmp_path):
    folder = RunFolder(tmp_path)
    for name in OUTPUT_FILES:
        (tmp_path / name).write_text("old")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "ckpt_00000010.npz").write_text("old")
    (tmp_path / "notes.txt").write_text("the user's own")
    folder.clear()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert not folder.occupied


def test_history_has_the_fixed_columns_then_the_others_in_first_seen_order(tmp_path):
    folder = RunFolder(tmp_path)
    base = dict.fromkeys(HISTORY_FIELDS, 1.0)
    rows = [
        {**base, "iteration": 10, "grad_norm/conv1": 0.5},
        {**base, "iteration": 20, "grad_norm/conv1": 0.25, "val_accuracy_averaged": math.nan},
    ]
    folder.write_history(rows)
    with open(tmp_path / "history.csv", newline="") as f:
        read = list(csv.DictReader(f))
    assert list(read[0]) == [*HISTORY_FIELDS, "grad_norm/conv1", "val_accuracy_averaged"]
    assert [r["iteration"] for r in read] == ["10", "20"]
    assert read[0]["val_accuracy_averaged"] == "" and read[1]["val_accuracy_averaged"] == "nan"
