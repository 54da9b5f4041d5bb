"""Errors a user can cause, each with a message that says what to do.

Every error mixes in the built-in type a caller would naturally catch, so
``except FileNotFoundError`` still works. The CLI turns any ``FactoryError`` into
one line on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterable


class FactoryError(Exception):
    """Base class of every error the factory raises on bad input or state."""


class ConfigError(FactoryError, ValueError):
    """A config file is missing a key, has an unknown one, or a bad value."""


class DataError(FactoryError, ValueError):
    """A data set on disk is incomplete or malformed.

    ``problems`` holds one line per offending path, so a caller can print them all.
    """

    def __init__(self, message: str, problems: Iterable[str] = ()):
        self.problems = list(problems)
        text = message
        if self.problems:
            text += "\n" + "\n".join(f"  {p}" for p in self.problems)
        super().__init__(text)


class CheckpointError(FactoryError, FileNotFoundError):
    """A model directory is incomplete or is not the kind of model expected."""


class TrainingDivergedError(FactoryError, ArithmeticError):
    """A training loss became NaN or infinite, or jumped far above its best; the last good
    checkpoint is kept."""


class GpuMemoryError(FactoryError, MemoryError):
    """A step ran out of GPU memory and cannot shrink its batch without changing its result."""


class StoreError(FactoryError):
    """The shard store is missing, inconsistent or was asked for something it lacks."""


class ShardNotFoundError(StoreError, FileNotFoundError):
    """A shard or sample id is not committed in the store."""


class ShardClaimedError(StoreError, FileExistsError):
    """Another live writer holds the shard's claim: it generates and commits that shard."""


class ManifestExistsError(StoreError, FileExistsError):
    """Another writer committed the shard first (object stores): its manifest stands."""


class StoreWriteError(StoreError, OSError):
    """The disk refused a store write (full, read-only, no permission); nothing was committed."""


class IntegrityError(StoreError, ValueError):
    """Committed bytes no longer match their manifest checksums."""


class BackendUnavailableError(FactoryError, NotImplementedError):
    """An optional compiled backend (e.g. an mmcv CUDA op) is not installed here."""
