"""Shard claims: at most one writer stages, commits or repairs a shard at any moment.

A claim is the file ``claims/shard-00007.claim``, and its writer holds an exclusive
``flock`` on it. The kernel drops that lock when the process ends, SIGKILL included, so a
claim file whose lock is free belongs to a writer that is gone and is taken over; no pid,
host name or clock is trusted (pids repeat, containers share hosts, clocks drift). The
file's JSON says who claimed the shard (for people) and carries a token: the commit may
run in another process than the staging (a Prefect task on another worker) and proves its
right to the shard by the token.

On an object store (``s3://...``) there is no flock: claims there are leases
(``leases.py``), and each function below hands such a store over to that module.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from pipeline_lib.errors import ShardClaimedError
from pipeline_lib.store import leases
from pipeline_lib.store.manifest import is_committed
from pipeline_lib.store.object_store import is_url, join, location
from pipeline_lib.store.store import store_lock

log = logging.getLogger(__name__)

CLAIM_DIR = leases.CLAIM_DIR
# A claim is written whole under this name and then linked into place.
_PENDING = ".pending"
# A reader probing a claim holds its lock for microseconds; a taker retries past that.
_TAKEOVER_TRIES = 5

# The claims this process holds: claim path -> (token, descriptor holding the flock).
_held: dict[Path, tuple[str, int]] = {}
_held_guard = threading.Lock()


@dataclass(frozen=True)
class ShardClaim:
    """Who claimed a shard: the token proves it, the rest tells a person."""

    shard_id: int
    token: str
    pid: int
    host: str
    since: str

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} (since {self.since})"

    @classmethod
    def from_record(cls, record: dict | None) -> ShardClaim | None:
        try:
            return cls(*(record[k] for k in ("shard_id", "token", "pid", "host", "since")))
        except (KeyError, TypeError):  # absent, or not a claim we wrote
            return None


def claim_path(store: str | Path, shard_id: int) -> Path | str:
    return join(location(store), CLAIM_DIR, leases.claim_name(shard_id))


def claim_files(store: str | Path) -> list[tuple[int, Path | str]]:
    """(shard id, path) of every claim file and every claim being written, sorted."""
    if is_url(store):
        return [(k, claim_path(store, k)) for k in leases.claim_ids(location(store))]
    folder = Path(store) / CLAIM_DIR
    if not folder.is_dir():
        return []
    ids = ((leases.claim_id(path.name), path) for path in folder.iterdir())
    return sorted((k, path) for k, path in ids if k is not None)


def read_claim(store: str | Path, shard_id: int) -> ShardClaim | None:
    """The claim recorded for ``shard_id`` (held or not), or None without a readable one."""
    if is_url(store):
        return ShardClaim.from_record(leases.read_claim(location(store), shard_id))
    return _read(claim_path(store, shard_id))


def is_held(path: str | Path) -> bool:
    """Whether a live process holds the claim (or pending claim) file at ``path``."""
    if is_url(path):  # <store url>/claims/shard-00007.claim
        store, _, name = str(path).rpartition(f"/{CLAIM_DIR}/")
        return leases.is_live(leases.read_claim(store, leases.claim_id(name)))
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)  # closing drops the probe's own lock
    return False


def shard_is_claimed(store: str | Path, shard_id: int) -> bool:
    """Whether a live writer (this process included) holds shard ``shard_id``'s claim."""
    return is_held(claim_path(store, shard_id))


def claim_shard(
    store: str | Path, shard_id: int, token: str | None = None, *, store_locked: bool = False
) -> ShardClaim | None:
    """Claim shard ``shard_id`` for this process, or None while a live writer holds it.

    With ``token`` (a staged shard's), a claim holding that token is this writer's own:
    it is adopted even while the process that staged it still holds its lock. A claim
    whose writer is gone is taken over under the store lock (``store_locked``: the caller
    holds it already). The caller checks for a commit after claiming: a shard committed
    meanwhile stays committed.
    """
    if is_url(store):
        return ShardClaim.from_record(leases.claim_shard(location(store), shard_id, token))
    path = claim_path(store, shard_id)
    _prune()
    with _held_guard:
        held = _held.get(path)
    if held is not None:  # another call of this process holds it, or this very writer
        return _read(path) if held[0] == token else None
    mine = token or uuid.uuid4().hex
    for _ in range(_TAKEOVER_TRIES):
        claim = _link_new(path, shard_id, mine)
        if claim is not None:
            return claim
        found = _read(path)
        if token is not None and found is not None and found.token == token:
            return _adopt(path, found)
        if store_locked:
            clear = _remove_if_gone(path, found)
        else:
            with store_lock(store):
                clear = _remove_if_gone(path, found)
        if not clear:
            return None
    return None


