"""Typed stream events — the only language between streamchat's parts — and a pure accumulator.

Every event is a small frozen dataclass that carries the ``stream_id`` of the response it belongs to,
the ``lane`` (side-by-side compare) and ``stage`` (progressive answers) it was produced in, and the
monotonic time ``t`` it was made. ``type`` is a stable string name used in NDJSON and over SSE.

:func:`accumulate` folds events into a :class:`ResponseSnapshot`; it never mutates a snapshot, so the
TUI, the history store and the SSE server can each hold snapshots and agree on what was said. The
text of a snapshot is kept in an append-only :class:`_Rope` shared between successive snapshots, so
folding a token costs O(1) instead of copying the whole answer (a snapshot is a view of a prefix).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

from .errors import StreamchatError

__all__ = [
    "Event",
    "StreamStarted",
    "Token",
    "Progress",
    "Paused",
    "Resumed",
    "Retrying",
    "Completed",
    "Failed",
    "Cancelled",
    "StreamStats",
    "ResponseSnapshot",
    "accumulate",
    "event_to_dict",
    "TERMINAL_EVENTS",
]

_now = time.monotonic


@dataclass(frozen=True, slots=True)
class StreamStats:
    """Figures for one response. Times are seconds; ``ttft`` is time to first token."""

    tokens: int = 0
    chars: int = 0
    ttft: float | None = None
    tokens_per_s: float | None = None
    elapsed: float = 0.0
    paused_s: float = 0.0
    retries: int = 0
    errors: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    type: ClassVar[str] = "event"
    stream_id: str
    lane: str | None = None
    stage: str | None = None
    t: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamStarted(Event):
    """A response began (``attempt`` counts retries; ``continues`` is the partial it extends)."""

    type: ClassVar[str] = "start"
    provider: str
    model: str
    attempt: int = 1
    continues: str | None = None

    @property
    def metadata(self) -> dict[str, Any]:
        return {
            "stream_id": self.stream_id,
            "provider": self.provider,
            "model": self.model,
            "lane": self.lane,
            "stage": self.stage,
            "attempt": self.attempt,
            "continues": self.continues is not None,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Token(Event):
    """A piece of answer text. ``confidence`` is 0..1 (probability of the sampled token) or None.

    ``count`` is how many provider tokens this event holds: 1, unless buffering or a coalescing
    subscriber merged several (then ``confidence`` is their mean and ``index`` the first one's).
    """

    type: ClassVar[str] = "token"
    text: str
    index: int
    confidence: float | None = None
    count: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress(Event):
    """A stage or step message, e.g. "🔍 Analysing…", with an optional 0..1 ``fraction``."""

    type: ClassVar[str] = "progress"
    message: str
    fraction: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Paused(Event):
    type: ClassVar[str] = "paused"


@dataclass(frozen=True, slots=True, kw_only=True)
class Resumed(Event):
    type: ClassVar[str] = "resumed"


@dataclass(frozen=True, slots=True, kw_only=True)
class Retrying(Event):
    """The attempt failed before its first token; the next one starts after ``delay`` seconds."""

    type: ClassVar[str] = "retrying"
    attempt: int
    delay: float
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Completed(Event):
    type: ClassVar[str] = "complete"
    text: str
    usage: dict[str, int] | None = None
    stats: StreamStats = StreamStats()
    finish_reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Failed(Event):
    """The stream ended with an error; ``partial`` is every word that arrived before it."""

    type: ClassVar[str] = "error"
    error: StreamchatError
    partial: str = ""
    retryable: bool = False
    stats: StreamStats = StreamStats()


@dataclass(frozen=True, slots=True, kw_only=True)
class Cancelled(Event):
    type: ClassVar[str] = "cancelled"
    partial: str = ""
    stats: StreamStats = StreamStats()


TERMINAL_EVENTS = (Completed, Failed, Cancelled)


def event_to_dict(event: Event) -> dict[str, Any]:
    """A JSON-ready dict with a ``type`` field first (NDJSON, SSE)."""
    out: dict[str, Any] = {"type": event.type}
    for f in fields(event):
        value = getattr(event, f.name)
        if isinstance(value, StreamchatError):
            value = value.to_dict()
        elif isinstance(value, StreamStats):
            value = {g.name: getattr(value, g.name) for g in fields(value)}
        out[f.name] = value
    return out


# ---------------------------------------------------------------------------------------------
# The accumulator


class _Rope:
    """Append-only list of text pieces shared by successive snapshots (each sees a prefix)."""

    __slots__ = ("pieces", "_joined", "_joined_n")

    def __init__(self, pieces: list[str] | None = None) -> None:
        self.pieces: list[str] = pieces or []
        self._joined = ""
        self._joined_n = 0

    def text(self, n: int) -> str:
        if n == self._joined_n:
            return self._joined
        if n > self._joined_n:
            joined = self._joined + "".join(self.pieces[self._joined_n : n])
            self._joined, self._joined_n = joined, n
            return joined
        return "".join(self.pieces[:n])


@dataclass(frozen=True, slots=True)
class ResponseSnapshot:
    """What is known of one response after some events. Build it with :func:`accumulate`."""

    stream_id: str
    state: str = "pending"  # pending | active | paused | completed | cancelled | failed
    provider: str | None = None
    model: str | None = None
    lane: str | None = None
    stage: str | None = None
    tokens: int = 0
    chars: int = 0
    attempt: int = 1
    error: StreamchatError | None = None
    usage: dict[str, int] | None = None
    stats: StreamStats | None = None
    finish_reason: str | None = None
    progress: str | None = None
    _rope: _Rope = field(default_factory=_Rope, repr=False, compare=False)
    _n: int = 0

    @classmethod
    def with_text(cls, text: str, **fields: Any) -> "ResponseSnapshot":
        """A snapshot whose answer so far is ``text``."""
        return cls(_rope=_Rope([text]), _n=1, chars=len(text), **fields)

    @property
    def text(self) -> str:
        return self._rope.text(self._n)

    @property
    def done(self) -> bool:
        return self.state in ("completed", "cancelled", "failed")

    def _append(self, text: str) -> tuple[_Rope, int]:
        rope = self._rope
        if len(rope.pieces) != self._n:  # someone already extended this rope: branch off
            rope = _Rope(rope.pieces[: self._n])
        rope.pieces.append(text)
        return rope, self._n + 1


def accumulate(snapshot: ResponseSnapshot | None, event: Event) -> ResponseSnapshot:
    """Fold ``event`` into ``snapshot`` (None starts a new one) and return the new snapshot."""
    if snapshot is None:
        snapshot = ResponseSnapshot(stream_id=event.stream_id, lane=event.lane, stage=event.stage)
    if isinstance(event, Token):
        rope, n = snapshot._append(event.text)
        return replace(
            snapshot,
            state="active" if snapshot.state in ("pending", "active") else snapshot.state,
            tokens=snapshot.tokens + event.count,
            chars=snapshot.chars + len(event.text),
            stage=event.stage or snapshot.stage,
            _rope=rope,
            _n=n,
        )
    if isinstance(event, StreamStarted):
        if event.continues and snapshot._n == 0:  # a continuation starts from the partial
            snapshot = replace(snapshot, _rope=_Rope([event.continues]), _n=1, chars=len(event.continues))
        return replace(
            snapshot,
            state="active",
            provider=event.provider,
            model=event.model,
            attempt=event.attempt,
            lane=event.lane,
            stage=event.stage or snapshot.stage,
        )
    if isinstance(event, Paused):
        return replace(snapshot, state="paused")
    if isinstance(event, Resumed):
        return replace(snapshot, state="active")
    if isinstance(event, Progress):
        return replace(snapshot, progress=event.message)
    if isinstance(event, Retrying):
        return replace(snapshot, attempt=event.attempt + 1)
    if isinstance(event, Completed):
        return _finish(snapshot, event.text, state="completed", usage=event.usage,
                       stats=event.stats, finish_reason=event.finish_reason)
    if isinstance(event, Failed):
        return _finish(snapshot, event.partial, state="failed", error=event.error, stats=event.stats)
    if isinstance(event, Cancelled):
        return _finish(snapshot, event.partial, state="cancelled", stats=event.stats)
    return snapshot


def _finish(snapshot: ResponseSnapshot, text: str, **changes: Any) -> ResponseSnapshot:
    # The terminal event carries the authoritative full text (it includes a continued partial).
    if text != snapshot.text:
        rope = _Rope([text])
        changes.update(_rope=rope, _n=1, chars=len(text))
    return replace(snapshot, **changes)
