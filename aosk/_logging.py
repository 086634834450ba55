"""One log format for every AOSK process: the CLI's commands and the processes they start."""

from __future__ import annotations

import logging
import sys
from typing import Final

LOG_FORMAT: Final = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """Log to stderr at ``level`` (a ``--log-level`` value such as ``"warning"``)."""
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format=LOG_FORMAT)