def release_claim(store: str | Path, shard_id: int, token: str) -> None:
    """Give shard ``shard_id``'s claim up, if ``token`` still holds it."""
    if is_url(store):
        return leases.release_claim(location(store), shard_id, token)
    path = claim_path(store, shard_id)
    with _held_guard:
        held = _held.get(path)
        if held is not None and held[0] == token:
            del _held[path]
        else:
            held = None
    found = _read(path)
    if found is not None and found.token == token:
        path.unlink(missing_ok=True)  # before the lock goes: no one takes over a released claim
    if held is not None:
        os.close(held[1])


def require_claim(
    store: str | Path, shard_id: int, token: str | None = None, *, store_locked: bool = False
) -> ShardClaim:
    """:func:`claim_shard`, raising ShardClaimedError (naming the holder) instead of None."""
    claim = claim_shard(store, shard_id, token, store_locked=store_locked)
    if claim is not None:
        return claim
    holder = read_claim(store, shard_id)
    who = holder.describe() if holder is not None else "another writer"
    raise ShardClaimedError(
        f"{claim_path(store, shard_id)}: shard {shard_id} is being written by {who}; "
        "that run commits it (wait for it, or stop it and run again)"
    )


def confirm_claim(store: str | Path, shard_id: int, token: str) -> None:
    """Make sure ``token`` still holds shard ``shard_id``'s claim right before committing:
    a flock cannot be lost; a lease is renewed now (ShardClaimedError if it was taken over)."""
    if is_url(store):
        leases.renew(location(store), shard_id, token)


def claim_uncommitted(store: str | Path, shard_id: int) -> ShardClaim | None:
    """Shard ``shard_id``'s claim for writing it, or None when the shard is committed
    (before the claim, or by the writer that held it before); ShardClaimedError while a
    live writer holds it."""
    if is_committed(store, shard_id):
        return None
    claim = require_claim(store, shard_id)
    if is_committed(store, shard_id):
        release_claim(store, shard_id, claim.token)
        return None
    return claim


def _link_new(path: Path, shard_id: int, token: str) -> ShardClaim | None:
    """A claim written whole and locked under a pending name, then linked into place:
    no reader ever sees an empty or unlocked claim file. None when one exists."""
    claim = ShardClaim(shard_id, token, os.getpid(), socket.gethostname(), _now())
    path.parent.mkdir(parents=True, exist_ok=True)
    pending = path.with_name(f".{path.name}.{uuid.uuid4().hex}{_PENDING}")
    descriptor = os.open(pending, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        os.write(descriptor, json.dumps(asdict(claim)).encode())
        os.link(pending, path)
    except FileExistsError:
        os.close(descriptor)
        return None
    except BaseException:
        os.close(descriptor)
        raise
    finally:
        pending.unlink(missing_ok=True)
    with _held_guard:
        _held[path] = (token, descriptor)
    return claim


def _adopt(path: Path, claim: ShardClaim) -> ShardClaim:
    """Hold our own claim's lock if its stager is gone; if the stager still holds it, no
    one else can take the claim over, and the commit runs under the store lock."""
    descriptor = _lock_current(path)
    if descriptor is not None:
        with _held_guard:
            _held[path] = (claim.token, descriptor)
    return claim


def _remove_if_gone(path: Path, found: ShardClaim | None) -> bool:
    """Delete the claim file at ``path`` if its writer is gone (the caller holds the store
    lock); whether the way is clear (False while a live writer holds it)."""
    descriptor = _lock_current(path)
    if descriptor is None:
        return not path.exists()
    try:
        who = found.describe() if found is not None else "an unknown writer"
        log.warning("%s: the claim of %s, which is gone, is taken over", path, who)
        path.unlink()  # still the file we locked: _lock_current checked
    finally:
        os.close(descriptor)
    return True


def _lock_current(path: Path) -> int | None:
    """A descriptor holding the exclusive lock of the file now at ``path``, or None when
    a live process holds it or no file is there."""
    for _ in range(_TAKEOVER_TRIES):
        try:
            descriptor = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            time.sleep(0.01)  # perhaps only a probe of is_held
            continue
        try:
            if os.fstat(descriptor).st_ino == os.stat(path).st_ino:
                return descriptor
        except FileNotFoundError:
            pass
        os.close(descriptor)  # the file was replaced or released meanwhile
        return None
    return None


def _prune() -> None:
    # A claim this process staged may have been committed (and its file removed) by
    # another process: its lock is no longer needed.
    with _held_guard:
        for path, (_, descriptor) in list(_held.items()):
            try:
                current = os.stat(path).st_ino == os.fstat(descriptor).st_ino
            except FileNotFoundError:
                current = False
            if not current:
                del _held[path]
                os.close(descriptor)


def _read(path: Path) -> ShardClaim | None:
    try:
        return ShardClaim(**json.loads(path.read_text()))
    except (FileNotFoundError, ValueError, TypeError):  # gone, or not a claim we wrote
        return None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
