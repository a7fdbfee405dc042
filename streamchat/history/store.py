"""The history store: conversations, messages and per-stream figures in one SQLite file.

``<data dir>/history.db`` (``STREAMCHAT_HOME`` moves it), opened in WAL mode: readers never wait for
the writer, two processes can record at once, and a committed write survives the process being
killed (``synchronous=NORMAL`` only gives up durability against a power cut, not a crash).

Tables::

    conversations   id, title, system, created_at, updated_at
    messages        id, conversation_id, role (user | assistant), text, provider, model, stage, lane,
                    state, error_kind, error_message, finish_reason, writer (pid + process start),
                    created_at, updated_at
    streams         one row per provider stream (an answer that was resumed has several): its
                    message, provider, model, whether it continued a partial, state, error kind,
                    attempts, ttft, tokens/s, tokens, chars, duration, paused, retries, times
    schema_migrations   version, name, applied_at — which migrations this file has had

**Message states**: ``streaming`` (being written now), ``complete``, ``cut_off`` (the answer stopped
without an ending: the process writing it died, or the model hit the token limit), ``failed`` (an
error ended it; ``error_kind``/``error_message`` say which), ``cancelled`` (someone stopped it).
Whatever state, ``text`` holds every word that was recorded. A ``streaming`` row whose writing
process is gone *reads* as ``cut_off`` (the check is the pid and the process's start time, so a
recycled pid does not count), and :meth:`HistoryStore.reap` makes that permanent.

**Migrations** are append-only: a new schema change is a new function at the end of
:data:`MIGRATIONS`, never an edit of an old one. Each runs once, in its own ``BEGIN IMMEDIATE``
transaction together with its row in ``schema_migrations`` (so two processes opening a blank file at
once cannot both apply it). A file whose recorded migrations this program does not know — a newer
streamchat's — is refused, and so is an SQLite file that is not a streamchat history; neither is
ever changed. Any SQLite failure becomes a one-line :mod:`~streamchat.history.errors` error.

One :class:`HistoryStore` owns one connection; it may be used from several threads (calls are
serialised by a lock), e.g. ``await asyncio.to_thread(store.add_message, …)`` from a UI. The live
recorder (:mod:`~streamchat.history.recorder`) opens its own.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import wraps
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from ..core.events import StreamStats
from ..core.request import Message
from .errors import HistoryError, HistoryLockedError, HistoryNotFoundError, HistorySchemaError, translate
from .stats import Distribution

__all__ = [
    "HistoryStore",
    "Conversation",
    "StoredMessage",
    "StreamRecord",
    "ResumeInfo",
    "SearchHit",
    "ModelStats",
    "MIGRATIONS",
    "STATES",
    "RESUMABLE",
    "EXPORT_FORMAT",
    "default_path",
    "state_label",
]

FILENAME = "history.db"
#: seconds to wait for another process's lock before saying the history is locked
DEFAULT_TIMEOUT = 3.0
STATES = ("streaming", "complete", "cut_off", "failed", "cancelled")
#: states of an answer that ``resume`` can continue
RESUMABLE = ("cut_off", "failed", "cancelled")
#: finish reasons that mean the model stopped at the token limit, not at the end of its answer
LIMIT_REASONS = frozenset({"length", "max_tokens"})
EXPORT_FORMAT = "streamchat-conversation"
EXPORT_VERSION = 1
_LABELS = {"streaming": "streaming", "complete": "complete", "cut_off": "cut off", "failed": "failed",
           "cancelled": "cancelled"}


def default_path() -> Path:
    from ..config import data_dir

    return data_dir() / FILENAME


def state_label(state: str) -> str:
    """``cut_off`` → ``cut off``: how a state is shown to a person."""
    return _LABELS.get(state, state)


# ---------------------------------------------------------------------------------------------
# Migrations (append-only)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    apply: Callable[[sqlite3.Connection], None]


MIGRATIONS: list[Migration] = []


def migration(fn: Callable[[sqlite3.Connection], None]) -> Callable[[sqlite3.Connection], None]:
    MIGRATIONS.append(Migration(len(MIGRATIONS) + 1, fn.__name__, fn))
    return fn


@migration
def m001_conversations_and_messages(db: sqlite3.Connection) -> None:
    db.execute("""
        CREATE TABLE conversations (
            id INTEGER PRIMARY KEY,
            title TEXT NOT NULL,
            system TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""")
    db.execute("""
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
            text TEXT NOT NULL DEFAULT '',
            provider TEXT,
            model TEXT,
            stage TEXT,
            lane TEXT,
            state TEXT NOT NULL
                CHECK (state IN ('streaming', 'complete', 'cut_off', 'failed', 'cancelled')),
            error_kind TEXT,
            error_message TEXT,
            finish_reason TEXT,
            writer_pid INTEGER,
            writer_start TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""")
    db.execute("CREATE INDEX messages_by_conversation ON messages(conversation_id, id)")
    db.execute("CREATE INDEX conversations_by_update ON conversations(updated_at)")
    # reap() looks for answers left streaming: few rows, found without reading the whole table
    db.execute("CREATE INDEX messages_streaming ON messages(state) WHERE state = 'streaming'")


@migration
def m002_stream_stats(db: sqlite3.Connection) -> None:
    # message_id is SET NULL on delete: deleting a conversation removes what was said, while the
    # timing figures (no text in them) stay for ``streamchat stats``.
    db.execute("""
        CREATE TABLE streams (
            id INTEGER PRIMARY KEY,
            stream_id TEXT NOT NULL,
            message_id INTEGER REFERENCES messages(id) ON DELETE SET NULL,
            provider TEXT NOT NULL,
            model TEXT NOT NULL,
            stage TEXT,
            lane TEXT,
            continues INTEGER NOT NULL DEFAULT 0,
            state TEXT NOT NULL,
            error_kind TEXT,
            attempts INTEGER NOT NULL DEFAULT 1,
            ttft REAL,
            tokens_per_s REAL,
            tokens INTEGER NOT NULL DEFAULT 0,
            chars INTEGER NOT NULL DEFAULT 0,
            duration REAL,
            paused REAL,
            retries INTEGER NOT NULL DEFAULT 0,
            writer_pid INTEGER,
            writer_start TEXT,
            started_at REAL NOT NULL,
            ended_at REAL
        )""")
    db.execute("CREATE INDEX streams_by_model ON streams(provider, model)")
    db.execute("CREATE INDEX streams_by_message ON streams(message_id)")
    db.execute("CREATE INDEX streams_by_stream_id ON streams(stream_id)")
    db.execute("CREATE INDEX streams_streaming ON streams(state) WHERE state = 'streaming'")


# ---------------------------------------------------------------------------------------------
# Which process is writing


def _process_start(pid: int) -> str | None:
    """The process's start time (Linux: clock ticks since boot), to tell a recycled pid; None
    where /proc is not available."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields and fields[0] in ("Z", "X"):  # a zombie has finished: it writes nothing any more
        return "dead"
    return fields[19] if len(fields) > 19 else None


_ME = (os.getpid(), _process_start(os.getpid()))


def _me() -> tuple[int, str | None]:
    global _ME
    if _ME[0] != os.getpid():  # forked
        _ME = (os.getpid(), _process_start(os.getpid()))
    return _ME


def writer_alive(pid: int | None, start: str | None) -> bool:
    """Is the process that wrote a ``streaming`` row still running?"""
    if pid is None:
        return False
    if pid == os.getpid():
        return start is None or start == _me()[1]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    except OSError:
        return False
    now = _process_start(pid)
    if now == "dead":
        return False
    return start is None or now is None or now == start


# ---------------------------------------------------------------------------------------------
# What the store returns


@dataclass(frozen=True, slots=True)
class Conversation:
    id: int
    title: str
    system: str | None
    created_at: float
    updated_at: float
    #: how many messages it has (both roles)
    message_count: int = 0
    #: state of its last answer (None if there is none yet)
    last_state: str | None = None
    #: ``provider:model`` of its last answer
    last_model: str | None = None


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: int
    conversation_id: int
    role: str
    text: str
    provider: str | None
    model: str | None
    stage: str | None
    lane: str | None
    #: the state as it is now (a ``streaming`` row whose writer died reads ``cut_off``)
    state: str
    error_kind: str | None
    error_message: str | None
    finish_reason: str | None
    created_at: float
    updated_at: float

    @property
    def model_id(self) -> str | None:
        return f"{self.provider}:{self.model}" if self.provider and self.model else None

    @property
    def resumable(self) -> bool:
        return self.role == "assistant" and self.state in RESUMABLE

    @property
    def label(self) -> str:
        return state_label(self.state)


@dataclass(frozen=True, slots=True)
class StreamRecord:
    stream_id: str
    message_id: int | None
    provider: str
    model: str
    stage: str | None
    lane: str | None
    continues: bool
    state: str
    error_kind: str | None
    attempts: int
    ttft: float | None
    tokens_per_s: float | None
    tokens: int
    chars: int
    duration: float | None
    paused: float | None
    retries: int
    started_at: float
    ended_at: float | None

    @property
    def model_id(self) -> str:
        return f"{self.provider}:{self.model}"


@dataclass(frozen=True, slots=True)
class ResumeInfo:
    """What is needed to continue a conversation's last answer where it stopped.

    ``message`` is None when the conversation ends with a question that never got an answer row
    (the process died at once): then resuming means answering it afresh.
    """

    conversation: Conversation
    message: StoredMessage | None
    #: the turns before the answer, ending with the question it answers
    context: tuple[Message, ...]

    @property
    def partial(self) -> str:
        return self.message.text if self.message is not None else ""

    @property
    def model_id(self) -> str | None:
        if self.message is not None:
            return self.message.model_id
        return self.conversation.last_model


@dataclass(frozen=True, slots=True)
class SearchHit:
    conversation_id: int
    message_id: int
    title: str
    role: str
    model_id: str | None
    snippet: str
    created_at: float


@dataclass(frozen=True, slots=True)
class ModelStats:
    """Figures of every stored stream of one model."""

    provider: str
    model: str
    streams: int
    completed: int
    failed: int
    cancelled: int
    cut_off: int
    streaming: int
    retries: int
    tokens: int
    ttft: Distribution | None
    tokens_per_s: Distribution | None
    #: error kind → how many streams failed with it
    errors: dict[str, int] = field(default_factory=dict)
    ttft_values: tuple[float, ...] = ()
    tokens_per_s_values: tuple[float, ...] = ()

    @property
    def model_id(self) -> str:
        return f"{self.provider}:{self.model}"

    @property
    def ended(self) -> int:
        return self.streams - self.streaming

    def endings(self) -> str:
        """How the streams ended: ``"3 complete, 1 failed"`` (kinds with none left out)."""
        return ", ".join(f"{n} {label}" for n, label in (
            (self.completed, "complete"), (self.failed, "failed"), (self.cancelled, "cancelled"),
            (self.cut_off, "cut off"), (self.streaming, "streaming now")) if n)

    def error_rate(self, kind: str | None = None) -> float:
        """Share of ended streams that failed (with ``kind``, or with any error)."""
        failed = self.errors.get(kind, 0) if kind else self.failed
        return failed / self.ended if self.ended else 0.0


# ---------------------------------------------------------------------------------------------
# The store

T = TypeVar("T")


def _guarded(method: Callable[..., T]) -> Callable[..., T]:
    """Serialise calls on the connection and turn SQLite failures into history errors."""

    @wraps(method)
    def call(self: "HistoryStore", *args: Any, **kw: Any) -> T:
        with self._lock, self._sqlite_errors():
            return method(self, *args, **kw)

    return call


class HistoryStore:
    """The history database. ``HistoryStore()`` opens (and if needed creates or migrates) the file
    in the data folder; ``HistoryStore(path)`` a given one. Use as a context manager or ``close()``."""

    def __init__(self, path: Path | str | None = None, *, timeout: float = DEFAULT_TIMEOUT,
                 migrate: bool = True) -> None:
        self.path = Path(path) if path is not None else default_path()
        self.timeout = timeout
        self._lock = threading.RLock()
        self._depth = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HistoryError(f"cannot create the folder {self.path.parent} for the history ({exc.strerror})") from exc
        with self._sqlite_errors():
            self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        try:
            with self._lock, self._sqlite_errors():
                self._open_waiting(migrate)
        except BaseException:
            self._db.close()
            raise

    # -- opening, migrations ------------------------------------------------------------------
    @contextmanager
    def _sqlite_errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise translate(exc, self.path) from exc

    def _open_waiting(self, migrate: bool) -> None:
        """:meth:`_open`, tried again while another process holds the file, up to ``timeout``.

        SQLite's busy timeout does not cover everything here: two processes opening a blank file at
        once both switch it to WAL, and the loser's ``PRAGMA journal_mode = WAL`` fails at once with
        "database is locked". Opening is idempotent (the migrations check again under the write lock).
        """
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return self._open(migrate)
            except sqlite3.OperationalError as exc:
                if not isinstance(translate(exc, self.path), HistoryLockedError) or time.monotonic() >= deadline:
                    raise
            time.sleep(0.01)

    def _open(self, migrate: bool) -> None:
        db = self._db
        db.row_factory = sqlite3.Row
        # The first read: a file that is not SQLite fails here, before anything was written.
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "schema_migrations" not in tables:
            raise HistoryError(
                f"{self.path} is an SQLite database but not a streamchat history; it was left untouched "
                "(move it aside, or point STREAMCHAT_HOME elsewhere)"
            )
        applied = self._applied() if tables else {}
        self._check_known(applied)
        if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA foreign_keys = ON")
        if len(applied) < len(MIGRATIONS):
            if not migrate:
                raise HistorySchemaError(f"the history database {self.path} needs an upgrade first")
            self._migrate()

    def _applied(self) -> dict[int, str]:
        return {row[0]: row[1] for row in self._db.execute("SELECT version, name FROM schema_migrations")}

    def _check_known(self, applied: dict[int, str]) -> None:
        known = {m.version: m.name for m in MIGRATIONS}
        newest = max(applied, default=0)
        if newest > len(MIGRATIONS):
            raise HistorySchemaError(
                f"the history database {self.path} was written by a newer streamchat (schema version "
                f"{newest}; this one knows up to {len(MIGRATIONS)}); upgrade streamchat to use it"
            )
        for version, name in applied.items():
            if known.get(version) != name:
                raise HistorySchemaError(
                    f"the history database {self.path} has an unknown schema (migration {version} is "
                    f"{name!r}, expected {known.get(version)!r}); it was left untouched"
                )

    def _migrate(self) -> None:
        with self.transaction():
            db = self._db
            db.execute("""
                CREATE TABLE IF NOT EXISTS schema_migrations (
                    version INTEGER PRIMARY KEY,
                    name TEXT NOT NULL,
                    applied_at TEXT NOT NULL
                )""")
            applied = self._applied()  # again, under the write lock: another process may have won
            self._check_known(applied)
            for m in MIGRATIONS:
                if m.version in applied:
                    continue
                m.apply(db)
                db.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (m.version, m.name, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
                )

    @property
    def schema_version(self) -> int:
        with self._lock, self._sqlite_errors():
            return self._db.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]

    def migrations_applied(self) -> list[tuple[int, str, str]]:
        """(version, name, applied_at) of every migration this file has had."""
        with self._lock, self._sqlite_errors():
            rows = self._db.execute("SELECT version, name, applied_at FROM schema_migrations ORDER BY version")
            return [tuple(row) for row in rows]

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``: the write lock is taken at once, so it
        waits for another writer instead of failing half-way). Nested calls join the outer one."""
        with self._lock, self._sqlite_errors():
            if self._depth:
                self._depth += 1
                try:
                    yield self._db
                finally:
                    self._depth -= 1
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self._db
            except BaseException:
                self._depth = 0
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise
            self._depth = 0
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:
                pass

    def __enter__(self) -> "HistoryStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- writing ------------------------------------------------------------------------------
    @_guarded
    def create_conversation(self, title: str, *, system: str | None = None, created_at: float | None = None) -> int:
        now = time.time() if created_at is None else created_at
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO conversations (title, system, created_at, updated_at) VALUES (?, ?, ?, ?)",
                (_title(title), system, now, now),
            )
            return int(cur.lastrowid)

    def add_question(self, conversation_id: int | None, prompt: str, *, system: str | None,
                     previous_system: str | None = None) -> int:
        """Record a question: in a new conversation (``conversation_id`` None, titled by the
        prompt) or a follow-up in that one (its system prompt updated if it changed). Returns the
        conversation's id."""
        if conversation_id is None:
            conversation_id = self.create_conversation(prompt, system=system)
        elif system != previous_system:
            self.set_system(conversation_id, system)
        self.add_message(conversation_id, "user", prompt)
        return conversation_id

    @_guarded
    def set_system(self, conversation_id: int, system: str | None) -> None:
        with self.transaction() as db:
            db.execute("UPDATE conversations SET system = ? WHERE id = ?", (system, conversation_id))

    @_guarded
    def add_message(self, conversation_id: int, role: str, text: str, *, provider: str | None = None,
                    model: str | None = None, stage: str | None = None, lane: str | None = None,
                    state: str = "complete", error_kind: str | None = None, error_message: str | None = None,
                    finish_reason: str | None = None, created_at: float | None = None,
                    updated_at: float | None = None) -> int:
        """Add a finished message (a question, or an answer imported or written in one go)."""
        now = time.time() if created_at is None else created_at
        with self.transaction() as db:
            self._require_conversation(conversation_id)
            cur = db.execute(
                "INSERT INTO messages (conversation_id, role, text, provider, model, stage, lane, state, "
                "error_kind, error_message, finish_reason, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (conversation_id, role, text, provider, model, stage, lane, state, error_kind, error_message,
                 finish_reason, now, now if updated_at is None else updated_at),
            )
            self._touch(conversation_id, now)
            return int(cur.lastrowid)

    @_guarded
    def start_answer(self, conversation_id: int, *, provider: str, model: str, stage: str | None = None,
                     lane: str | None = None) -> int:
        """A new answer, ``streaming``, written by this process."""
        now = time.time()
        pid, start = _me()
        with self.transaction() as db:
            self._require_conversation(conversation_id)
            cur = db.execute(
                "INSERT INTO messages (conversation_id, role, text, provider, model, stage, lane, state, "
                "writer_pid, writer_start, created_at, updated_at) "
                "VALUES (?, 'assistant', '', ?, ?, ?, ?, 'streaming', ?, ?, ?, ?)",
                (conversation_id, provider, model, stage, lane, pid, start, now, now),
            )
            self._touch(conversation_id, now)
            return int(cur.lastrowid)

    @_guarded
    def begin_stream(self, message_id: int | None, stream_id: str, *, provider: str, model: str,
                     stage: str | None = None, lane: str | None = None, continues: str | None = None) -> int:
        """A provider stream for ``message_id`` starts (``continues``: the partial it goes on from,
        which becomes the answer's text again, now ``streaming`` in this process). Returns its row."""
        now = time.time()
        pid, start = _me()
        with self.transaction() as db:
            if message_id is not None and continues is not None:
                db.execute(
                    "UPDATE messages SET text = ?, provider = ?, model = ?, state = 'streaming', error_kind = NULL, "
                    "error_message = NULL, finish_reason = NULL, writer_pid = ?, writer_start = ?, updated_at = ? "
                    "WHERE id = ?",
                    (continues, provider, model, pid, start, now, message_id),
                )
            elif message_id is not None:
                db.execute(
                    "UPDATE messages SET state = 'streaming', writer_pid = ?, writer_start = ?, updated_at = ? "
                    "WHERE id = ?", (pid, start, now, message_id))
            cur = db.execute(
                "INSERT INTO streams (stream_id, message_id, provider, model, stage, lane, continues, state, "
                "writer_pid, writer_start, started_at) "
                "VALUES (?, (SELECT id FROM messages WHERE id = ?), ?, ?, ?, ?, ?, 'streaming', ?, ?, ?)",
                (stream_id, message_id, provider, model, stage, lane, continues is not None, pid, start, now),
            )
            return int(cur.lastrowid)

    @_guarded
    def append_text(self, message_id: int, text: str) -> None:
        """Add text to an answer as it grows."""
        with self.transaction() as db:
            db.execute("UPDATE messages SET text = text || ?, updated_at = ? WHERE id = ?",
                       (text, time.time(), message_id))

    @_guarded
    def stream_progress(self, row: int, *, attempts: int | None = None, tokens: int | None = None,
                        chars: int | None = None, ttft: float | None = None, retries: int | None = None) -> None:
        """Figures of a stream still running (kept if the process dies before its end)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE streams SET attempts = coalesce(?, attempts), tokens = coalesce(?, tokens), "
                "chars = coalesce(?, chars), ttft = coalesce(ttft, ?), retries = coalesce(?, retries) WHERE id = ?",
                (attempts, tokens, chars, ttft, retries, row),
            )

    @_guarded
    def finish_answer(self, message_id: int, *, state: str, text: str, error_kind: str | None = None,
                      error_message: str | None = None, finish_reason: str | None = None) -> None:
        """The answer ended: its whole text (the terminal event's, which is authoritative) and state."""
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "UPDATE messages SET state = ?, text = ?, error_kind = ?, error_message = ?, finish_reason = ?, "
                "updated_at = ? WHERE id = ?",
                (state, text, error_kind, error_message, finish_reason, now, message_id),
            )
            db.execute("UPDATE conversations SET updated_at = ? WHERE id = "
                       "(SELECT conversation_id FROM messages WHERE id = ?)", (now, message_id))

    @_guarded
    def finish_stream(self, row: int, *, state: str, stats: StreamStats, error_kind: str | None = None,
                      attempts: int | None = None) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE streams SET state = ?, error_kind = ?, attempts = coalesce(?, attempts), "
                "ttft = coalesce(?, ttft), tokens_per_s = ?, tokens = ?, chars = ?, duration = ?, paused = ?, "
                "retries = ?, ended_at = ? WHERE id = ?",
                (state, error_kind, attempts, stats.ttft, stats.tokens_per_s, stats.tokens, stats.chars,
                 stats.elapsed, stats.paused_s, stats.retries, time.time(), row),
            )

    @_guarded
    def reap(self) -> int:
        """Mark answers whose writing process has gone (killed mid-answer) as ``cut_off`` for good.
        Returns how many answers that was."""
        def dead(table: str) -> list[tuple[Any, ...]]:
            rows = self._db.execute(f"SELECT id, writer_pid, writer_start FROM {table} WHERE state = 'streaming'")
            return [(r["id"], r["writer_pid"], r["writer_start"]) for r in rows
                    if not writer_alive(r["writer_pid"], r["writer_start"])]

        orphans, streams = dead("messages"), dead("streams")
        if not orphans and not streams:
            return 0
        # Only rows still held by the dead writer: another process may have resumed one meanwhile.
        with self.transaction() as db:
            db.executemany(
                "UPDATE messages SET state = 'cut_off', error_message = coalesce(error_message, ?) "
                "WHERE id = ? AND state = 'streaming' AND writer_pid IS ? AND writer_start IS ?",
                [(_ORPHAN_MESSAGE, *row) for row in orphans])
            db.executemany(
                "UPDATE streams SET state = 'cut_off' "
                "WHERE id = ? AND state = 'streaming' AND writer_pid IS ? AND writer_start IS ?", streams)
        return len(orphans)

    @_guarded
    def delete_conversation(self, conversation_id: int) -> int:
        """Delete a conversation and its messages (their stream figures stay, without text).
        Returns how many messages were deleted."""
        with self.transaction() as db:
            self._require_conversation(conversation_id)
            n = db.execute("SELECT count(*) FROM messages WHERE conversation_id = ?", (conversation_id,)).fetchone()[0]
            db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
            return int(n)

    def _touch(self, conversation_id: int, now: float) -> None:
        self._db.execute("UPDATE conversations SET updated_at = max(updated_at, ?) WHERE id = ?",
                         (now, conversation_id))

    def _require_conversation(self, conversation_id: int) -> None:
        if self._db.execute("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)).fetchone() is None:
            raise HistoryNotFoundError(f"there is no conversation {conversation_id} in the history "
                                       "(see streamchat history list)")

    # -- reading ------------------------------------------------------------------------------
    @_guarded
    def conversations(self, limit: int | None = 50, offset: int = 0) -> list[Conversation]:
        """The most recently active conversations first."""
        rows = self._db.execute(
            _CONVERSATIONS + " ORDER BY c.updated_at DESC, c.id DESC LIMIT ? OFFSET ?",
            (-1 if limit is None else limit, offset),
        )
        return [_conversation(row) for row in rows]

    @_guarded
    def conversation(self, conversation_id: int) -> Conversation:
        row = self._db.execute(_CONVERSATIONS + " WHERE c.id = ?", (conversation_id,)).fetchone()
        if row is None:
            self._require_conversation(conversation_id)
        return _conversation(row)

    @_guarded
    def last_conversation(self) -> Conversation | None:
        found = self.conversations(limit=1)
        return found[0] if found else None

    @_guarded
    def messages(self, conversation_id: int) -> list[StoredMessage]:
        self._require_conversation(conversation_id)
        rows = self._db.execute("SELECT * FROM messages WHERE conversation_id = ? ORDER BY id", (conversation_id,))
        return [_message(row) for row in rows]

    @_guarded
    def message(self, message_id: int) -> StoredMessage:
        row = self._db.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()
        if row is None:
            raise HistoryNotFoundError(f"there is no message {message_id} in the history")
        return _message(row)

    @_guarded
    def context(self, conversation_id: int, *, before: int | None = None) -> tuple[Message, ...]:
        """The conversation (up to message ``before``, exclusive) as request turns that alternate
        as providers want: one answer per question and consecutive questions joined.

        A question may have several answers — a pipeline's stages, side-by-side lanes, a routed
        answer and its retry, a regenerated one: the last *complete* answer is sent (else the last
        one with text; a partial is sent as what it is, what the model had said), so a follow-up
        carries the refined answer, not the draft and the refinement glued together. Empty answers
        are left out."""
        turns: list[Message] = []
        answers: list[StoredMessage] = []

        def close_turn() -> None:
            if answers and turns:
                complete = [m for m in answers if m.state == "complete"]
                turns.append(Message("assistant", (complete or answers)[-1].text))
            answers.clear()

        for m in self.messages(conversation_id):
            if before is not None and m.id >= before:
                break
            if not m.text.strip():
                continue
            if m.role != "user":
                answers.append(m)
                continue
            close_turn()
            if turns and turns[-1].role == "user":
                turns[-1] = Message("user", turns[-1].content + "\n\n" + m.text)
            else:
                turns.append(Message("user", m.text))
        close_turn()
        return tuple(turns)

    @_guarded
    def resume_info(self, conversation_id: int) -> ResumeInfo:
        """How to continue the conversation's last answer. Raises HistoryNotFoundError when there
        is nothing to resume (the last answer is complete, or still being written)."""
        conversation = self.conversation(conversation_id)
        messages = self.messages(conversation_id)
        if not messages:
            raise HistoryNotFoundError(f"nothing to resume: conversation {conversation_id} is empty")
        last = messages[-1]
        if last.role == "user":
            return ResumeInfo(conversation, None, self.context(conversation_id))
        if last.state == "streaming":
            raise HistoryNotFoundError(
                f"the last answer of conversation {conversation_id} is still being written by another streamchat")
        if last.state == "complete":
            raise HistoryNotFoundError(
                f"nothing to resume: the last answer of conversation {conversation_id} is complete")
        return ResumeInfo(conversation, last, self.context(conversation_id, before=last.id))

    @_guarded
    def streams(self, *, message_id: int | None = None, conversation_id: int | None = None) -> list[StreamRecord]:
        """Stream figures: of one message, of one conversation, or (neither given) all of them."""
        if message_id is not None:
            rows = self._db.execute("SELECT * FROM streams WHERE message_id = ? ORDER BY id", (message_id,))
        elif conversation_id is not None:
            rows = self._db.execute(
                "SELECT s.* FROM streams s JOIN messages m ON m.id = s.message_id WHERE m.conversation_id = ? "
                "ORDER BY s.id", (conversation_id,))
        else:
            rows = self._db.execute("SELECT * FROM streams ORDER BY id")
        return [_stream(row) for row in rows]

    @_guarded
    def model_stats(self, model_id: str | None = None) -> list[ModelStats]:
        """Per ``provider:model`` (or only ``model_id``): TTFT and tokens/s distributions over the
        stored streams, and how their streams ended. Busiest model first."""
        groups: dict[tuple[str, str], list[StreamRecord]] = {}
        for record in self.streams():
            if model_id is None or record.model_id == model_id:
                groups.setdefault((record.provider, record.model), []).append(record)
        out = [_model_stats(p, m, records) for (p, m), records in groups.items()]
        return sorted(out, key=lambda s: (-s.streams, s.model_id))

    @_guarded
    def search(self, text: str, *, limit: int = 20) -> list[SearchHit]:
        """Messages containing ``text`` (ASCII letters in any case), newest first."""
        import re

        needle = text.strip()
        if not needle:
            return []
        pattern = "%" + needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self._db.execute(
            "SELECT m.id, m.conversation_id, m.role, m.text, m.provider, m.model, m.created_at, c.title "
            "FROM messages m JOIN conversations c ON c.id = m.conversation_id "
            "WHERE m.text LIKE ? ESCAPE '\\' ORDER BY m.id DESC LIMIT ?", (pattern, limit))
        hits = []
        finder = re.compile(re.escape(needle), re.IGNORECASE)
        for row in rows:
            model_id = f"{row['provider']}:{row['model']}" if row["provider"] else None
            hits.append(SearchHit(row["conversation_id"], row["id"], row["title"], row["role"], model_id,
                                  _snippet(row["text"], finder), row["created_at"]))
        return hits

    # -- export / import ----------------------------------------------------------------------
    @_guarded
    def export(self, conversation_id: int) -> dict[str, Any]:
        """The whole conversation as JSON-ready data (:meth:`import_conversation` reads it back)."""
        c = self.conversation(conversation_id)
        streams: dict[int, list[dict[str, Any]]] = {}
        for s in self.streams(conversation_id=conversation_id):
            record = asdict(s)
            del record["message_id"]
            streams.setdefault(s.message_id, []).append(record)
        messages = []
        for m in self.messages(conversation_id):
            record = asdict(m)
            for key in ("id", "conversation_id"):
                del record[key]
            record["streams"] = streams.get(m.id, [])
            messages.append(record)
        return {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "conversation": {"id": c.id, "title": c.title, "system": c.system, "created_at": c.created_at,
                             "updated_at": c.updated_at},
            "messages": messages,
        }

    @_guarded
    def import_conversation(self, data: dict[str, Any]) -> int:
        """Add an exported conversation as a new one (same texts, states, figures and times).
        Returns its id. Bad data raises ConfigError and adds nothing."""
        from ..core.errors import ConfigError

        try:
            if data.get("format") != EXPORT_FORMAT or data.get("version") != EXPORT_VERSION:
                raise ConfigError(f"not a streamchat conversation export (format {EXPORT_FORMAT!r}, "
                                  f"version {EXPORT_VERSION})")
            conv = data["conversation"]
            with self.transaction() as db:
                cid = self.create_conversation(str(conv["title"]), system=conv.get("system"),
                                               created_at=float(conv["created_at"]))
                for m in data["messages"]:
                    if m["role"] not in ("user", "assistant") or m["state"] not in STATES:
                        raise ConfigError(f"a message has an unknown role or state ({m['role']!r}, {m['state']!r})")
                    state = "cut_off" if m["state"] == "streaming" else m["state"]
                    mid = self.add_message(
                        cid, m["role"], str(m["text"]), provider=m.get("provider"), model=m.get("model"),
                        stage=m.get("stage"), lane=m.get("lane"), state=state, error_kind=m.get("error_kind"),
                        error_message=m.get("error_message"), finish_reason=m.get("finish_reason"),
                        created_at=float(m["created_at"]), updated_at=float(m["updated_at"]))
                    for s in m.get("streams", []):
                        db.execute(
                            "INSERT INTO streams (stream_id, message_id, provider, model, stage, lane, continues, "
                            "state, error_kind, attempts, ttft, tokens_per_s, tokens, chars, duration, paused, "
                            "retries, started_at, ended_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                            "?, ?, ?)",
                            (s["stream_id"], mid, s["provider"], s["model"], s.get("stage"), s.get("lane"),
                             bool(s.get("continues")), "cut_off" if s["state"] == "streaming" else s["state"],
                             s.get("error_kind"), s.get("attempts", 1), s.get("ttft"), s.get("tokens_per_s"),
                             s.get("tokens", 0), s.get("chars", 0), s.get("duration"), s.get("paused"),
                             s.get("retries", 0), s["started_at"], s.get("ended_at")))
                db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (float(conv["updated_at"]), cid))
                return cid
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"not a valid streamchat conversation export ({type(exc).__name__}: {exc})") from exc


