"""Every setting of a training run, checked once, when the :class:`FitConfig` is made.

Each field carries its own check (``metadata["check"]``): :class:`FitConfig` runs them all on
construction, and the experiment commands run the same one on each flag as argparse parses it,
so a bad value gets the same one-line message wherever it enters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import optax

from jaxnet.optim import momentum

Check = Callable[[str, Any], None]


def _must_be(wanted: str, ok: Callable[[Any], bool]) -> Check:
    """A check: ``ValueError("{name} must be {wanted}, got {value}")`` unless ``ok(value)``."""

    def check(name: str, value: Any) -> None:
        if not ok(value):
            raise ValueError(f"{name} must be {wanted}, got {value}")

    check.__doc__ = f"ValueError naming ``name`` unless ``value`` is {wanted}."
    return check


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


SEED_MAX = 2**32 - 1
"""The largest seed: ``jax.random.PRNGKey`` and ``np.random.default_rng`` both take it whole."""

positive_int = _must_be("a positive integer", lambda v: _is_int(v) and v >= 1)
nonnegative_int = _must_be("an integer >= 0", lambda v: _is_int(v) and v >= 0)
positive = _must_be("positive", lambda v: v > 0 and math.isfinite(v))
_at_least_zero = _must_be("a finite number >= 0", lambda v: v >= 0 and math.isfinite(v))
_seed = _must_be(f"an integer in [0, {SEED_MAX}]", lambda v: _is_int(v) and 0 <= v <= SEED_MAX)


def _fraction(closed_at_zero: bool) -> Check:
    if closed_at_zero:
        return _must_be("in [0, 1)", lambda v: 0 <= v < 1)
    return _must_be("in (0, 1)", lambda v: 0 < v < 1)


def _one_of(*choices: str) -> Check:
    def check(name: str, value: Any) -> None:
        if value not in choices:
            names = " or ".join(repr(c) for c in choices)
            raise ValueError(f"{name} must be {names}, got {value!r}")

    check.choices = choices  # type: ignore[attr-defined]  # the CLI's argparse choices
    return check


def _bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


def _setting(check: Check, default: Any, help: str) -> Any:
    """A field with its check and its help text; ``default=None`` for a required one."""
    meta = {"check": check, "help": help}
    return field(metadata=meta) if default is None else field(default=default, metadata=meta)


@dataclass(frozen=True)
class FitConfig:
    """Every setting of a training run (saved in ``config.json`` and in each checkpoint).

    Each field's meaning is its ``metadata["help"]`` (listed below, and the help of its
    command-line flag); its check is ``metadata["check"]``.

    Raises:
        ValueError: on construction, a one-line message naming the first bad setting.
    """

    iterations: int = _setting(positive_int, None, "optimizer steps in all")
    batch_size: int = _setting(positive_int, None, "images per step")
    learning_rate: float = _setting(positive, None, "the peak step size alpha")
    momentum: float = _setting(_fraction(True), 0.9, "mu in m = mu*m + (1-mu)*g (eq. 30)")
    weight_decay: float = _setting(
        _at_least_zero, 0.0, "lambda in w -= alpha*(m + lambda*w) (eq. 31)"
    )
    schedule: str = _setting(
        _one_of("constant", "cosine"),
        "constant",
        "learning-rate schedule: constant (the seed's) or cosine (linear warm-up, then cosine "
        "decay to zero)",
    )
    warmup: int = _setting(nonnegative_int, 0, "warm-up iterations of the cosine schedule")
    augment: bool = _setting(
        _bool,
        False,
        "random crop with zero padding (and, if flip, a horizontal flip) of training images, on "
        "the device",
    )
    crop_pad: int = _setting(nonnegative_int, 4, "padding of the random crop, in pixels")
    flip: bool = _setting(
        _bool, True, "mirror half of the augmented images left-right (not for digits)"
    )
    cutout: int = _setting(
        nonnegative_int,
        0,
        "side of a square, at a random place in each augmented image (it may reach past the "
        "edges), set to black like the crop's padding (0: none)",
    )
    label_smoothing: float = _setting(
        _fraction(True),
        0.0,
        "train towards (1 - eps) onehot + eps / K instead of onehot (0: none; the validation and "
        "test losses stay plain cross-entropy)",
    )
    weight_average: float = _setting(
        _fraction(True),
        0.0,
        "decay of an exponential moving average of the weights, kept beside them and evaluated "
        "beside them; the run reports (and saves as params.npz) the averaged weights (0: none). "
        "Early on the decay is min(d, (1 + t) / (10 + t))",
    )
    flip_test: bool = _setting(
        _bool,
        False,
        "evaluate each validation and test image as the mean of its and its mirror image's "
        "logits (test-time augmentation; not for digits)",
    )
    nesterov: bool = _setting(
        _bool, False, "Nesterov's look-ahead variant of the momentum rule (not the seed's)"
    )
    pixel_scale: float = _setting(
        positive,
        1 / 255,
        "uint8 pixels are multiplied by this before the mean is subtracted: 1/255 gives [0, 1] "
        "(the MNIST starter), 1 raw values (the CIFAR-10 starter)",
    )
    conv_init_gain: float = _setting(
        positive,
        1.0,
        "convolution kernels start at this times He's scale (the CIFAR-10 starter draws them at "
        "0.1 times; dense layers always at He's scale)",
    )
    seed: int = _setting(
        _seed,
        0,
        "seed for initialisation, split, data order and augmentation, in [0, 2**32 - 1]",
    )
    rules: str = _setting(
        _one_of("analytic", "autodiff"),
        "analytic",
        "gradients from the hand-written rules (analytic) or from JAX (autodiff)",
    )
    log_every: int = _setting(positive_int, 100, "iterations per history row")
    eval_every: int = _setting(
        positive_int, 500, "iterations between validation evaluations (at history rows)"
    )
    checkpoint_every: int = _setting(
        positive_int,
        1000,
        "iterations between checkpoints (one is also saved at the end and at Ctrl-C)",
    )
    ema_decay: float = _setting(
        _fraction(False), 0.99, "decay of the moving averages of the batch loss and accuracy"
    )
    eval_batch_size: int = _setting(positive_int, 1000, "images per evaluation batch")

    def __post_init__(self) -> None:
        for f in fields(self):
            f.metadata["check"](flag_name(f.name), getattr(self, f.name))
        if not self.warmup < self.iterations:
            raise ValueError(f"warmup must be in [0, iterations), got {self.warmup}")

    def check_data(self, n_train: int, devices: int = 1) -> None:
        """ValueError unless a batch fits in the ``n_train`` training images and both batch
        sizes divide over the ``devices`` a data-parallel run splits each batch over."""
        from jaxnet.parallel import check_batch

        if self.batch_size > n_train:
            raise ValueError(
                f"batch-size {self.batch_size} is larger than the training set ({n_train} images)"
            )
        for size in {self.batch_size, self.eval_batch_size}:
            check_batch(size, devices)

    def learning_rate_schedule(self) -> optax.Schedule:
        """The step size as a function of the iteration (an optax schedule)."""
        if self.schedule == "constant":
            return optax.constant_schedule(self.learning_rate)
        return optax.warmup_cosine_decay_schedule(
            0.0, self.learning_rate, max(self.warmup, 1), self.iterations, 0.0
        )

    def optimizer(self) -> optax.GradientTransformation:
        """The seed's momentum scheme (:func:`jaxnet.momentum`) with this run's schedule."""
        return momentum(
            self.learning_rate_schedule(), self.momentum, self.weight_decay, self.nesterov
        )


RESUMABLE = (
    "iterations",
    "learning_rate",
    "schedule",
    "warmup",
    "log_every",
    "eval_every",
    "checkpoint_every",
)
"""The settings a resumed run may change: its length (to extend it), its step size and schedule
(after a NaN stop, as its message advises), and how often it logs, evaluates and saves. Every
other setting shapes the network, the data or their order, which the checkpoint already holds."""


def flag_name(field_name: str) -> str:
    """``batch_size`` -> ``batch-size``: how messages and the command line name a setting."""
    return field_name.replace("_", "-")


def _document_fields(cls: type) -> None:
    """Append an ``Attributes:`` section built from the fields' help to ``cls.__doc__``, so the
    API reference and ``--help`` show the same words, written once."""
    lines = [f"        {f.name}: {f.metadata['help']}." for f in fields(cls)]
    cls.__doc__ = f"{cls.__doc__.rstrip()}\n\n    Attributes:\n" + "\n".join(lines) + "\n"


_document_fields(FitConfig)
