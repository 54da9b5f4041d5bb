"""Run every benchmark in turn, printing each table and writing each JSON file.

Then ``bench/results/summary.json`` gathers the headline ratios (> 1 is better for the
store and generation ones; a share is extra time over the baseline, lower is better). A key
whose benchmark did not run, or is not written yet, is null.

python -m bench.run_all --samples 256 --size 256 --calls 100 --gen-batch-size 8 --flow-rounds 3
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from bench import flow_overhead, flow_vs_library, generation, store_vs_png
from bench.cli import command_line
from bench.report import RESULTS_DIR, machine, write_json

BENCHMARKS = {
    "store_vs_png": store_vs_png,
    "flow_overhead": flow_overhead,
    "generation": generation,
    "flow_vs_library": flow_vs_library,
}


def parser() -> argparse.ArgumentParser:
    """Every benchmark's flags in one parser (``--seed`` is shared)."""
    parser = command_line("run_all", __doc__, conflict_handler="resolve")
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


SUMMARY_KEYS = (
    "store_write_vs_png",
    "store_read_vs_png",
    "png_bytes_vs_store",
    "generation_vs_naive",
    "flow_overhead_share",
    "cached_rerun_share",
)


def store_summary(results: dict[str, Any]) -> dict[str, Any]:
    """The store's ratios against the faster PNG folder, worst data kind first (per kind too)."""
    per_kind = {}
    for kind, backends in results.items():
        pngs = [v for k, v in backends.items() if k.startswith("png-")]
        store = backends["store"]
        per_kind[kind] = {
            "store_write_vs_png": store["write_samples_per_s"]
            / max(p["write_samples_per_s"] for p in pngs),
            "store_read_vs_png": store["read_samples_per_s"]
            / max(p["read_samples_per_s"] for p in pngs),
            "png_bytes_vs_store": min(p["bytes_on_disk"] for p in pngs) / store["bytes_on_disk"],
        }
    worst = {k: min(v[k] for v in per_kind.values()) for k in next(iter(per_kind.values()))}
    return {**worst, "store_by_kind": per_kind}


def flow_summary(numbers: dict[str, Any]) -> dict[str, Any]:
    """Per-call milliseconds a cached task adds (``flow_vs_library`` times whole flow runs)."""
    return {"task_added_ms": numbers["cached_task_ms_added_median"]}


def generation_summary(results: dict[str, Any]) -> dict[str, Any]:
    """The factory generator's pairs/s over the naive loop's (at the factory's precision and
    at float32), and the rates."""
    return {
        "generation_vs_naive": results["generation_vs_naive"],
        "generation_vs_naive_float32": results["generation_vs_naive_float32"],
        "generation_factory_dtype": results["factory_dtype"],
        "generation_pairs_per_s": {
            "factory": results["factory_pairs_per_s"],
            "naive": results["naive_pairs_per_s"],
        },
    }


def flow_library_summary(results: dict[str, Any]) -> dict[str, Any]:
    """A whole factory flow run against the library called directly, and a cached re-run."""
    return {
        "flow_overhead_share": results["flow_overhead_share"],
        "cached_rerun_share": results["cached_rerun_share"],
        "flow_seconds": {k: results[k] for k in ("library_s", "flow_s", "cached_flow_s")},
    }


SUMMARISE = {
    "store_vs_png": store_summary,
    "flow_overhead": flow_summary,
    "generation": generation_summary,
    "flow_vs_library": flow_library_summary,
}


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    summary: dict[str, Any] = dict.fromkeys(SUMMARY_KEYS)
    for name, module in BENCHMARKS.items():
        if args.only and name not in args.only:
            continue
        print(f"== {name}")
        summary.update(SUMMARISE[name](module.run(args)))
        print()
    summary["machine"] = machine()
    print(json.dumps({k: summary[k] for k in SUMMARY_KEYS}, indent=2))
    write_json(RESULTS_DIR / "summary.json", summary)


if __name__ == "__main__":
    main()
