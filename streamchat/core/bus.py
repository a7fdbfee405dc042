"""The event bus: async publish/subscribe for stream events.

Two kinds of subscriber:

* **Subscriptions** — ``async for event in bus.subscribe(...)``. Each has a bounded queue and a
  policy for when it falls behind:

  - ``"coalesce"`` (default): when the queue is full, a new :class:`Token` is merged into the last
    queued token of the same stream/lane/stage (texts joined, ``count`` added, confidence averaged).
    **No text is ever lost** and the publisher never waits; what a slow subscriber loses is only
    granularity (fewer, larger tokens). Non-token events are always queued (they are few per
    stream), so the queue can exceed ``maxsize`` by those alone. Right for UIs, history, SSE.
  - ``"block"``: when the queue is full the publisher waits until it has room — lossless and
    token-exact, but a slow subscriber then slows the stream (back-pressure reaches the wire).
    Right for exact NDJSON output to a pipe and for tests.

  A subscription made with ``stream_id=`` sees only that stream and ends by itself after the
  stream's terminal event (completed, failed or cancelled). Others end when closed (``close()``,
  leaving an ``async with`` block, or ``bus.close()``).

* **Handlers** — objects with any of ``on_stream_start(metadata)``, ``on_token_received(token,
  index)``, ``on_stream_complete(full_response)``, ``on_stream_error(error)``,
  ``on_stream_cancel(partial)`` and ``on_event(event)``. ``register()`` returns a handle that
  ``unregister()`` takes. Handlers are called inline by ``publish`` and must be quick; one that raises
  is logged and counted (``handler_errors``) and never breaks the stream or the other subscribers.
  A handler method may be ``async``: it is then run as a task and its failures are logged likewise.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
from collections import deque
from typing import Any, AsyncIterator, Callable, Literal

from .events import (
    TERMINAL_EVENTS,
    Cancelled,
    Completed,
    Event,
    Failed,
    Paused,
    Progress,
    Resumed,
    Retrying,
    StreamStarted,
    Token,
)

__all__ = ["EventBus", "Subscription", "HandlerHandle", "TokenRun"]

log = logging.getLogger("streamchat.bus")

Policy = Literal["coalesce", "block"]


class TokenRun:
    """Tokens merged while a coalescing subscriber is behind; becomes one Token when read.

    Appending is O(1) (the texts are joined once, on dequeue), so a subscriber that is far behind
    never makes the publisher pay for the size of what it has not read yet.
    """

    __slots__ = ("first", "last", "texts", "count", "conf_sum", "conf_count")

    def __init__(self, first: Token) -> None:
        self.first = first
        self.last = first
        self.texts = [first.text]
        self.count = first.count
        self.conf_sum = 0.0
        self.conf_count = 0
        self._add_confidence(first)

    def _add_confidence(self, token: Token) -> None:
        if token.confidence is not None:
            self.conf_sum += token.confidence * token.count
            self.conf_count += token.count

    def matches(self, token: Token) -> bool:
        first = self.first
        return token.stream_id == first.stream_id and token.lane == first.lane and token.stage == first.stage

    def add(self, token: Token) -> None:
        self.texts.append(token.text)
        self.count += token.count
        self.last = token
        self._add_confidence(token)

    def token(self) -> Token:
        first = self.first
        return Token(
            stream_id=first.stream_id,
            lane=first.lane,
            stage=first.stage,
            t=self.last.t,
            text="".join(self.texts),
            index=first.index,
            confidence=self.conf_sum / self.conf_count if self.conf_count else None,
            count=self.count,
        )


class Subscription:
    """An async iterator over bus events with a bounded queue. Made by :meth:`EventBus.subscribe`."""

    __slots__ = (
        "_bus", "_queue", "maxsize", "policy", "stream_id", "_getter", "_putters", "closed",
        "coalesced", "_terminal_seen",
    )

    def __init__(self, bus: "EventBus", maxsize: int, policy: Policy, stream_id: str | None) -> None:
        if policy not in ("coalesce", "block"):
            raise ValueError(f"unknown subscription policy {policy!r}")
        self._bus = bus
        self._queue: deque[Event] = deque()
        self.maxsize = max(1, maxsize)
        self.policy = policy
        self.stream_id = stream_id
        self._getter: asyncio.Future | None = None
        self._putters: deque[asyncio.Future] = deque()
        self.closed = False
        #: how many tokens were merged into earlier ones because this subscriber fell behind
        self.coalesced = 0
        self._terminal_seen = False

    # -- producer side (called by the bus) ------------------------------------------------
    def _offer(self, event: Event) -> asyncio.Future | None:
        if self._terminal_seen:  # a per-stream subscription whose stream has ended
            return None
        queue = self._queue
        if len(queue) >= self.maxsize:
            if self.policy == "block":
                fut = asyncio.get_running_loop().create_future()
                self._putters.append(fut)
                return fut
            if type(event) is Token and self._coalesce(event):
                return None
            # coalesce: anything that cannot merge is queued anyway (control events are few)
        queue.append(event)
        if self.stream_id is not None and isinstance(event, TERMINAL_EVENTS):
            self._terminal_seen = True
        getter = self._getter
        if getter is not None:
            self._getter = None
            if not getter.done():
                getter.set_result(None)
        return None

    def _coalesce(self, token: Token) -> bool:
        """Merge ``token`` into the last queued token of the same stream/lane/stage, if any."""
        last = self._queue[-1]
        if type(last) is TokenRun:
            if not last.matches(token):
                return False
            last.add(token)
        elif type(last) is Token:
            run = TokenRun(last)
            if not run.matches(token):
                return False
            run.add(token)
            self._queue[-1] = run
        else:
            return False
        self.coalesced += 1
        return True

    def _wake_putters(self) -> None:
        while self._putters and len(self._queue) < self.maxsize:
            fut = self._putters.popleft()
            if not fut.done():
                fut.set_result(None)

    # -- consumer side ----------------------------------------------------------------------
    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> Event:
        while not self._queue:
            if self.closed:
                raise StopAsyncIteration
            self._getter = asyncio.get_running_loop().create_future()
            try:
                await self._getter
            finally:
                self._getter = None
        event = self._queue.popleft()
        if type(event) is TokenRun:
            event = event.token()
        if self._putters:
            self._wake_putters()
        if self.stream_id is not None and isinstance(event, TERMINAL_EVENTS):
            self.close()
        return event

    def drain(self) -> list[Event]:
        """Take everything queued now without waiting (a UI frame can render a batch at once)."""
        events = [e.token() if type(e) is TokenRun else e for e in self._queue]
        self._queue.clear()
        if self._putters:
            self._wake_putters()
        if self.stream_id is not None and any(isinstance(e, TERMINAL_EVENTS) for e in events):
            self.close()
        return events

    def __len__(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        """Stop receiving. Events already queued can still be read; then iteration ends."""
        if self.closed:
            return
        self.closed = True
        self._bus._remove(self)
        if self._getter is not None and not self._getter.done():
            self._getter.set_result(None)
        while self._putters:  # never leave a publisher waiting on a closed subscriber
            fut = self._putters.popleft()
            if not fut.done():
                fut.set_result(None)

    async def __aenter__(self) -> "Subscription":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()


class HandlerHandle:
    """Returned by :meth:`EventBus.register`; give it to :meth:`EventBus.unregister`."""

    __slots__ = ("id", "handler", "stream_id", "hooks", "_fallback")

    def __init__(self, id: int, handler: Any, stream_id: str | None) -> None:
        self.id = id
        self.handler = handler
        self.stream_id = stream_id
        # event type -> the calls to make for it (each takes the event); only hooks it has
        self.hooks: dict[type, tuple[Callable[[Event], Any], ...]] = {}
        adapters: list[tuple[type, str, Callable[[Callable], Callable[[Any], Any]]]] = [
            (StreamStarted, "on_stream_start", lambda m: lambda e: m(e.metadata)),
            (Token, "on_token_received", lambda m: lambda e: m(e.text, e.index)),
            (Completed, "on_stream_complete", lambda m: lambda e: m(e.text)),
            (Failed, "on_stream_error", lambda m: lambda e: m(e.error)),
            (Cancelled, "on_stream_cancel", lambda m: lambda e: m(e.partial)),
        ]
        on_event = getattr(handler, "on_event", None)
        for etype in (StreamStarted, Token, Progress, Paused, Resumed, Retrying, Completed, Failed, Cancelled):
            calls: list[Callable[[Event], Any]] = []
            for kind, name, adapt in adapters:
                method = getattr(handler, name, None)
                if kind is etype and method is not None:
                    calls.append(adapt(method))
            if on_event is not None:
                calls.append(on_event)
            if calls:
                self.hooks[etype] = tuple(calls)
        self._fallback = (on_event,) if on_event is not None else ()

    def __repr__(self) -> str:
        return f"<HandlerHandle {self.id} {type(self.handler).__name__}>"


class EventBus:
    """Publish stream events to subscriptions and handlers. One bus can carry many streams."""

    def __init__(self) -> None:
        self._subs: tuple[Subscription, ...] = ()
        self._handlers: tuple[HandlerHandle, ...] = ()
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task] = set()
        #: how many handler calls raised (each was logged and skipped)
        self.handler_errors = 0
        self.published = 0

    # -- subscribing ------------------------------------------------------------------------
    def subscribe(
        self, *, stream_id: str | None = None, maxsize: int = 1024, policy: Policy = "coalesce"
    ) -> Subscription:
        sub = Subscription(self, maxsize, policy, stream_id)
        self._subs = self._subs + (sub,)
        return sub

    def _remove(self, sub: Subscription) -> None:
        self._subs = tuple(s for s in self._subs if s is not sub)

    def register(self, handler: Any, *, stream_id: str | None = None) -> HandlerHandle:
        handle = HandlerHandle(next(self._ids), handler, stream_id)
        self._handlers = self._handlers + (handle,)
        return handle

    def unregister(self, handle: HandlerHandle) -> None:
        self._handlers = tuple(h for h in self._handlers if h is not handle)

    @property
    def subscriber_count(self) -> int:
        return len(self._subs) + len(self._handlers)

    # -- publishing -------------------------------------------------------------------------
    async def publish(self, event: Event) -> None:
        """Deliver ``event`` to every subscriber. Waits only for full ``block`` subscriptions."""
        self.published += 1
        for sub in self._subs:
            if sub.stream_id is not None and sub.stream_id != event.stream_id:
                continue
            fut = sub._offer(event)
            while fut is not None:  # a full "block" subscription: wait for room, then offer again
                await fut
                fut = None if sub.closed else sub._offer(event)
        if self._handlers:
            self._dispatch(event)

    def _dispatch(self, event: Event) -> None:
        etype = type(event)
        for handle in self._handlers:
            if handle.stream_id is not None and handle.stream_id != event.stream_id:
                continue
            calls = handle.hooks.get(etype)
            if calls is None:
                calls = handle._fallback  # an event type of someone else's: on_event only
            for call in calls:
                try:
                    result = call(event)
                    if result is not None and inspect.isawaitable(result):
                        self._track(handle, result)
                except Exception:
                    self.handler_errors += 1
                    log.exception("stream handler %r failed on %s; it was skipped", handle, event.type)

    def _track(self, handle: HandlerHandle, awaitable: Any) -> None:
        task = asyncio.ensure_future(awaitable)
        self._tasks.add(task)

        def done(t: asyncio.Task) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                self.handler_errors += 1
                log.error("async stream handler %r failed: %r", handle, t.exception())

        task.add_done_callback(done)

    def close(self) -> None:
        """End every subscription (their iterators finish after what is queued)."""
        for sub in self._subs:
            sub.close()

    async def drain_handlers(self) -> None:
        """Wait for async handler tasks still running."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def collect(sub: AsyncIterator[Event]) -> list[Event]:
    """Read a subscription to its end (handy in tests and scripts)."""
    return [event async for event in sub]
