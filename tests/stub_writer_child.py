"""A child process for the concurrent-writer tests: ``lfactory generate`` with a stub model.

Everything but the two model calls is the real command: the quota loop, claims, the
generator's draws and QA, staging and commits. Labels and images come from
label_stubs.StubGenerator, each label batch slowed by ``--delay`` seconds so that two
writers interleave. ``--ready``/``--go``: touch the first once imported, then wait for the
second, so that two children start generating together however long their imports take.

Every manifest this process writes (its commits) is appended to ``--log`` as a shard id;
``--die-at-commit N`` logs ``dying K`` and SIGKILLs the process as it is about to write its
N-th manifest: shard K's arrays are staged and its claim is held.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from label_stubs import StubGenerator  # noqa: E402

import pipeline_lib.generate  # noqa: E402
from lfactory.cli import main as lfactory  # noqa: E402
from pipeline_lib.store import shard_writer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per label batch")
    parser.add_argument("--die-at-commit", type=int, default=None)
    parser.add_argument("--ready", type=Path, required=True)
    parser.add_argument("--go", type=Path, required=True)
    args, command = parser.parse_known_args()

    real_write = shard_writer.write_manifest
    commits = 0

    def write_and_log(store, shard_id, rows, meta):
        nonlocal commits
        commits += 1
        if commits == args.die_at_commit:
            with args.log.open("a") as log:
                log.write(f"dying {shard_id}\n")
            os.kill(os.getpid(), signal.SIGKILL)
        path = real_write(store, shard_id, rows, meta)
        with args.log.open("a") as log:
            log.write(f"{shard_id}\n")
        return path

    class SlowStub(StubGenerator):
        def sample_labels(self, draws):
            time.sleep(args.delay)
            return super().sample_labels(draws)

    shard_writer.write_manifest = write_and_log
    pipeline_lib.generate.Generator = SlowStub
    args.ready.touch()
    while not args.go.exists():
        time.sleep(0.01)
    sys.argv = ["lfactory", "generate", *command]
    lfactory()


if __name__ == "__main__":
    main()
