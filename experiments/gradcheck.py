"""Compare every custom backward rule with JAX autodiff and finite differences (float64).

Usage: ``python -m experiments.gradcheck [--tolerance 1e-10]``. Prints a Markdown table and exits
with status 1 when any relative error is over the tolerance.
"""

from __future__ import annotations

import argparse
import sys

from jaxnet import gradcheck


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.gradcheck", description=__doc__)
    parser.add_argument(
        "--tolerance",
        type=float,
        default=gradcheck.TOLERANCE,
        help="largest relative error accepted (default: %(default)g)",
    )
    args = parser.parse_args(argv)
    results = gradcheck.run(tolerance=args.tolerance)
    print(gradcheck.format_table(results, args.tolerance))
    failed = [r.name for r in results if not r.ok(args.tolerance)]
    if failed:
        print(f"FAILED: relative error over {args.tolerance:g} in: {', '.join(failed)}")
        return 1
    print(f"all {len(results)} checks within {args.tolerance:g} (float64)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