_ORPHAN_MESSAGE = "the answer stopped when the streamchat writing it ended"

_CONVERSATIONS = """
    SELECT c.id, c.title, c.system, c.created_at, c.updated_at,
           (SELECT count(*) FROM messages n WHERE n.conversation_id = c.id) AS n_messages,
           a.state AS a_state, a.provider AS a_provider, a.model AS a_model,
           a.writer_pid AS a_pid, a.writer_start AS a_start
    FROM conversations c
    LEFT JOIN messages a ON a.id = (
        SELECT max(id) FROM messages WHERE conversation_id = c.id AND role = 'assistant')"""


def _effective(state: str, pid: int | None, start: str | None) -> str:
    if state == "streaming" and not writer_alive(pid, start):
        return "cut_off"
    return state


def _conversation(row: sqlite3.Row) -> Conversation:
    state = row["a_state"]
    if state is not None:
        state = _effective(state, row["a_pid"], row["a_start"])
    model = f"{row['a_provider']}:{row['a_model']}" if row["a_provider"] and row["a_model"] else None
    return Conversation(row["id"], row["title"], row["system"], row["created_at"], row["updated_at"],
                        row["n_messages"], state, model)


def _message(row: sqlite3.Row) -> StoredMessage:
    state = _effective(row["state"], row["writer_pid"], row["writer_start"])
    error_message = row["error_message"]
    if state == "cut_off" and row["state"] == "streaming" and error_message is None:
        error_message = _ORPHAN_MESSAGE
    return StoredMessage(
        row["id"], row["conversation_id"], row["role"], row["text"], row["provider"], row["model"], row["stage"],
        row["lane"], state, row["error_kind"], error_message, row["finish_reason"], row["created_at"],
        row["updated_at"],
    )


