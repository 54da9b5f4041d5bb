"""Call the ``lfactory`` entry point in-process, as a user's shell would, and see what
the user sees: the exit code, stdout and stderr."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str


def call_main(monkeypatch: pytest.MonkeyPatch, capsys, *argv: object) -> CliResult:
    """``lfactory *argv`` through ``lfactory.cli.main``; an exception that is not turned
    into an exit code propagates (as the traceback a user would see)."""
    from lfactory.cli import main

    monkeypatch.setattr(sys, "argv", ["lfactory", *map(str, argv)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out = capsys.readouterr()
    return CliResult(exit_info.value.code or 0, out.out, out.err)
