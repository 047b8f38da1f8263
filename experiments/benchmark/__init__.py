"""Train-step throughput of jaxnet against the libraries its users would pick instead.

    python -m experiments.benchmark                     # several minutes on 2 CPU cores
    python -m experiments.benchmark --quick             # a smoke run
    python -m experiments.benchmark --batches 16 64 --nets mnist --json bench.json

For each network and batch size, one process times one full train step (forward, loss,
backward, the momentum update; uint8 images scaled inside the step) of each method: jaxnet's
analytic rules and their autodiff twin, and the network as PyTorch's and Equinox's users write
it (:mod:`experiments.peers`, optional: one that does not import is left out with a line), all
from jaxnet's initial weights on the same few random batches. Windows of all methods and of a
float32 matrix product (the ceiling) are interleaved in rounds whose order rotates, so that load
from other processes falls on all alike; a speed is the median over the rounds, a ratio the
median of the per-round ratios. Then each layer's forward and backward pass alone (where time
goes), and full MNIST epochs through ``jaxnet.training.fit`` against steps x step time.

A table goes to the terminal, everything to ``--json``. The modules, in the order a run uses
them: ``timing``, ``case``, ``methods``, ``epoch``, ``tables``, ``run``. What was tried and
measured over time: ``docs/performance.md``.
"""
