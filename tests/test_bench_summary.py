"""bench/run_all's summary: the store's ratios are taken against the faster PNG folder."""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ sits beside the package, not in it: import it from the checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.run_all import SUMMARY_KEYS, store_summary  # noqa: E402


def backend(write: float, read: float, size: int) -> dict:
    return {"write_samples_per_s": write, "read_samples_per_s": read, "bytes_on_disk": size}


def test_store_ratios_use_the_faster_png_folder_and_the_worst_data_kind():
    results = {
        "synth": {
            "store": backend(300, 600, 90),
            "png-rasterio": backend(100, 300, 100),
            "png-pillow": backend(150, 200, 120),
        },
        "real": {
            "store": backend(400, 500, 50),
            "png-rasterio": backend(100, 100, 60),
            "png-pillow": backend(100, 100, 80),
        },
    }
    summary = store_summary(results)
    assert summary["store_write_vs_png"] == 2.0  # synth: 300 / 150 (pillow writes faster)
    assert summary["store_read_vs_png"] == 2.0  # synth: 600 / 300 (rasterio reads faster)
    assert summary["png_bytes_vs_store"] == 100 / 90  # synth: the smaller PNG folder
    assert summary["store_by_kind"]["real"]["store_write_vs_png"] == 4.0
    assert set(SUMMARY_KEYS) >= {"store_write_vs_png", "generation_vs_naive", "cached_rerun_share"}


def test_generation_and_flow_figures_fill_their_summary_keys():
    from bench.run_all import BENCHMARKS, SUMMARISE, flow_library_summary, generation_summary

    assert set(SUMMARISE) == set(BENCHMARKS)
    generation = {
        "generation_vs_naive": 1.2,
        "generation_vs_naive_float32": 1.1,
        "factory_dtype": "bfloat16",
        "factory_pairs_per_s": 3.0,
        "naive_pairs_per_s": 2.5,
    }
    summary = generation_summary(generation)
    assert summary["generation_vs_naive"] == 1.2
    assert summary["generation_vs_naive_float32"] == 1.1
    flow = {
        "library_s": 10.0,
        "flow_s": 12.0,
        "cached_flow_s": 1.0,
        "flow_overhead_share": 0.2,
        "cached_rerun_share": 1 / 12,
    }
    summary = flow_library_summary(flow)
    assert summary["flow_overhead_share"] == 0.2 and summary["cached_rerun_share"] == 1 / 12
    assert summary["flow_seconds"]["flow_s"] == 12.0


def test_flow_bench_scale_multiplies_the_work_on_the_same_task_graph():
    from bench.flow_vs_library import minimal_config
    from pipeline_lib.config import config_from_dict

    one = config_from_dict(minimal_config(Path("w")))
    five = config_from_dict(minimal_config(Path("w"), scale=5))
    for stage in ("vae", "label_lora", "controlnet"):
        assert getattr(five, stage).steps == 5 * getattr(one, stage).steps
    assert five.validation.iters == 5 * one.validation.iters
    assert five.quota.samples == 5 * one.quota.samples
    # The same shards and quota steps: the flow runs the same tasks, each with more work.
    shards = one.quota.samples // one.store.shard_size
    assert five.quota.samples // five.store.shard_size == shards
    assert five.quota.samples // five.quota.validate_every == 1
