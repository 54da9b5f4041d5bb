"""What Prefect adds to a call: a library function called directly vs as a task in a flow.

The function is ``committed_count`` on a tiny store (it reads two Parquet footers), so
the difference is almost all orchestration. Inside one flow on a temporary Prefect server
(its own SQLite database), each of K rounds calls it directly, as a plain task, and as a
task with a cache key and a persisted result (as the factory's tasks run), interleaved so
that load on the machine hits all three alike.

    python -m bench.flow_overhead --calls 100
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path
from statistics import fmean, median
from typing import Any

import numpy as np

from bench.cli import command_line, positive_int
from bench.report import format_table, write_results
from bench.store_vs_png import make_samples, write_store
from bench.timing import timed
from pipeline_lib.store import committed_count

NAME = "flow_overhead"
STORE_SHARDS, STORE_SHARD_SIZE, STORE_SIZE = 2, 4, 16


def isolate_prefect(home: Path) -> None:
    """Point Prefect at a throw-away home, offline, before anything imports it."""
    os.environ["PREFECT_HOME"] = str(home)
    os.environ.pop("PREFECT_API_URL", None)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
    # Task-run log lines still go to the API; only the console is kept quiet.
    os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "WARNING"
    os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_FLOW_RUNS_LEVEL"] = "WARNING"


def make_store(root: Path, seed: int) -> Path:
    """A tiny committed store for ``committed_count`` to count."""
    n = STORE_SHARDS * STORE_SHARD_SIZE
    images, labels = make_samples(n, STORE_SIZE, seed)
    args = argparse.Namespace(shard_size=STORE_SHARD_SIZE, seed=seed)
    write_store(root, images, labels, args)
    return root


def count(store: Path, call: int) -> int:
    """The measured work; ``call`` only makes each call's cache key distinct."""
    return committed_count(store)


WAYS = ("direct", "task", "cached_task")  # as timed inside the flow


def time_rounds(calls: Sequence[Callable[[Path, int], Any]], store: Path, rounds: int) -> list:
    """Seconds of each call of each of ``calls``, after one untimed warm-up round.

    Calls are interleaved round by round so that a burst of load on the machine (or the
    server's background work) hits every way of calling alike.
    """
    times: list[list[float]] = [[] for _ in calls]
    for i in range(-1, rounds):
        for fn, out in zip(calls, times, strict=True):
            start = time.perf_counter()
            fn(store, i)
            if i >= 0:
                out.append(time.perf_counter() - start)
    return times


def build_flows():
    """The flows measured (Prefect is imported here, after ``isolate_prefect``).

    The measuring flow times its own calls, so flow start-up is not in the per-call numbers.
    """
    from prefect import flow, task
    from prefect.cache_policies import INPUTS

    plain = task(count, name="committed-count")
    cached = task(count, name="committed-count-cached", cache_policy=INPUTS, persist_result=True)

    @flow(name="bench-calls")
    def calls_flow(store: Path, rounds: int) -> list:
        return time_rounds((count, plain, cached), store, rounds)

    @flow(name="bench-empty")
    def empty_flow() -> None:
        return None

    return calls_flow, empty_flow


def database_path() -> Path:
    """The SQLite file of the server the current settings point at."""
    import prefect.settings

    url = prefect.settings.PREFECT_SERVER_DATABASE_CONNECTION_URL.value()
    return Path(url.split("///", 1)[1])


def settle(database: Path, quiet_s: float = 1.5, limit_s: float = 30.0) -> None:
    """Wait until the server's database and its log stay unchanged for ``quiet_s``.

    Task-run events are recorded in the background; a server stopped mid-flush logs errors.
    """
    files = [database, database.with_name(database.name + "-wal")]

    def state() -> list[tuple[int, int]]:
        return [(p.stat().st_size, p.stat().st_mtime_ns) if p.exists() else (0, 0) for p in files]

    deadline = time.monotonic() + limit_s
    last = state()
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = state()
        if now == last:
            return
        last = now


