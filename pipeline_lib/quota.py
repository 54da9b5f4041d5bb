"""Sample quotas: which validation steps a count of committed samples has reached."""

from __future__ import annotations


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
