"""Why the history cannot be used — errors in the :class:`~streamchat.core.errors.StreamchatError`
tree, each one line a person can act on::

    StreamchatError
    ├── HistoryError                 the history database cannot be used (exit code 7)
    │   ├── HistoryLockedError       another program holds a lock on it longer than we wait
    │   ├── HistoryCorruptError      the file is damaged or is not a streamchat history
    │   └── HistorySchemaError       it was written by a newer streamchat
    └── ConfigError
        └── HistoryNotFoundError     no such conversation / nothing to resume (exit code 2)

None of them is ever answered by repairing, recreating or deleting the file: a damaged history is
left exactly as it was, for the person (or ``sqlite3 .recover``) to rescue.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ..core.errors import ConfigError, StreamchatError

__all__ = [
    "HistoryError",
    "HistoryLockedError",
    "HistoryCorruptError",
    "HistorySchemaError",
    "HistoryNotFoundError",
    "EXIT_HISTORY",
    "translate",
]

#: Exit code of every command that failed because the history database cannot be used.
EXIT_HISTORY = 7


class HistoryError(StreamchatError):
    kind = "history"
    exit_code = EXIT_HISTORY


class HistoryLockedError(HistoryError):
    """Another process holds the database longer than the busy timeout. Trying again can help."""

    kind = "history_locked"
    retryable = True


class HistoryCorruptError(HistoryError):
    kind = "history_corrupt"


class HistorySchemaError(HistoryError):
    kind = "history_schema"


class HistoryNotFoundError(ConfigError):
    """A conversation id that is not in the history, or nothing that could be resumed."""

    kind = "history_not_found"


#: SQLite's own names for "someone else has it" (``sqlite3.Error.sqlite_errorname``).
_BUSY = {"SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_BUSY_SNAPSHOT", "SQLITE_BUSY_RECOVERY", "SQLITE_BUSY_TIMEOUT",
         "SQLITE_LOCKED_SHAREDCACHE"}
_DAMAGED = {"SQLITE_NOTADB", "SQLITE_CORRUPT", "SQLITE_CORRUPT_VTAB", "SQLITE_CORRUPT_SEQUENCE",
            "SQLITE_CORRUPT_INDEX"}


def translate(exc: sqlite3.Error, path: Path) -> HistoryError:
    """The history error for a ``sqlite3`` exception (raise it ``from exc``)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    if name in _BUSY or "locked" in text or "busy" in text:
        return HistoryLockedError(
            f"the history database {path} is locked by another program; try again in a moment, "
            "or use --no-history"
        )
    if name in _DAMAGED or "not a database" in text or "malformed" in text:
        return HistoryCorruptError(
            f"the history database {path} is damaged ({text}); it was left untouched: move it aside "
            "to start a new history, or use --no-history"
        )
    if "unable to open" in text or name.startswith("SQLITE_CANTOPEN"):
        return HistoryError(f"cannot open the history database {path} ({text}); check the folder's permissions")
    if "full" in text or name.startswith("SQLITE_IOERR") or name == "SQLITE_FULL":
        return HistoryError(f"cannot write the history database {path} ({text})")
    return HistoryError(f"the history database {path} cannot be used ({text})")
