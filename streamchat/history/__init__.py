"""The conversation history: a SQLite store and a bus recorder that fills it as answers grow.

* :mod:`.store` — :class:`HistoryStore`: schema and append-only migrations, conversations, messages
  with their state (complete / cut off / failed / cancelled), per-stream figures, search,
  export/import, what to send to resume an answer, and statistics.
* :mod:`.recorder` — :class:`HistoryRecorder`: a bus handler that records tracked streams from a
  writer thread, in batches, so a killed process loses at most ~0.1 s of text.
* :mod:`.render` — a conversation as Markdown (``history show`` / ``export --format md``).
* :mod:`.stats` — percentiles and histograms.

Nothing here imports a UI, a CLI framework or an SDK (a test checks it): the TUI uses it as it is.
"""

from __future__ import annotations

from .errors import (
    EXIT_HISTORY,
    HistoryCorruptError,
    HistoryError,
    HistoryLockedError,
    HistoryNotFoundError,
    HistorySchemaError,
)
from .recorder import FLUSH_INTERVAL, HistoryRecorder
from .store import (
    MIGRATIONS,
    RESUMABLE,
    Conversation,
    HistoryStore,
    ModelStats,
    ResumeInfo,
    SearchHit,
    StoredMessage,
    StreamRecord,
    state_label,
)

__all__ = [
    "EXIT_HISTORY",
    "FLUSH_INTERVAL",
    "MIGRATIONS",
    "RESUMABLE",
    "Conversation",
    "HistoryCorruptError",
    "HistoryError",
    "HistoryLockedError",
    "HistoryNotFoundError",
    "HistoryRecorder",
    "HistorySchemaError",
    "HistoryStore",
    "ModelStats",
    "ResumeInfo",
    "SearchHit",
    "StoredMessage",
    "StreamRecord",
    "state_label",
]
