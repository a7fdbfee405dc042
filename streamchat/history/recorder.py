"""The history recorder: a bus subscriber that writes answers into the history as they grow.

It is a handler (``bus.register``), called inline by ``publish`` — so all it does there is append
the event to an in-memory queue (a ``deque.append``, well under a microsecond) and, for the few
events that are not tokens, wake its writer. Every database write happens in a thread of its own
with its own connection: a slow disk, or another process holding the database, never makes a
stream wait, whatever the bus's policies. (A ``block`` subscription would make the stream wait for
it; a ``coalesce`` one would cost a task switch per event: a handler is cheaper than both.)

The writer wakes every ``flush_interval`` (0.1 s) while a tracked stream is live, and at once for a
start, an end or a :meth:`~HistoryRecorder.flush`; each time it writes everything queued in **one
transaction** — the new text appended to the answer, the token count so far, and any state change.
So a process killed with SIGKILL loses at most the text of the last ~0.1 s (a committed WAL
transaction survives the process), and a firehose costs one small transaction per 0.1 s, not one
per token. When a write fails (the database is locked for longer than the busy timeout), the batch
stays queued and is tried again, backing off up to 1 s; nothing is dropped until :meth:`close`
gives up (``error`` then says why).

Only streams it was told about with :meth:`~HistoryRecorder.track` are recorded: the bus may carry
others (and events do not say which conversation they belong to)::

    store = HistoryStore()
    recorder = HistoryRecorder(store).attach(bus)
    conversation = store.create_conversation(prompt)
    store.add_message(conversation, "user", prompt)
    recorder.track(stream, conversation_id=conversation)            # a new answer
    recorder.track(follow, message_id=answer_id)                    # a continuation of answer_id
    await stream.run()
    await recorder.aclose()                                         # everything is written
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from copy import copy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import StreamchatError
from ..core.events import Cancelled, Completed, Event, Failed, Retrying, StreamStarted, Token
from .errors import HistoryError
from .store import DEFAULT_TIMEOUT, LIMIT_REASONS, HistoryStore

if TYPE_CHECKING:
    from ..core.bus import EventBus, HandlerHandle
    from ..core.stream import Stream

__all__ = ["HistoryRecorder", "FLUSH_INTERVAL"]

log = logging.getLogger("streamchat.history")

#: seconds between writes while an answer grows: the most a killed process can lose
FLUSH_INTERVAL = 0.1
_MAX_BACKOFF = 1.0
_TERMINAL = (Completed, Failed, Cancelled)


@dataclass(slots=True)
class _Track:
    stream_id: str
    conversation_id: int | None
    message_id: int | None
    provider: str
    model: str
    stage: str | None
    lane: str | None
    continues: str | None
    future: concurrent.futures.Future


@dataclass(slots=True)
class _Barrier:
    future: concurrent.futures.Future


@dataclass(slots=True)
class _Live:
    """What the writer knows of one tracked stream."""

    message_id: int
    provider: str
    model: str
    stage: str | None
    lane: str | None
    continues: str | None  # the partial a continuation goes on from
    row: int | None = None  # its row in ``streams`` once started
    started: float | None = None  # StreamStarted.t of the first attempt
    first: float | None = None  # Token.t of the first token
    attempts: int = 1
    tokens: int = 0
    chars: int = 0
    dirty: bool = False
    ended: bool = False


class HistoryRecorder:
    """Records tracked streams into a history database from a writer thread of its own."""

    def __init__(self, store: HistoryStore | Path | str, *, flush_interval: float = FLUSH_INTERVAL,
                 timeout: float | None = None) -> None:
        if isinstance(store, HistoryStore):
            self.path = store.path
            self.timeout = store.timeout if timeout is None else timeout
        else:
            self.path = Path(store)
            self.timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        self.flush_interval = flush_interval
        #: the last write failure (None while everything is written)
        self.error: StreamchatError | None = None
        #: how many transactions were written, and the seconds the writer spent in them
        self.flushes = 0
        self.write_seconds = 0.0
        self._inbox: deque[Any] = deque()
        self._wake = threading.Event()
        self._tracked: set[str] = set()
        self._streams: dict[str, _Live] = {}  # writer thread only
        self._handles: list[tuple["EventBus", "HandlerHandle"]] = []
        self._disabled = False
        self._stopping = False
        self._writing = 0  # size of the batch the writer holds (taken from the queue, not yet written)
        self._give_up_at = float("inf")
        self._thread = threading.Thread(target=self._run, name="streamchat-history", daemon=True)
        self._thread.start()

    # -- the loop's side ----------------------------------------------------------------------
    def attach(self, bus: "EventBus") -> "HistoryRecorder":
        """Subscribe to ``bus`` (as a handler)."""
        self._handles.append((bus, bus.register(self)))
        return self

    def detach(self) -> None:
        for bus, handle in self._handles:
            bus.unregister(handle)
        self._handles.clear()

    def track(self, stream: "Stream", *, conversation_id: int | None = None,
              message_id: int | None = None) -> concurrent.futures.Future:
        """Record ``stream``: as a new answer in ``conversation_id``, or — ``message_id`` — into an
        existing answer (a continuation or a retry of it). Returns a future of the answer's message
        id (``asyncio.wrap_future`` it to await), set once the row is written."""
        if (conversation_id is None) == (message_id is None):
            raise ValueError("track() needs either conversation_id (a new answer) or message_id")
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self._disabled:
            future.set_exception(self.error or HistoryError("the history recorder is closed"))
            return future
        self._tracked.add(stream.id)
        self._put(_Track(stream.id, conversation_id, message_id, stream.provider.name, stream.provider.model,
                         stream.stage, stream.lane, stream.continues, future))
        return future

    def on_event(self, event: Event) -> None:
        """The bus handler: queue the event for the writer (O(1); never blocks, never raises)."""
        if event.stream_id in self._tracked:
            self._inbox.append(event)
            if type(event) is not Token:
                if isinstance(event, _TERMINAL):
                    self._tracked.discard(event.stream_id)
                self._wake.set()

    async def flush(self) -> None:
        """Wait until everything queued so far is written (or the writer gave up)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        if not self._thread.is_alive():
            return
        self._put(_Barrier(future))
        await asyncio.wrap_future(future)

    async def aclose(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop (giving up on a write that keeps failing after ``timeout``)."""
        self.detach()  # here, on the loop that publishes
        await asyncio.to_thread(self.close, timeout)

    def close(self, timeout: float = 10.0) -> None:
        self.detach()
        if not self._thread.is_alive():
            return
        self._give_up_at = time.monotonic() + timeout
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout + 5.0)

    @property
    def pending(self) -> int:
        """Events (and other work) not written yet, counting a batch being written now."""
        return len(self._inbox) + self._writing

    def _put(self, item: Any) -> None:
        self._inbox.append(item)
        self._wake.set()

    # -- the writer thread --------------------------------------------------------------------
    def _run(self) -> None:
        try:
            store = HistoryStore(self.path, timeout=self.timeout)
        except StreamchatError as err:
            self._fail(err)
            return
        try:
            try:
                store.reap()  # answers left "streaming" by a killed streamchat are cut off
            except HistoryError as err:
                log.warning("history: could not mark cut-off answers: %s", err)
            self._loop(store)
        finally:
            self._disabled = True  # a stream tracked from now on is refused at once
            store.close()

    def _loop(self, store: HistoryStore) -> None:
        backoff = 0.0
        while True:
            if backoff:
                wait: float | None = backoff
            elif any(not live.ended for live in self._streams.values()):
                wait = self.flush_interval
            else:
                wait = None  # nothing is streaming: sleep until something happens
            self._wake.wait(wait)
            self._wake.clear()
            stop = self._stopping  # read before taking: everything queued before close() is taken
            batch = self._take()
            self._writing = len(batch)
            if batch:
                try:
                    self._write(store, batch)
                    backoff = 0.0
                    self.error = None
                except HistoryError as err:
                    self._inbox.extendleft(reversed(batch))
                    if self.error is None:  # once per bad spell, not once per retry
                        log.warning("history: write failed, will retry: %s", err)
                    self.error = err
                    backoff = min(_MAX_BACKOFF, max(self.flush_interval, backoff * 2))
                except Exception as exc:  # a bug: stop recording, but never leave a flush() waiting
                    log.exception("history: the recorder failed")
                    self._fail(HistoryError(f"the history recorder failed ({type(exc).__name__}: {exc})"),
                               batch + self._take())
                    return
            self._writing = 0
            if stop:
                if not self._inbox or time.monotonic() >= self._give_up_at:
                    break
                if not backoff:
                    self._wake.set()  # more came while writing: go round again at once
        left = self._take()
        if left:  # close() gave up: say so to anyone waiting
            self._fail(self.error or HistoryError("the history could not be written before closing"), left)

    def _fail(self, err: StreamchatError, ops: list[Any] | None = None) -> None:
        self.error = err
        self._disabled = True
        self._tracked.clear()
        log.error("history: recording stopped: %s", err)
        for op in ops if ops is not None else self._take():
            if isinstance(op, _Track) and not op.future.done():
                op.future.set_exception(err)
            elif isinstance(op, _Barrier) and not op.future.done():
                op.future.set_result(None)  # "written or given up": error says which

    def _take(self) -> list[Any]:
        inbox, out = self._inbox, []
        while inbox:
            out.append(inbox.popleft())
        return out

    def _write(self, store: HistoryStore, batch: list[Any]) -> None:
        """Write one batch in one transaction; on failure nothing in memory has changed either."""
        saved = {sid: copy(live) for sid, live in self._streams.items()}
        resolved: list[tuple[concurrent.futures.Future, Any, bool]] = []
        t0 = time.perf_counter()
        try:
            with store.transaction():
                self._apply(store, batch, resolved)
        except BaseException:
            self._streams = saved
            raise
        self.write_seconds += time.perf_counter() - t0
        self.flushes += 1
        for future, value, failed in resolved:
            if future.done():
                continue
            if failed:
                future.set_exception(value)
            else:
                future.set_result(value)
        for sid in [sid for sid, live in self._streams.items() if live.ended]:
            del self._streams[sid]

    def _apply(self, store: HistoryStore, batch: list[Any], resolved: list) -> None:
        pending: dict[str, list[str]] = {}
        streams = self._streams

        def text_out(sid: str) -> None:
            texts = pending.pop(sid, None)
            if texts:
                store.append_text(streams[sid].message_id, "".join(texts))

        for op in batch:
            kind = type(op)
            if kind is Token:
                live = streams.get(op.stream_id)
                if live is None or live.ended:
                    continue
                pending.setdefault(op.stream_id, []).append(op.text)
                live.tokens += op.count
                live.chars += len(op.text)
                if live.first is None:
                    live.first = op.t
                live.dirty = True
            elif kind is _Track:
                try:
                    mid = op.message_id
                    if mid is None:
                        mid = store.start_answer(op.conversation_id, provider=op.provider, model=op.model,
                                                 stage=op.stage, lane=op.lane)
                except HistoryError:
                    raise
                except StreamchatError as err:  # the conversation is gone: do not record this stream
                    resolved.append((op.future, err, True))
                    continue
                streams[op.stream_id] = _Live(mid, op.provider, op.model, op.stage, op.lane, op.continues)
                resolved.append((op.future, mid, False))
            elif kind is _Barrier:
                for sid in list(pending):
                    text_out(sid)
                resolved.append((op.future, None, False))
            else:
                live = streams.get(op.stream_id)
                if live is None or live.ended:
                    continue
                if kind is StreamStarted:
                    text_out(op.stream_id)
                    if live.row is None:
                        self._begin(store, op.stream_id, live, op.t)
                    else:
                        live.attempts = op.attempt
                        live.dirty = True
                elif kind is Retrying:
                    live.dirty = True
                elif isinstance(op, _TERMINAL):
                    pending.pop(op.stream_id, None)  # the terminal event has the whole text
                    self._end(store, op.stream_id, live, op)
        for sid in list(pending):
            text_out(sid)
        for live in streams.values():
            if live.dirty and live.row is not None and not live.ended:
                ttft = live.first - live.started if live.first is not None and live.started is not None else None
                store.stream_progress(live.row, attempts=live.attempts, tokens=live.tokens, chars=live.chars,
                                      ttft=ttft)
                live.dirty = False

    def _begin(self, store: HistoryStore, sid: str, live: _Live, t: float | None) -> None:
        live.row = store.begin_stream(live.message_id, sid, provider=live.provider, model=live.model,
                                      stage=live.stage, lane=live.lane, continues=live.continues)
        live.started = t

    def _end(self, store: HistoryStore, sid: str, live: _Live, event: Completed | Failed | Cancelled) -> None:
        if live.row is None:  # ended before it started (cancelled early, no key…)
            self._begin(store, sid, live, None)
        error_kind = error_message = finish = None
        if isinstance(event, Completed):
            text, finish = event.text, event.finish_reason
            state = "complete"
            if finish in LIMIT_REASONS:
                state, error_message = "cut_off", f"the model stopped at the token limit ({finish})"
        elif isinstance(event, Failed):
            text, state = event.partial, "failed"
            error_kind, error_message = event.error.kind, str(event.error)
        else:
            text, state = event.partial, "cancelled"
        store.finish_answer(live.message_id, state=state, text=text, error_kind=error_kind,
                            error_message=error_message, finish_reason=finish)
        store.finish_stream(live.row, state=state, stats=event.stats, error_kind=error_kind,
                            attempts=live.attempts)
        live.ended = True
