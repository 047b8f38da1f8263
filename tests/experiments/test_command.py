"""The experiment CLI: one flag per FitConfig field, its help from the field's documentation."""

from __future__ import annotations

import dataclasses
import re

import pytest

from experiments import mnist
from experiments.command import build_parser, fit_config
from jaxnet.training import FitConfig


def parser():
    return build_parser(mnist.EXPERIMENT, "prog", "")


def test_every_field_is_a_flag_documented_by_the_field():
    text = " ".join(parser().format_help().split())
    for f in dataclasses.fields(FitConfig):
        assert f"--{f.name.replace('_', '-')}" in text, f.name
        assert " ".join(f.metadata["help"].split()[:4]) in text, f.name
        assert f.metadata["help"] in FitConfig.__doc__, f.name  # the API reference's words


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], {"batch_size": 64, "learning_rate": 0.2, "schedule": "cosine", "augment": True}),
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


ACCURACY_OPTIONS = {
    "cutout": 0,
    "label_smoothing": 0.0,
    "weight_average": 0.0,
    "flip_test": False,
    "nesterov": False,
}


@pytest.mark.parametrize("name", ["mnist", "cifar10_baseline", "cifar10_modified"])
def test_the_seed_presets_train_as_the_seed_did(name):
    # None of the accuracy options is on in --preset seed: its reproductions stay as they were.
    from experiments import cifar10

    exp = mnist.EXPERIMENT if name == "mnist" else cifar10.experiment(name.split("_")[1])
    args = build_parser(exp, "prog", "").parse_args(["--preset", "seed"])
    config = fit_config(exp, args, n_train=48000)
    assert {k: getattr(config, k) for k in ACCURACY_OPTIONS} == ACCURACY_OPTIONS
    assert config.momentum == exp.presets["seed"].fit["momentum"]


def test_each_accuracy_option_is_a_flag():
    flags = "--cutout 8 --label-smoothing 0.1 --weight-average 0.999 --flip-test --nesterov"
    args = parser().parse_args(flags.split())
    config = fit_config(mnist.EXPERIMENT, args, n_train=6400)
    assert (config.cutout, config.label_smoothing, config.weight_average) == (8, 0.1, 0.999)
    assert config.flip_test and config.nesterov


def test_a_presets_description_is_the_flags_that_give_it():
    from experiments import cifar10

    assert mnist.PRESETS["best"].description == (
        "--batch-size 64 --learning-rate 0.2 --momentum 0.9 --weight-decay 0.0005 --schedule "
        "cosine --warmup 200 --augment --crop-pad 2 --no-flip --eval-every 1000 --epochs 24"
    )
    seed = cifar10.PRESETS["baseline"]["seed"].description
    assert "--pixel-scale 1 --conv-init-gain 0.1 --iterations 5000" in seed
    assert seed.endswith("on the first 20000 training images")
    # Each flag the description names parses to the preset's own value.
    preset = cifar10.PRESETS["modified"]["long"]
    words = preset.description.split()
    args = build_parser(cifar10.experiment("modified"), "prog", "").parse_args(words)
    for name, value in preset.fit.items():
        assert getattr(args, name) == value, name
    assert args.epochs == preset.epochs


def test_each_preset_has_its_own_default_folder():
    from pathlib import Path

    from experiments import cifar10
    from experiments.command import default_out

    assert default_out(mnist.EXPERIMENT, "best") == Path("runs/mnist")
    assert default_out(mnist.EXPERIMENT, "seed") == Path("runs/mnist_seed")
    long = default_out(cifar10.experiment("modified"), "long")
    assert long == Path("runs/cifar10_modified_long")
    assert parser().parse_args([]).out is None  # main fills it in from the preset
