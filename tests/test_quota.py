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
