"""The whole factory flow against the same library functions called directly, and a cached re-run.

On the smallest config that still goes through every stage (``tests/factory_configs.py``'s
``minimal_config``: 4 synthetic tiles, 2 training steps per model, 4 samples in 2 shards,
Mask2Former on Gen. and Ori. for 2 iterations), in one process. ``--scale K`` multiplies the
work and keeps the task graph: 2K training steps per model, 4K samples in 2 shards of 2K,
2K Mask2Former iterations. The flow's bookkeeping is per task and per flow run, so its share
of the wall time falls as each task's work grows:

* **library**: ``prepare_dataset``, the ``pipeline_lib.train`` functions (VAE, label LoRA,
  ControlNet), ``generate_to_quota`` over ``generate_and_commit_shard`` with one
  ``Generator``, validation at each quota step (``train_sources``, ``run_data_name``,
  ``assemble_report``, ``write_sample_grid``) and ``verify_store``, in the flow's order;
* **flow**: ``flows.factory.factory`` under a local Prefect server on SQLite
  (``deployments.local_server``), as ``lfactory run`` runs it;
* **cached**: the same flow again on the flow's finished work dir (every task a cache hit).

Each cold run gets its own fresh work dir; the cold ways alternate which goes first
round by round, after an untimed warm-up run of the library. Imports (torch, diffusers,
mmseg, Prefect) and the server start happen before any timing and are reported apart.
``flow_overhead_share`` = flow / library - 1, ``cached_rerun_share`` = cached / cold flow
(medians over rounds).

    python -m bench.flow_vs_library --flow-rounds 3
    python -m bench.flow_vs_library --flow-rounds 2 --scale 25
    python -m bench.flow_vs_library --database-url postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DB
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from statistics import median
from typing import Any

from bench.cli import command_line, positive_int
from bench.report import RESULTS_DIR, format_table, write_results

NAME = "flow_vs_library"
ROOT = Path(__file__).resolve().parents[1]


def minimal_config(work_dir: Path, scale: int = 1) -> dict[str, Any]:
    """``tests/factory_configs.minimal_config`` (the tests' smallest full factory), its work
    multiplied by ``scale`` on the same stages, shards and validation rows."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from factory_configs import minimal_config as config
    finally:
        sys.path.remove(str(ROOT / "tests"))
    config = config(work_dir, name="bench-flow")
    for stage in ("vae", "label_lora", "controlnet"):
        steps = config[stage]["steps"] * scale
        config[stage] = {**config[stage], "steps": steps, "checkpoint_every": steps}
    config["store"] = {**config["store"], "shard_size": config["store"]["shard_size"] * scale}
    quota = config["quota"]["samples"] * scale
    config["quota"] = {"samples": quota, "validate_every": quota}
    iters = config["validation"]["iters"] * scale
    config["validation"] = {
        **config["validation"],
        "iters": iters,
        "val_interval": iters,
        "checkpoint_interval": iters,
    }
    return config


# ------------------------------------------------------------------ the library, directly


def validate_step(config, step: int) -> None:
    """What ``flows.validate.validate_dataset`` does for one quota step, without Prefect."""
    from pipeline_lib.report.sample_grid import write_sample_grid
    from pipeline_lib.validate import assemble_report, run_data_name, train_sources
    from pipeline_lib.validate.steps import is_validated, step_dir

    if is_validated(config.validation.output, step):
        return
    work_dir = step_dir(config.validation.output, step)
    cfg = config.validation
    sources = train_sources(cfg.data, config, step)
    results = [
        run_data_name(name, folders, config.data.eval_root, cfg, work_dir, progress=False)
        for name, folders in sources.items()
    ]
    assemble_report(results, work_dir, cfg.mix_ratios)
    if cfg.mix_ratios or any(d in ("gen", "both") for d in cfg.data):
        write_sample_grid(config.store.path, work_dir / "samples.png")


def library_factory(config) -> int:
    """The factory flow's work, stage by stage, as plain calls; returns the committed count."""
    from pipeline_lib.data.prepare import prepare_dataset
    from pipeline_lib.generate.sampler import Generator
    from pipeline_lib.generate.shards import generate_and_commit_shard
    from pipeline_lib.quota import generate_to_quota, quota_steps_reached
    from pipeline_lib.store.verify import verify_store
    from pipeline_lib.train import train_base, train_controlnet, train_label_lora, train_vae
    from pipeline_lib.train.base import base_training_applies
    from pipeline_lib.train.vae import vae_training_applies

    prepare_dataset(config.data)
    if vae_training_applies(config):
        train_vae(config, progress=True)
    if base_training_applies(config):
        train_base(config, progress=True)
    train_label_lora(config, progress=True)
    train_controlnet(config, progress=True)
    quota, every = config.quota.samples, config.quota.validate_every
    generator = Generator(config)

    def after_shard(_, committed: int) -> None:
        for step in quota_steps_reached(committed, every, quota):
            validate_step(config, step)

    run = generate_to_quota(
        config.store.path,
        quota,
        config.store.shard_size,
        lambda shard_id: generate_and_commit_shard(config, generator, shard_id),
        after_shard,
    )
    for step in quota_steps_reached(run.committed, every, quota):
        validate_step(config, step)
    verify_store(config.store.path).require_ok()
    return run.committed


# ------------------------------------------------------------------ the measuring child


def child(out: Path, workdir: Path, rounds: int, scale: int, database_url: str | None) -> None:
    """Runs in its own process (a fresh Prefect home and settings): every timed run."""
    from pipeline_lib.config import config_from_dict

    t0 = time.perf_counter()
    import diffusers  # noqa: F401
    import torch

    import flows.factory
    from deployments.local_server import local_server
    from pipeline_lib.validate import ensure_mmseg

    ensure_mmseg()
    imports_s = time.perf_counter() - t0

    def config(name: str):
        return config_from_dict(minimal_config(workdir / name, scale))

    def library(name: str) -> float:
        cfg = config(name)
        start = time.perf_counter()
        committed = library_factory(cfg)
        seconds = time.perf_counter() - start
        assert committed == cfg.quota.samples, committed
        return seconds

    def flow(name: str) -> float:
        cfg = config(name)
        start = time.perf_counter()
        result = flows.factory.factory(cfg)
        seconds = time.perf_counter() - start
        assert result.generation.committed == cfg.quota.samples, result
        assert result.verified.ok
        return seconds

    raw: dict[str, list[float]] = {"library_s": [], "flow_s": [], "cached_flow_s": []}
    # Untimed: the first library run pays lazy imports and first-call set-up for both ways.
    warm_up_s = library("warm-up")
    start = time.perf_counter()
    with local_server(workdir / "prefect-home", database_url=database_url):
        server_s = time.perf_counter() - start
        for r in range(rounds):
            ways = [("library", library), ("flow", flow)]
            for way, fn in ways if r % 2 == 0 else ways[::-1]:
                raw[f"{way}_s"].append(fn(f"{way}-{r}"))
            raw["cached_flow_s"].append(flow(f"flow-{r}"))  # the finished cold run's work dir
    out.write_text(
        json.dumps(
            {
                "imports_s": imports_s,
                "warm_up_library_s": warm_up_s,
                "server_start_s": server_s,
                "torch_threads": torch.get_num_threads(),
                **raw,
            }
        )
    )


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Run the child with a throw-away Prefect home; its log goes to ``workdir/child.log``."""
    out, log = workdir / "raw.json", workdir / "child.log"
    env = {
        **os.environ,
        "PREFECT_HOME": str(workdir / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
        "PREFECT_LOGGING_HANDLERS_CONSOLE_FLOW_RUNS_LEVEL": "WARNING",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", f"bench.{NAME}", "--child", str(workdir)]
    command += ["--flow-rounds", str(args.flow_rounds), "--scale", str(args.scale)]
    if args.database_url:
        command += ["--database-url", args.database_url]
    with open(log, "wb") as sink:
        done = subprocess.run(command, env=env, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
    if done.returncode != 0 or not out.is_file():
        tail = log.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"the flow benchmark failed (exit {done.returncode}):\n{tail}")
    raw = json.loads(out.read_text())
    library, flow, cached = (median(raw[k]) for k in ("library_s", "flow_s", "cached_flow_s"))
    return {
        "library_s": library,
        "flow_s": flow,
        "cached_flow_s": cached,
        "flow_overhead_share": flow / library - 1,
        "cached_rerun_share": cached / flow,
        "flow_added_s": flow - library,
        "raw": raw,
    }


RUNS = (
    ("library functions, called directly", "library_s"),
    ("factory flow, cold", "flow_s"),
    ("factory flow, cached re-run", "cached_flow_s"),
)


def table(results: dict[str, Any]) -> str:
    """Wall seconds of each run, with the seconds added and the ratio to the library's."""
    lib = results["library_s"]
    rows = [[run, results[k], results[k] - lib, results[k] / lib] for run, k in RUNS]
    return format_table(["run", "wall s", "added s", "ratio"], rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--flow-rounds",
        type=positive_int,
        default=3,
        help="rounds of (library, flow, cached flow) runs; medians reported (default 3)",
    )
    parser.add_argument(
        "--scale",
        type=positive_int,
        default=1,
        help="multiply the minimal config's training steps, samples and segmenter "
        "iterations, same tasks (default 1)",
    )
    parser.add_argument(
        "--database-url",
        help="the local server's database, e.g. postgresql+asyncpg://user:password@host:port/db "
        "(default: SQLite under a throw-away PREFECT_HOME)",
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure in a temporary folder, print the table, write the JSON; return the results."""
    workdir = Path(tempfile.mkdtemp(prefix="lfactory-bench-flowlib-"))
    try:
        results = measure(args, workdir)
    finally:
        log = workdir / "child.log"
        if log.is_file():  # what the runs printed (Prefect warnings, retries, progress bars)
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            shutil.copy(log, RESULTS_DIR / f"{NAME}.log")
        shutil.rmtree(workdir, ignore_errors=True)
    raw = results["raw"]
    database = "postgresql" if args.database_url else "sqlite"
    print(
        f"factory flow vs library calls: minimal config (every stage) x{args.scale} work, "
        f"{args.flow_rounds} round(s), {raw['torch_threads']} torch thread(s), server on "
        f"{database}"
    )
    print(table(results))
    print(
        f"flow_overhead_share {results['flow_overhead_share']:.3f}, cached_rerun_share "
        f"{results['cached_rerun_share']:.3f}; imports {raw['imports_s']:.1f} s and local "
        f"server start {raw['server_start_s']:.1f} s are before the timings, in neither."
    )
    parameters = {
        "rounds": args.flow_rounds,
        "scale": args.scale,
        "database": database,
        "config": minimal_config(Path("WORK_DIR"), args.scale),
    }
    write_results(NAME, parameters, results)
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = command_line(NAME, __doc__)
    add_arguments(parser)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args.child / "raw.json", args.child, args.flow_rounds, args.scale, args.database_url)
        return
    run(args)


if __name__ == "__main__":
    main()
