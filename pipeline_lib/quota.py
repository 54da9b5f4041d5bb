"""Sample quotas: generating shards until a store holds the quota, and which validation
steps a count of committed samples has reached."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from pipeline_lib.errors import FactoryError, ShardClaimedError
from pipeline_lib.store.claims import shard_is_claimed
from pipeline_lib.store.object_store import location
from pipeline_lib.store.shard_writer import ShardResult
from pipeline_lib.store.store import committed_count, plan_shards

log = logging.getLogger(__name__)

# How often a run whose remaining shards other writers hold looks again.
WAIT_POLL_S = 0.5

# One shard of a round: called, it returns the shard once committed, or raises
# (ShardClaimedError when another writer holds the shard).
ShardOutcome = Callable[[], ShardResult]
# Runs a round of shard ids: one outcome per shard, yielded as each is ready to commit.
ShardRound = Callable[[list[int]], Iterable[ShardOutcome]]


def quota_steps_reached(committed: int, every: int, quota: int) -> list[int]:
    """Every multiple of ``every`` up to ``min(committed, quota)``, plus the quota itself.

    Validation runs once per step; the final quota is a step even when it is not a
    multiple of ``every``, so the finished data set is always validated.
    """
    if every < 1 or quota < 1:
        raise ValueError(f"every and quota must be >= 1 (got {every}, {quota})")
    reached = min(committed, quota)
    steps = list(range(every, reached + 1, every))
    if committed >= quota and quota not in steps:
        steps.append(quota)
    return steps


@dataclass(frozen=True)
class QuotaRun:
    """What one generate-to-quota run did."""

    store: Path | str
    committed: int
    shards_written: int
    rejected: int


def one_by_one(make_shard: Callable[[int], ShardResult]) -> ShardRound:
    """A round in which ``make_shard(k)`` generates and commits each shard in turn, in this
    process; a shard starts only when the previous one is committed."""

    def run_round(shard_ids: list[int]) -> Iterator[ShardOutcome]:
        for shard_id in shard_ids:
            yield partial(make_shard, shard_id)

    return run_round


def generate_to_quota(
    store: str | Path,
    quota: int,
    shard_size: int,
    make_shard: Callable[[int], ShardResult] | None = None,
    on_shard: Callable[[ShardResult, int], None] | None = None,
    *,
    run_round: ShardRound | None = None,
) -> QuotaRun:
    """Generate and commit each shard the store lacks until it holds ``quota`` samples; a
    re-run resumes where a run stopped.

    ``make_shard(k)`` generates and commits shard k, one shard after another; or
    ``run_round(ids)`` runs a whole round of shards, e.g. side by side on Dask (see
    ``ShardRound``). Rejected draws can leave a round short of the quota, so rounds repeat
    with new shards, until a whole round commits nothing (then QA rejects everything and
    more rounds would not help). ``on_shard(result, committed)`` runs after each shard this
    run committed: the CLI moves a progress bar there, the flow publishes artifacts and
    starts validations.

    Runs on one store at once share the work: a shard another live writer has claimed is
    left to it, and when only such shards remain this waits for them to be committed
    (or for their writer to die, and then writes them itself).
    """
    if (make_shard is None) == (run_round is None):
        raise TypeError("generate_to_quota takes either make_shard or run_round")
    run_round = run_round or one_by_one(make_shard)
    store = location(store)
    written = rejected = 0
    waiting_for: list[int] = []
    while plan := plan_shards(store, quota, shard_size, top_up=True):
        free = [k for k in plan if not shard_is_claimed(store, k)]
        if not free:
            if plan != waiting_for:
                log.info("%s: waiting for other writers to commit shard(s) %s", store, plan)
                waiting_for = plan
            time.sleep(WAIT_POLL_S)
            continue
        before = committed_count(store)
        skipped = 0
        for outcome in run_round(free):
            try:
                result = outcome()
            except ShardClaimedError:  # another writer claimed it since the plan
                skipped += 1
                continue
            if result.already_committed:  # another writer committed it since the plan
                continue
            written, rejected = written + 1, rejected + result.rejected
            if on_shard is not None:
                on_shard(result, committed_count(store))
        if not skipped and committed_count(store) == before:
            raise FactoryError(
                f"{store}: QA rejected every draw of shards {free}; relax generation.qa or "
                "train the label LoRA longer (lfactory store stats shows the reasons)"
            )
    return QuotaRun(store, committed_count(store), written, rejected)
