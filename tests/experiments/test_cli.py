"""The experiment CLI: one flag per FitConfig field, its help from the field's documentation."""

from __future__ import annotations

import dataclasses
import re

import pytest

from experiments import mnist
from experiments.cli import build_parser, field_docs, fit_config
from jaxnet.training import FitConfig


def parser():
    return build_parser(mnist.EXPERIMENT, "prog", "")


def test_every_field_is_a_flag_documented_by_the_field():
    docs = field_docs(FitConfig)
    assert set(docs) == {f.name for f in dataclasses.fields(FitConfig)}
    text = parser().format_help().replace("\n", " ")
    for f in dataclasses.fields(FitConfig):
        assert f"--{f.name.replace('_', '-')}" in text, f.name
    assert " ".join(docs["weight_decay"].split()[:4]) in " ".join(text.split())


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], {"batch_size": 64, "learning_rate": 0.1, "schedule": "cosine", "augment": True}),
        (["--preset", "seed"], {"batch_size": 16, "iterations": 3000, "schedule": "constant"}),
        (["--preset", "seed", "--batch-size", "32", "--schedule", "cosine"],
         {"batch_size": 32, "schedule": "cosine", "iterations": 3000}),
        (["--no-augment", "--epochs", "2", "--warmup", "5"],
         {"augment": False, "iterations": 2 * (6400 // 64), "warmup": 5}),
        (["--iterations", "50"], {"iterations": 50, "warmup": 49}),  # the preset's, cut to fit
        (["--seed", "3", "--rules", "autodiff"], {"seed": 3, "rules": "autodiff"}),
    ],
)  # fmt: skip
def test_preset_then_the_flags_given(flags, expected):
    config = fit_config(mnist.EXPERIMENT, parser().parse_args(flags), n_train=6400)
    assert {k: getattr(config, k) for k in expected} == expected


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ema-decay", "1.5"], r"ema-decay must be in \(0, 1\)"),
        (["--crop-pad", "-2"], "crop-pad must be an integer >= 0"),
        (["--eval-batch-size", "x"], "eval-batch-size must be a number"),
        (["--epochs", "0"], "epochs must be positive"),
        (["--devices", "0"], "devices must be a positive integer"),
        (["--epochs", "1", "--iterations", "5"], "not allowed with argument"),
    ],
)
def test_a_bad_flag_exits_2_with_the_configs_message(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args(flags)
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)