def _stream(row: sqlite3.Row) -> StreamRecord:
    return StreamRecord(
        row["stream_id"], row["message_id"], row["provider"], row["model"], row["stage"], row["lane"],
        bool(row["continues"]), _effective(row["state"], row["writer_pid"], row["writer_start"]),
        row["error_kind"], row["attempts"], row["ttft"], row["tokens_per_s"], row["tokens"], row["chars"],
        row["duration"], row["paused"], row["retries"], row["started_at"], row["ended_at"],
    )


def _model_stats(provider: str, model: str, records: list[StreamRecord]) -> ModelStats:
    states = {s: 0 for s in STATES}
    errors: dict[str, int] = {}
    for r in records:
        states[r.state] = states.get(r.state, 0) + 1
        if r.state == "failed":
            kind = r.error_kind or "error"
            errors[kind] = errors.get(kind, 0) + 1
    ttft = tuple(r.ttft for r in records if r.ttft is not None)
    tps = tuple(r.tokens_per_s for r in records if r.tokens_per_s is not None)
    return ModelStats(
        provider, model, len(records), states["complete"], states["failed"], states["cancelled"],
        states["cut_off"], states["streaming"], sum(r.retries for r in records), sum(r.tokens for r in records),
        Distribution.of(ttft), Distribution.of(tps), dict(sorted(errors.items(), key=lambda kv: -kv[1])),
        ttft, tps,
    )


def _title(text: str, limit: int = 80) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _snippet(text: str, finder: Any, width: int = 60) -> str:
    match = finder.search(text)
    if match is None:
        return _title(text, 2 * width)
    start = max(0, match.start() - width)
    end = min(len(text), match.end() + width)
    piece = " ".join(text[start:end].split())
    return ("…" if start else "") + piece + ("…" if end < len(text) else "")


def dumps_export(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"
