"""The CIFAR-10 command end to end on a small set in the real binary format."""

from __future__ import annotations

import json

import numpy as np
import pytest
from run_helpers import make_cifar_dir

from experiments import cifar10

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("arch", "preset"), [("modified", "best"), ("baseline", "seed")])
def test_smoke_writes_every_output(tmp_path, arch, preset):
    root = make_cifar_dir(tmp_path / "data")
    out = tmp_path / "run"
    args = [
        "--arch",
        arch,
        "--preset",
        preset,
        "--data-dir",
        str(root),
        "--no-verify",
        "--out",
        str(out),
        "--iterations",
        "12",
        "--batch-size",
        "8",
        "--val-size",
        "20",
        "--log-every",
        "4",
        "--eval-every",
        "8",
        "--no-progress",
    ]
    assert cifar10.run(args) == 0
    for name in ("kernels.png", "misclassified.png", "confusion_matrix.png", "learning_curves.png"):
        assert (out / name).read_bytes().startswith(PNG), name
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == f"cifar10_{arch}"
    metrics = json.loads((out / "metrics.json").read_text())
    assert np.asarray(metrics["confusion_matrix"]).sum() == 40
    assert metrics["class_names"][0] == "airplane"
    with np.load(out / "params.npz") as params:
        assert params[next(k for k in params.files if "conv1" in k and "w" in k)].shape[2] == 3
    table = (out / "parameters.md").read_text()
    assert ("5*5*3*16 + 16 = 1216" in table) and ("**total**" in table)


def test_unknown_architecture_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cifar10.run(["--arch", "resnet", "--out", str(tmp_path / "r")])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_every_preset_builds_a_valid_config():
    import argparse

    from experiments import mnist
    from experiments.command import build_parser, fit_config

    experiments = [mnist.EXPERIMENT] + [cifar10.experiment(a) for a in cifar10.PRESETS]
    for exp in experiments:
        for name in exp.presets:
            args = build_parser(exp, "prog", "").parse_args(["--preset", name])
            assert isinstance(args, argparse.Namespace)
            config = fit_config(exp, args, n_train=48000)
            config.check_data(48000)
            assert config.iterations >= 1000, (exp.name, name)
