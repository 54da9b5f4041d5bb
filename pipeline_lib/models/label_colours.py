"""The colour code a label model draws, recorded beside it.

The weights do not say which code they learnt (``label_lora.colours``: palette, bits,
balanced-bits), and a model read with another code draws labels that snap to the wrong
classes without a word. Training records the code; going on from a model or sampling it
checks the config's against it. Models saved before the record existed are not checked.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline_lib.errors import ConfigError

COLOURS_FILE = "label_colours.json"


def save_label_colours(folder: Path, colours: str) -> None:
    (Path(folder) / COLOURS_FILE).write_text(json.dumps({"colours": colours}) + "\n")


def check_label_colours(folder: Path, colours: str, key: str) -> None:
    """Raise where the model in ``folder`` learnt another code than ``colours``; ``key`` is
    the config field that names the folder, for the message."""
    path = Path(folder) / COLOURS_FILE
    if not path.is_file():
        return
    learnt = json.loads(path.read_text()).get("colours")
    if learnt != colours:
        raise ConfigError(
            f"{key}: {folder} draws labels in {learnt!r} colours where label_lora.colours is "
            f"{colours!r}; set label_lora.colours: {learnt} or train the label model again"
        )
