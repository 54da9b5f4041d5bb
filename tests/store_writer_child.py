"""A child process for the kill tests: commits fake shards into a store.

``--die-before-commit K`` SIGKILLs the process after shard K's arrays are written and
before its manifest is, the worst moment for exactly-once. ``--stage K`` only stages
shard K and prints the StagedShard (pickled, base64); with ``--hold-until PATH`` it then
keeps the shard's claim until PATH appears and SIGKILLs itself.
"""

from __future__ import annotations

import argparse
import base64
import os
import pickle
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from store_fakes import SIZE, fake_shard  # noqa: E402

from pipeline_lib.store import (  # noqa: E402
    commit_shard,
    create_or_open_store,
    plan_shards,
    shard_writer,  # noqa: E402
    stage_shard,
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("--samples", type=int, required=True)
    parser.add_argument("--shard-size", type=int, default=4)
    parser.add_argument("--kept", type=int, default=3, help="kept samples per shard")
    parser.add_argument("--only", type=int, nargs="*", help="write only these shard ids")
    parser.add_argument("--die-before-commit", type=int, default=None)
    parser.add_argument("--stage", type=int, default=None)
    parser.add_argument("--hold-until", type=Path, default=None)
    args = parser.parse_args()

    if args.die_before_commit is not None:
        real_write = shard_writer.write_manifest

        def write_or_die(store, shard_id, rows, meta):
            if shard_id == args.die_before_commit:
                os.kill(os.getpid(), signal.SIGKILL)
            return real_write(store, shard_id, rows, meta)

        shard_writer.write_manifest = write_or_die

    store = create_or_open_store(args.store, shard_size=args.shard_size, height=SIZE, width=SIZE)
    if args.stage is not None:
        staged = stage_shard(store, fake_shard(args.stage, args.kept))
        print(base64.b64encode(pickle.dumps(staged)).decode(), flush=True)
        while args.hold_until is not None:
            if args.hold_until.exists():
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.01)
        return
    plan = plan_shards(args.store, args.samples, args.shard_size)
    for shard_id in plan:
        if args.only is None or shard_id in args.only:
            commit_shard(store, fake_shard(shard_id, args.kept))


if __name__ == "__main__":
    main()
