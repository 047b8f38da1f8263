"""``python -m experiments.benchmark``."""

import sys

from experiments.benchmark.run import main

sys.exit(main())
