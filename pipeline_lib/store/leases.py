"""Shard claims on object stores: lease objects, created and renewed by compare-and-swap.

There is no flock across machines, so a claim is the object ``claims/shard-00007.claim``
holding its token and an expiry (``expires``, Unix seconds). It is created only if absent
(``If-None-Match``); its writer renews it every third of a lease by replacing exactly the
version it wrote (``If-Match``), so a claim someone else took over is never renewed; a
claim past its expiry (plus a grace for clocks that disagree) belongs to a writer that
is gone, and whoever replaces that expired version first holds the shard.

The guarantee is that of any lease: it holds while a writer does not stall for longer
than a lease between its last renewal and its writes. The commit renews right before it
checks the staged bytes and publishes, and the manifest's own conditional create
means a shard is committed at most once whatever the claims say.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pipeline_lib.errors import ConfigError, ShardClaimedError
from pipeline_lib.store.object_store import ObjectRoot, object_root

log = logging.getLogger(__name__)

CLAIM_DIR = "claims"


def _lease_seconds() -> float:
    raw = os.environ.get("LFACTORY_CLAIM_LEASE_S", "60")
    try:
        seconds = float(raw)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ConfigError(
            f"LFACTORY_CLAIM_LEASE_S={raw!r}: a claim's lease is a positive number of seconds "
            "(default 60); set it so or unset it"
        )
    return seconds


# Seconds a claim lives without renewal; a killed writer's shard is taken over after it.
LEASE_S = _lease_seconds()


@dataclass
class _Lease:
    """A claim this process holds: the version it last wrote, renewed by a thread."""

    root: ObjectRoot
    shard_id: int
    token: str
    record: dict
    etag: str
    lost: bool = False
    stop: threading.Event = field(default_factory=threading.Event)
    guard: threading.Lock = field(default_factory=threading.Lock)


_held: dict[tuple[int, str, int], _Lease] = {}
_held_guard = threading.Lock()


def claim_name(shard_id: int) -> str:
    return f"shard-{shard_id:05d}.claim"


def claim_id(name: str) -> int | None:
    """The shard id in a claim's name (or a pending claim's, ``.shard-00007.claim.*``),
    None for any other name."""
    name = name.lstrip(".")
    digits = name.removeprefix("shard-")[:5]
    return int(digits) if name.startswith("shard-") and digits.isdigit() else None


def claim_ids(url: str) -> list[int]:
    """Shard ids that have a claim object (live or expired), sorted."""
    names = object_root(url).names(CLAIM_DIR)
    ids = (claim_id(n) for n in names if n.endswith(".claim"))
    return sorted(k for k in ids if k is not None)


def read_claim(url: str, shard_id: int) -> dict | None:
    """The claim record of ``shard_id`` (live or expired), or None."""
    return _read(object_root(url), shard_id)[0]


def is_live(record: dict | None) -> bool:
    """Whether a claim record's writer still holds it: not past expiry and the grace."""
    return record is not None and time.time() <= float(record["expires"]) + LEASE_S / 2


def claim_shard(url: str, shard_id: int, token: str | None = None) -> dict | None:
    """Claim ``shard_id``, or None while a live writer holds it; ``token``: adopt our own
    claim (a staged shard's), recreating it if it was released or expired meanwhile."""
    root = object_root(url)
    with _held_guard:
        held = _held.get((os.getpid(), url, shard_id))
    if held is not None and not held.lost:
        return held.record if held.token == token else None
    mine = token or uuid.uuid4().hex
    for _ in range(5):
        record = _record(shard_id, mine)
        etag = root.create(_key(shard_id), _encode(record))
        if etag is not None:
            return _hold(root, shard_id, record, etag)
        found, found_etag = _read(root, shard_id)
        if found is None:
            continue  # released between our create and our read: try again
        if found.get("token") == mine:  # our own, staged by another process: adopt it
            record = {**record, "since": found.get("since", record["since"])}
        elif is_live(found):
            return None
        else:
            log.warning(
                "%s: shard %d's claim of a writer that is gone is taken over", url, shard_id
            )
        etag = root.replace(_key(shard_id), _encode(record), found_etag)
        if etag is not None:
            return _hold(root, shard_id, record, etag)
        # someone else replaced it first: look again
    return None


def renew(url: str, shard_id: int, token: str) -> None:
    """Renew our claim on ``shard_id`` now, for a whole lease from here; ShardClaimedError
    if it is no longer ours (OSError if the store cannot be reached)."""
    with _held_guard:
        lease = _held.get((os.getpid(), url, shard_id))
    if lease is None or lease.token != token or not _renew(lease):
        raise ShardClaimedError(
            f"{url}/{CLAIM_DIR}/{claim_name(shard_id)}: this writer's claim on shard "
            f"{shard_id} expired and was taken over (it stalled for over {LEASE_S:g} s); "
            "its new writer commits the shard"
        )


def release_claim(url: str, shard_id: int, token: str) -> None:
    """Give our claim up: stop renewing, and delete the claim if it is still the version we
    wrote (a claim someone took over stays theirs)."""
    key = (os.getpid(), url, shard_id)
    with _held_guard:
        lease = _held.pop(key) if key in _held and _held[key].token == token else None
    root = object_root(url)
    if lease is not None:
        lease.stop.set()
        with lease.guard:
            root.delete(*_key(shard_id), etag=lease.etag)
        return
    found, etag = _read(root, shard_id)
    if found is not None and found.get("token") == token:
        root.delete(*_key(shard_id), etag=etag)


def _key(shard_id: int) -> tuple[str, str]:
    return (CLAIM_DIR, claim_name(shard_id))


def _record(shard_id: int, token: str) -> dict:
    now = datetime.now(UTC).isoformat(timespec="seconds")
    return {
        "shard_id": shard_id,
        "token": token,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": now,
        "expires": time.time() + LEASE_S,
    }


def _encode(record: dict) -> bytes:
    return json.dumps(record).encode()


def _read(root: ObjectRoot, shard_id: int) -> tuple[dict | None, str | None]:
    # The ETag is read before the body: a body newer than the ETag makes the later
    # If-Match fail, never succeed on a stale view.
    try:
        etag = root.etag(*_key(shard_id))
        record = json.loads(root.read(*_key(shard_id)))
    except FileNotFoundError:
        return None, None
    except ValueError:  # not a claim this code wrote: treat as expired
        return {"expires": 0}, etag
    return record, etag


def _hold(root: ObjectRoot, shard_id: int, record: dict, etag: str) -> dict:
    lease = _Lease(root, shard_id, record["token"], record, etag)
    with _held_guard:
        _held[(os.getpid(), root.url, shard_id)] = lease
    thread = threading.Thread(target=_keep_renewing, args=(lease,), daemon=True)
    thread.start()
    return record


def _renew(lease: _Lease) -> bool:
    with lease.guard:
        if lease.lost or lease.stop.is_set():
            return False
        record = {**lease.record, "expires": time.time() + LEASE_S}
        etag = lease.root.replace(_key(lease.shard_id), _encode(record), lease.etag)
        if etag is None:  # taken over, or adopted by the process committing our staging
            lease.lost = True
            log.warning(
                "%s: the claim on shard %d is no longer this process's",
                lease.root.url,
                lease.shard_id,
            )
            return False
        lease.record, lease.etag = record, etag
        return True


def _keep_renewing(lease: _Lease) -> None:
    while not lease.stop.wait(LEASE_S / 3):
        try:
            if not _renew(lease):
                return
        except OSError as error:  # a network hiccup: the next try may get through
            log.warning("renewing the claim on shard %d failed: %s", lease.shard_id, error)
