"""Logging for the CLI and the app: to a file in the data folder (stderr with ``--debug``).

Nothing reaches the terminal by accident (no logging "last resort" to stderr), and every record is
redacted before it is written, tracebacks included: keys never reach a log.
"""

from __future__ import annotations

import logging
import sys

from .core.errors import redact


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup_logging(debug: bool = False) -> None:
    logger = logging.getLogger("streamchat")
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    formatter = RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    if debug:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        logger.setLevel(logging.DEBUG)
    else:
        from .config import data_dir

        try:
            folder = data_dir()
            folder.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(folder / "streamchat.log", delay=True, encoding="utf-8")
        except OSError:
            handler = logging.NullHandler()
        logger.setLevel(logging.WARNING)
    handler.setFormatter(formatter)
    logger.addHandler(handler)
