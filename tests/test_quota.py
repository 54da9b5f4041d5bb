import pytest

from pipeline_lib.quota import quota_steps_reached


def test_steps_are_multiples_of_every_up_to_the_committed_count():
    assert quota_steps_reached(0, 16, 64) == []
    assert quota_steps_reached(15, 16, 64) == []
    assert quota_steps_reached(33, 16, 64) == [16, 32]


def test_the_final_quota_is_a_step_even_off_the_grid():
    assert quota_steps_reached(50, 16, 50) == [16, 32, 48, 50]
    assert quota_steps_reached(80, 16, 64) == [16, 32, 48, 64]


def test_bad_every_is_an_error():
    with pytest.raises(ValueError, match="every"):
        quota_steps_reached(10, 0, 10)


def _fake_generator(path, kept: int):
    """Commits shards of 4 draws of which QA keeps ``kept``."""
    import numpy as np
    from store_fakes import SIZE, fake_shard

    from pipeline_lib.store import ShardData, commit_shard, create_or_open_store

    store = create_or_open_store(path, shard_size=4, height=SIZE, width=SIZE)

    def make(shard_id: int):
        if kept:
            return commit_shard(store, fake_shard(shard_id, kept, rejected=4 - kept))
        empty = ShardData(
            shard_id,
            np.zeros((0, SIZE, SIZE, 3), np.uint8),
            np.zeros((0, SIZE, SIZE), np.uint8),
            rows=(),
            attempts=4,
            rejected={"off_palette": 4},
        )
        return commit_shard(store, empty)

    return make


def test_generation_to_quota_tops_up_rounds_that_rejections_left_short(tmp_path):
    from pipeline_lib.quota import generate_to_quota

    seen = []
    run = generate_to_quota(
        tmp_path / "s", 16, 4, _fake_generator(tmp_path / "s", kept=3), lambda r, c: seen.append(c)
    )
    assert run.committed == 18 and run.shards_written == 6 and run.rejected == 6
    assert seen == [3, 6, 9, 12, 15, 18]
    again = generate_to_quota(tmp_path / "s", 16, 4, _fake_generator(tmp_path / "s", kept=3))
    assert (again.committed, again.shards_written) == (18, 0), "a re-run resumes"


def test_generation_stops_with_an_error_when_qa_rejects_every_draw(tmp_path):
    from pipeline_lib.errors import FactoryError
    from pipeline_lib.quota import generate_to_quota

    with pytest.raises(FactoryError, match="QA rejected every draw"):
        generate_to_quota(tmp_path / "s", 8, 4, _fake_generator(tmp_path / "s", kept=0))


def test_a_round_staged_side_by_side_commits_each_shard_once_as_it_comes(tmp_path):
    """As on Dask: every shard of a round is staged before any is committed, and the
    commits come in whatever order the stagings finish."""
    from functools import partial

    from store_fakes import SIZE, fake_shard

    from pipeline_lib.quota import generate_to_quota
    from pipeline_lib.store import create_or_open_store
    from pipeline_lib.store.shard_writer import commit_staged_shard, stage_shard

    store = create_or_open_store(tmp_path / "s", shard_size=4, height=SIZE, width=SIZE)
    rounds, seen = [], []

    def side_by_side(shard_ids):
        rounds.append(list(shard_ids))
        staged = [stage_shard(store, fake_shard(k, 3, rejected=1)) for k in shard_ids]
        for shard in reversed(staged):
            yield partial(commit_staged_shard, store, shard)

    def record(result, committed):
        seen.append((result.shard_id, committed))

    run = generate_to_quota(store.path, 16, 4, on_shard=record, run_round=side_by_side)
    assert rounds == [[0, 1, 2, 3], [4], [5]]
    assert seen == [(3, 3), (2, 6), (1, 9), (0, 12), (4, 15), (5, 18)]
    assert (run.committed, run.shards_written, run.rejected) == (18, 6, 6)
    with pytest.raises(TypeError, match="either make_shard or run_round"):
        generate_to_quota(store.path, 16, 4)