def checkpointed_size(database: Path) -> int:
    """Bytes of the SQLite file once its write-ahead log is folded in (size without WAL)."""
    with closing(sqlite3.connect(database)) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return database.stat().st_size


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Direct calls before Prefect starts, then three ways of calling inside one flow."""
    isolate_prefect(workdir / "prefect-home")
    store = make_store(workdir / "store", args.seed)
    (bare,) = time_rounds((count,), store, args.calls)

    from prefect.testing.utilities import prefect_test_harness

    calls_flow, empty_flow = build_flows()
    start = time.perf_counter()
    with prefect_test_harness(server_startup_timeout=120):
        server_start = time.perf_counter() - start
        first_flow = timed(empty_flow)
        empty = [timed(empty_flow) for _ in range(args.flows)]
        database = database_path()
        settle(database)
        before = checkpointed_size(database)
        times = calls_flow(store, args.calls)
        settle(database)
    task_runs = 2 * (args.calls + 1)
    grown = checkpointed_size(database) - before
    return {
        "server_start_s": server_start,
        "first_flow_run_s": first_flow,
        "empty_flow_run_ms": [t * 1e3 for t in empty],
        **{f"{way}_ms": [t * 1e3 for t in ts] for way, ts in zip(WAYS, times, strict=True)},
        "bare_direct_ms": [t * 1e3 for t in bare],
        "task_runs": task_runs,
        "database_growth_bytes": grown,
        "database_bytes_per_task_run": grown / task_runs,
    }


ROWS = (
    ("direct, before Prefect starts", "bare_direct_ms"),
    ("direct, inside the flow", "direct_ms"),
    ("task in a flow", "task_ms"),
    ("task, cache key + persisted result", "cached_task_ms"),
)
BASELINE = "bare_direct_ms"


def summary(raw: dict[str, Any]) -> dict[str, Any]:
    """Median, mean and p90 of each list of times; added ms and ratio against the baseline."""
    out: dict[str, Any] = {}
    for key in (*(k for _, k in ROWS), "empty_flow_run_ms"):
        out[f"{key}_median"] = median(raw[key])
        out[f"{key}_mean"] = fmean(raw[key])
        out[f"{key}_p90"] = float(np.percentile(raw[key], 90))
    base = out[f"{BASELINE}_median"]
    for _, key in ROWS:
        out[f"{key}_added_median"] = out[f"{key}_median"] - base
        out[f"{key}_ratio_median"] = out[f"{key}_median"] / base
    return out


def table(numbers: dict[str, Any]) -> str:
    """Per-call times of each way of calling, with the added ms and the ratio to direct."""
    headers = ["way of calling", "median ms", "mean ms", "p90 ms", "added ms", "ratio"]
    rows = [
        [label, *(numbers[f"{key}_{stat}"] for stat in ("median", "mean", "p90", "added_median"))]
        + [numbers[f"{key}_ratio_median"]]
        for label, key in ROWS
    ]
    return format_table(headers, rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--calls",
        type=positive_int,
        default=100,
        help="timed calls per way of calling (default 100)",
    )
    parser.add_argument(
        "--flows", type=positive_int, default=5, help="empty flow runs timed (default 5)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples (default 0)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure in a temporary folder, print the table, write the JSON; return the results."""
    with tempfile.TemporaryDirectory(
        prefix="lfactory-bench-flow-", ignore_cleanup_errors=True
    ) as tmp:
        raw = measure(args, Path(tmp))
    numbers = summary(raw)
    print(
        f"Prefect overhead: committed_count on a {STORE_SHARDS}-shard store, "
        f"{args.calls} calls each way"
    )
    print(table(numbers))
    print(
        textwrap.fill(
            f"temporary server start {raw['server_start_s']:.1f} s; first flow run "
            f"{raw['first_flow_run_s'] * 1e3:.0f} ms; empty flow run "
            f"{numbers['empty_flow_run_ms_median']:.0f} ms (median of {args.flows}); "
            f"SQLite grew {raw['database_growth_bytes'] / 2**20:.2f} MiB over the measured "
            f"flow's {raw['task_runs']} task runs: "
            f"{raw['database_bytes_per_task_run'] / 1024:.1f} KiB per task run.",
            width=100,
        )
    )
    parameters = {k: getattr(args, k) for k in ("calls", "flows", "seed")}
    parameters["store"] = {
        "shards": STORE_SHARDS,
        "shard_size": STORE_SHARD_SIZE,
        "size": STORE_SIZE,
    }
    write_results(NAME, parameters, {**numbers, "raw": raw})
    return numbers


def main(argv: Sequence[str] | None = None) -> None:
    parser = command_line(NAME, __doc__)
    add_arguments(parser)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
