"""Run every benchmark in turn, printing each table and writing each JSON file.

python -m bench.run_all --samples 256 --size 256 --calls 100
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from bench import flow_overhead, store_vs_png

BENCHMARKS = {"store_vs_png": store_vs_png, "flow_overhead": flow_overhead}


def parser() -> argparse.ArgumentParser:
    """Every benchmark's flags in one parser (``--seed`` is shared)."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.run_all",
        description=__doc__.split("\n")[0],
        conflict_handler="resolve",
    )
    parser.add_argument(
        "--only",
        choices=sorted(BENCHMARKS),
        action="append",
        help="run just this benchmark (repeatable; default: all)",
    )
    for module in BENCHMARKS.values():
        group = parser.add_argument_group(module.NAME, module.__doc__.split("\n")[0])
        module.add_arguments(group)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    for name, module in BENCHMARKS.items():
        if args.only and name not in args.only:
            continue
        print(f"== {name}")
        module.run(args)
        print()


if __name__ == "__main__":
    main()
