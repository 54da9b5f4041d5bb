"""The ``lfactory`` command line: the one entry point users type.

It sits on top of everything (library, tasks, flows, deployments); nothing imports it.
A ``FactoryError`` becomes one clear line on stderr and exit code 2. A command module
imports torch, diffusers, transformers, mmseg and Prefect inside the commands that use
them, so that ``--help`` and the quick commands answer at once.
"""

from __future__ import annotations

import os
import sys

import typer

from lfactory import (
    data_commands,
    evaluate_commands,
    factory_commands,
    model_commands,
    quality_commands,
    store_commands,
    validate_commands,
)
from pipeline_lib.errors import FactoryError
from pipeline_lib.third_party_notices import silence_third_party_notices

app = typer.Typer(
    name="lfactory",
    help="Label Freedom: a data factory for synthetic remote-sensing segmentation data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

for module in (
    data_commands,
    model_commands,
    store_commands,
    validate_commands,
    evaluate_commands,
    factory_commands,
    quality_commands,
):
    module.register(app)


def main() -> None:
    # The factory never downloads; its commands import diffusers only when they use it.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    silence_third_party_notices()
    try:
        app()
    except FactoryError as error:
        typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
        sys.exit(2)


if __name__ == "__main__":
    main()
