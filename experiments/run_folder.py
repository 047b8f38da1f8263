"""A run folder: what one experiment command reads and writes, by name.

``config.json`` (every setting and the environment), ``history.csv`` (one row per
``log_every`` iterations), ``metrics.json`` (test results), ``params.npz`` (one array per
parameter, keyed by its pytree path), five figures, two Markdown tables, and ``checkpoints/``.
Every file is written atomically (:mod:`jaxnet.io`). A training process holds the folder's
lock (``.lock``, :meth:`RunFolder.lock`) for its whole life, so that two processes never write
one run.
"""

from __future__ import annotations

import csv
import fcntl
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import numpy as np

from jaxnet import io, metrics, network, plots
from jaxnet.checkpoint import CheckpointManager, save_pytree
from jaxnet.training import HISTORY_FIELDS

FIGURES = {
    "kernels.png": "First-layer kernels",
    "misclassified.png": "Misclassified test images",
    "confusion_matrix.png": "Confusion matrix",
    "learning_curves.png": "Learning curves",
    "gradients.png": "Gradient norms and update ratios",
}
"""The figures a finished run writes, each with its title in ``report.md``."""
TABLES = ("parameters.md", "per_class.md")
OUTPUT_FILES = ("config.json", "history.csv", "metrics.json", "params.npz", *FIGURES, *TABLES)


class FolderInUse(Exception):
    """Another process holds the run folder's lock; the message names the folder and it."""


class RunFolder:
    """The folder of one run and the files in it.

    Args:
        path: the folder (created when the config is first written).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.config_path = self.path / "config.json"
        self.config: dict[str, Any] = {}
        self._lock_fd: int | None = None
        self._made = False

    def lock(self) -> None:
        """Hold the folder for this process until it ends: ``fcntl.flock`` on ``.lock``.

        The OS releases the lock when the process dies, however it dies (no stale lock after a
        SIGKILL). Making the folder and the lock file first proves it can be written; the file
        names the holder (process id and host) for the message another process gets.

        Raises:
            FolderInUse: another process holds it.
            OSError: the folder cannot be created or written (its ``filename`` names it).
        """
        self._made = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise FolderInUse(
                f"{self.path} is in use by {holder}: wait for it to end, or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode())
        self._lock_fd = fd

    def release(self) -> None:
        """Let the lock go; a folder this process made and left empty is removed with it."""
        if self._lock_fd is None:
            return
        lock_file = self.path / ".lock"
        if self._made and [p.name for p in self.path.iterdir()] == [".lock"]:
            lock_file.unlink()
            self.path.rmdir()
        os.close(self._lock_fd)
        self._lock_fd = None

    @property
    def occupied(self) -> bool:
        """Whether the folder holds a run (its config or checkpoints)."""
        return self.config_path.exists() or (self.path / "checkpoints").exists()

    def checkpoints(self) -> CheckpointManager:
        """The run's checkpoints, the last three kept."""
        return CheckpointManager(self.path / "checkpoints", keep=3)

    def clear(self) -> None:
        """Remove a previous run's outputs and checkpoints (``--overwrite``)."""
        shutil.rmtree(self.path / "checkpoints", ignore_errors=True)
        for name in OUTPUT_FILES:
            (self.path / name).unlink(missing_ok=True)

    def write_config(self, config: dict[str, Any]) -> None:
        """Write ``config.json`` (and keep it as :attr:`config`)."""
        self.config = config
        io.write_json(self.config_path, config)

    def write_history(self, history: list[dict[str, float]]) -> None:
        """Write ``history.csv``: :data:`jaxnet.training.HISTORY_FIELDS`, then the averaged
        weights' validation columns (a run with ``weight_average``) and the per-layer
        diagnostics columns (``grad_norm/NAME``, ``update_ratio/NAME``) the rows hold."""
        extra = dict.fromkeys(k for row in history for k in row if k not in HISTORY_FIELDS)
        fields = [*HISTORY_FIELDS, *extra]
        with io.atomic_write(self.path / "history.csv", "w") as f:
            writer = csv.DictWriter(f, fields, lineterminator="\n")
            writer.writeheader()
            writer.writerows(history)

    def write_results(
        self,
        name: str,
        arch: network.Architecture,
        run: Any,
        *,
        dataset: Any,
        test: Any,
        report: dict,
    ) -> dict[str, Any]:
        """Write ``metrics.json``, ``params.npz``, the figures and the tables.

        Args:
            name: the experiment, for the figures' titles.
            arch: the network.
            run: the finished :class:`jaxnet.training.Run` (its reported weights are saved).
            dataset: the loaded data set (test images and labels, class names).
            test: the :class:`jaxnet.EvalResult` of the test set.
            report: what ``metrics.json`` holds beyond the test set's results.

        Returns:
            What ``metrics.json`` holds.
        """
        names = list(dataset.class_names)
        confusion = metrics.confusion_matrix(dataset.test_labels, test.predictions, len(names))
        summary = metrics.summary(confusion, names)
        results = {
            "test_accuracy": test.accuracy,
            "test_loss": test.loss,
            "val_accuracy": report.pop("val_accuracy"),
            "per_class": summary["per_class"],
            "confusion_matrix": summary["confusion_matrix"],
            "class_names": names,
            "parameter_count": network.count_params(arch),
            **report,
        }
        io.write_json(self.path / "metrics.json", results)
        save_pytree(self.path / "params.npz", run.reported_params)
        first = np.asarray(run.reported_params[arch.layers[0].name]["w"])
        plots.plot_kernels(first, self.path / "kernels.png", title=f"{name}: first-layer kernels")
        plots.plot_misclassified(
            dataset.test_images,
            dataset.test_labels,
            test.predictions,
            names,
            self.path / "misclassified.png",
        )
        plots.plot_confusion_matrix(confusion, names, self.path / "confusion_matrix.png")
        plots.plot_learning_curves(run.history, self.path / "learning_curves.png")
        plots.plot_gradients(run.history, self.path / "gradients.png", title=f"{name}: gradients")
        io.write_text(self.path / "parameters.md", network.parameter_table(arch) + "\n")
        io.write_text(self.path / "per_class.md", metrics.per_class_table(confusion, names) + "\n")
        return results
