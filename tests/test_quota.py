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
