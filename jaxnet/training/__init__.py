"""Training a network: settings, state, the loop and the hooks it calls between steps.

- :mod:`~jaxnet.training.config`: :class:`FitConfig`, every setting, checked once when made.
- :mod:`~jaxnet.training.data`: the split, each epoch's order, the mean, on-device augmentation.
- :mod:`~jaxnet.training.state`: :class:`TrainState` (the arrays) and :class:`Run` (where a
  run stands).
- :mod:`~jaxnet.training.loop`: :func:`fit`, the loop, and the jitted fit step.
- :mod:`~jaxnet.training.hooks`: NaN stop, evaluation, history, progress bar, checkpoints.
"""

from jaxnet.training.config import FitConfig
from jaxnet.training.data import TrainData
from jaxnet.training.hooks import HISTORY_FIELDS, DivergedError
from jaxnet.training.loop import fit, make_fit_step
from jaxnet.training.state import Run, TrainState, initial_state

__all__ = [
    "HISTORY_FIELDS",
    "DivergedError",
    "FitConfig",
    "Run",
    "TrainData",
    "TrainState",
    "fit",
    "initial_state",
    "make_fit_step",
]
