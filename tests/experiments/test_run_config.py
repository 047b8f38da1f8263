"""config.json written and read back (the bad values predict, explain and --resume refuse are in
test_predict.py and test_long_runs.py, run as a user runs them)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from experiments.run_config import ConfigError, RunConfig
from jaxnet.io import write_json
from jaxnet.training import FitConfig

CONFIG = RunConfig(
    experiment="mnist_pics",
    architecture="mnist",
    preset="seed",
    fit=FitConfig(iterations=30, batch_size=8, learning_rate=0.1, flip_test=True),
    val_size=100,
    train_limit=1000,
    class_names=tuple("0123456789"),
    mean=(0.13,),
    image_folder={
        "path": "/pics",
        "size": 28,
        "channels": 1,
        "centre": False,
        "test_fraction": 0.2,
        "seed": 0,
    },
    resumed=({"from_iteration": 10, "changed": {"iterations": 30}},),
)


def test_a_config_reads_back_as_it_was_written(tmp_path):
    path = tmp_path / "config.json"
    write_json(path, {**CONFIG.to_json(), "environment": {"device": "cpu"}})
    assert RunConfig.read(path) == CONFIG
    plain = replace(CONFIG, image_folder=None, resumed=(), idx_dir="/idx", train_limit=None)
    write_json(path, plain.to_json())
    assert RunConfig.read(path) == plain


def test_the_input_record_is_the_settings_scale_and_the_mean():
    record = CONFIG.to_json()
    assert record["input"] == {"scale": CONFIG.fit.pixel_scale, "mean": [0.13]}
    assert "mean" not in record and record["fit"]["flip_test"] is True


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"preset": 3}, "preset must be a string, got 3"),
        ({"train_limit": 0}, "train_limit must be a positive integer, got 0"),
        ({"val_size": True}, "val_size must be an integer >= 0, got True"),
        ({"idx_dir": 1}, "idx_dir must be a string or null, got 1"),
        ({"resumed": {}}, "resumed must be a list of JSON objects"),
        ({"fit": {"iterations": 0}}, "the settings in fit are damaged"),
    ],
)
def test_a_bad_key_is_named(tmp_path, change, message):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**CONFIG.to_json(), **change}))
    with pytest.raises(ConfigError, match=r"config\.json: ") as info:
        RunConfig.read(path)
    assert message in str(info.value)
