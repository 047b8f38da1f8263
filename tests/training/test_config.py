"""FitConfig: every setting checked once, when the config is made."""

from __future__ import annotations

import dataclasses

import pytest

from jaxnet.training import FitConfig

BASE = {"iterations": 30, "batch_size": 8, "learning_rate": 0.2, "warmup": 3}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"iterations": 0}, "iterations must be a positive integer"),
        ({"batch_size": True}, "batch-size must be a positive integer"),
        ({"learning_rate": float("nan")}, "learning-rate must be positive"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
        ({"weight_decay": -1e-3}, "weight-decay must be a finite number >= 0"),
        ({"weight_decay": float("inf")}, "weight-decay must be a finite number >= 0"),
        ({"weight_decay": float("nan")}, "weight-decay must be a finite number >= 0"),
        ({"label_smoothing": float("inf")}, r"label-smoothing must be in \[0, 1\)"),
        ({"momentum": float("nan")}, r"momentum must be in \[0, 1\)"),
        ({"seed": -1}, r"seed must be an integer in \[0, 4294967295\], got -1"),
        ({"seed": 2**64}, r"seed must be an integer in \[0, 4294967295\], got 1844"),
        ({"seed": 1.5}, r"seed must be an integer in \[0, 4294967295\]"),
        ({"schedule": "step"}, "schedule must be 'constant' or 'cosine'"),
        ({"warmup": 30}, r"warmup must be in \[0, iterations\)"),
        ({"crop_pad": -1}, "crop-pad must be an integer >= 0"),
        ({"pixel_scale": 0.0}, "pixel-scale must be positive"),
        ({"conv_init_gain": float("inf")}, "conv-init-gain must be positive"),
        ({"rules": "numeric"}, "rules must be 'analytic' or 'autodiff'"),
        ({"ema_decay": 0.0}, r"ema-decay must be in \(0, 1\)"),
        ({"eval_batch_size": 0}, "eval-batch-size must be a positive integer"),
    ],
)
def test_bad_settings_are_refused_on_construction(change, match):
    with pytest.raises(ValueError, match=match):
        FitConfig(**{**BASE, **change})
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(FitConfig(**BASE), **change)


def test_batch_must_fit_the_training_set_and_divide_over_the_devices():
    config = FitConfig(**BASE)
    config.check_data(8)
    with pytest.raises(ValueError, match=r"batch-size 8 is larger than the training set \(7"):
        config.check_data(7)
    config.check_data(8, devices=8)
    with pytest.raises(ValueError, match="batch size 8 does not divide over 3 devices"):
        config.check_data(8, devices=3)


@pytest.mark.parametrize(("schedule", "at_end"), [("constant", 0.2), ("cosine", 0.0)])
def test_schedule(schedule, at_end):
    config = FitConfig(**{**BASE, "schedule": schedule})
    lr = config.learning_rate_schedule()
    assert float(lr(config.iterations)) == pytest.approx(at_end, abs=1e-7)
    assert float(lr(config.warmup)) == pytest.approx(0.2)
