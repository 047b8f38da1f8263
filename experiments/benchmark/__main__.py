"""``python -m experiments.benchmark``."""

from experiments.benchmark.run import main

raise SystemExit(main())
