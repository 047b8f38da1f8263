"""Train-step throughput of jaxnet against the libraries its users would pick instead.

    python -m experiments.benchmark                     # several minutes on 2 CPU cores
    python -m experiments.benchmark --quick             # a smoke run
    python -m experiments.benchmark --batches 16 64 --nets mnist --json bench.json

For each network (``--nets``) and batch size (``--batches``), one process times one full train
step (forward, loss, backward, the momentum update; uint8 images scaled inside the step) of
each method of :func:`~experiments.benchmark.methods.step_methods`:

- jaxnet's analytic rules (``make_train_step(rules="analytic")``) and their autodiff twin
  (``rules="autodiff"``); where jaxnet's oneDNN convolutions are available, the analytic rules
  on each kernel set, "analytic (oneDNN convs)" (the default path) and "analytic (XLA convs)";
- the network as PyTorch's users write it (:mod:`experiments.peers.pytorch_peer`), eager and
  through ``torch.compile`` (its compile time apart; where it fails, one line says why);
- the network as Equinox's users write it (:mod:`experiments.peers.equinox_peer`);
- with ``--devices N``, the analytic rules data-parallel over N devices; with
  ``--torch-variants``, the PyTorch formulations that were tried and not kept.

The peers are optional (``pip install -e ".[peers]"``); one that does not import is left out
with a line saying so. Every method starts from jaxnet's initial weights and cycles through
the same few random batches; PyTorch gets as many threads as XLA uses, on the device that
matches JAX's.

How: each method's first call (compilation included) is timed apart; then all methods and a
float32 matrix product (XLA's and PyTorch's: the best is the ceiling) are timed in windows of
about ``--window-s`` seconds, one window each per round, in an order that rotates from round to
round, so that load from other processes falls on all alike. A speed is the median over the
rounds; a ratio is the median of the per-round ratios. GFLOP/s counts only the products a step
needs (:func:`~experiments.benchmark.case.step_flops`).

Where time goes (:func:`~experiments.benchmark.pieces.layer_times`): every layer's forward
and backward pass timed on its own at the same batch, for each JAX method and PyTorch. The
``fit()`` check (:func:`~experiments.benchmark.epoch.bench_epoch`): full MNIST epochs through
``jaxnet.training.fit`` against steps x step time.

A table goes to the terminal and everything, raw windows included, to ``--json``, with the
load average: figures from a shared machine are noisy, PyTorch's OpenMP threads most. What was
tried and measured over time: ``docs/performance.md``.

Where each part lives, in the order a run uses them:

- :mod:`~experiments.benchmark.timing`: windows, rotating rounds, medians and ratios;
- :mod:`~experiments.benchmark.case`: the run's plan, the shared training settings, the peers
  that imported, one network at one batch size (its data, weights and products per step);
- :mod:`~experiments.benchmark.pieces`: each layer's forward and backward pass on its own;
- :mod:`~experiments.benchmark.methods`: each method's whole step, and the matrix product;
- :mod:`~experiments.benchmark.epoch`: the ``fit()`` check;
- :mod:`~experiments.benchmark.tables`: the terminal's Markdown;
- :mod:`~experiments.benchmark.run`: the groups, the whole run and the command's flags.
"""
