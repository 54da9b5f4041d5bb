"""Silence notices of third-party packages that are not the user's business.

transformers announces, on the first import through diffusers, that two image
processors fall back to Pillow because torchvision is absent. The factory uses neither
processor and deliberately installs no torchvision (it does not work beside the pinned
torch), so the lines only bury the output a user reads.
"""

from __future__ import annotations

import logging

# (logger name, text every silenced message contains)
NOTICES = (("transformers.utils.import_utils", "requires torchvision (not installed)"),)


class _DropNotice(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def silence_third_party_notices() -> None:
    """Drop the messages in ``NOTICES`` (before or after the packages are imported);
    every other warning of those loggers still shows. Calling it twice is harmless."""
    for name, text in NOTICES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotice) and f.text == text for f in logger.filters):
            logger.addFilter(_DropNotice(text))
