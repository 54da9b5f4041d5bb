"""The command line every benchmark shares: ``python -m bench.<name>`` and its argument types."""

from __future__ import annotations

import argparse
from typing import Any


def command_line(name: str, doc: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A parser for ``python -m bench.<name>``, described by the first line of ``doc``."""
    return argparse.ArgumentParser(
        prog=f"python -m bench.{name}", description=doc.split("\n")[0], **kwargs
    )


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise ValueError(f"{text} is not a positive integer")
    return value
