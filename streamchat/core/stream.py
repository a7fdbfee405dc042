"""The controller for one live response.

States::

    pending ──▶ active ⇄ paused ──▶ completed | cancelled | failed

* ``pause()`` stops *reading* from the provider: the next chunk is not pulled from the adapter, so
  the SDK does not read the HTTP body and TCP back-pressure reaches the server. ``resume()`` reads on.
* ``cancel()`` closes the provider response (the adapter's generator is closed) and ends the stream
  as cancelled with the partial text kept.
* Timeouts (see :class:`~streamchat.providers.base.Timeouts`): first token, idle gap between chunks and
  total are measured on an *active* clock that stands still while the stream is paused. One timer
  (a watchdog) serves all three, so a token costs no timer work; the connect timeout is the SDK's.
* Retries: before the first token, a retryable error (429, overload, connection failure) starts the
  request again after an exponential, jittered delay — or the server's ``retry-after``. After the first
  token a failure ends the stream as failed, partial kept. The SDKs' own retries are turned off so
  that every retry is visible as a :class:`Retrying` event, for every provider alike.
* Buffering (:class:`BufferPolicy`): tokens can be published in groups — after N tokens or T ms,
  whichever comes first.
* Fairness: when the SDK has many events buffered (a firehose: one socket read can hold thousands,
  and parsing each costs the SDK ~0.1 ms), the read loop would run without ever waiting. Every
  :data:`YIELD_EVERY_S` of such work it publishes what it has (as the buffer policy allows) and
  yields to the event loop once, so a key press (pause!) or a frame never waits behind a burst
  for more than a few milliseconds.

Nothing here imports an SDK or a UI.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from ._aio import Rest, step_now
from .bus import EventBus
from .errors import StreamchatError, StreamTimeoutError
from .events import (
    Cancelled,
    Completed,
    Event,
    Failed,
    Paused,
    ResponseSnapshot,
    Resumed,
    Retrying,
    StreamStarted,
    StreamStats,
    Token,
)
from .request import ChatRequest, Chunk, join_continuation

if TYPE_CHECKING:
    from ..providers.base import Opened, Provider, Timeouts

__all__ = ["Stream", "RetryPolicy", "BufferPolicy", "StreamStatus", "continue_stream"]

log = logging.getLogger("streamchat.stream")

_ids = itertools.count(1)
_PID = os.getpid()
#: the longest the read loop works through buffered events before it yields to the event loop
YIELD_EVERY_S = 0.005
#: see BufferPolicy.read_pace_ms
PACE_BELOW_TOKENS = 64


def new_stream_id() -> str:
    return f"s{_PID:x}-{int(time.time() * 1000):x}-{next(_ids)}"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries before the first token. Delay for attempt n (1-based): ``base·2^(n-1)`` capped at
    ``max_delay``, minus up to ``jitter`` of it at random; a server's ``retry-after`` wins (up to
    ``max_retry_after``)."""

    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 20.0
    jitter: float = 0.25
    max_retry_after: float = 60.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None and retry_after >= 0:
            return min(retry_after, self.max_retry_after)
        raw = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        return raw * (1.0 - self.jitter * random.random())


@dataclass(frozen=True, slots=True)
class BufferPolicy:
    """How tokens become :class:`Token` events.

    By default (``merge=True``, ``max_tokens=1``) tokens that the SDK had already received when read
    — a burst, e.g. a firehose — are published together as one event (``count`` > 1) just before
    the stream next waits for the network; a token that had to be waited for goes out at once. So a
    steady stream gives one event per token with no added latency, and a firehose costs per burst,
    not per token. Tokens carrying a confidence are always published one by one.

    ``max_tokens`` > 1 holds tokens back until that many are pending or the oldest is ``max_ms`` old,
    whichever comes first. ``merge=False`` publishes exactly one event per token, always.
    """

    max_tokens: int = 1
    max_ms: float = 0.0
    merge: bool = True
    #: with the default policy, a burst is published at least every this many tokens
    burst_limit: int = 256
    #: After a read that had to wait for the network, the next read starts no sooner than this
    #: many ms after it: what arrives meanwhile waits in the socket and is read — and published —
    #: in one go. A steady stream of 200 tokens/s is then ~40 reads a second instead of 200, and
    #: each read costs the SDK's HTTP stack (its timeouts, the event loop's reader) ~0.2 ms. For
    #: a reader that shows tokens in frames anyway (the app: 5–30 frames/s); 0 reads at once.
    #: Only while the reads bring few tokens (fewer than PACE_BELOW_TOKENS since the last one):
    #: a burst, a firehose, is read as fast as it comes.
    read_pace_ms: float = 0.0

    @property
    def limit(self) -> int:
        """Publish when this many tokens are pending."""
        if not self.merge:
            return 1
        return self.max_tokens if self.max_tokens > 1 else self.burst_limit

    @property
    def hold_s(self) -> float:
        """How long pending tokens may wait for more before being published."""
        return self.max_ms / 1000 if self.max_tokens > 1 else 0.0


@dataclass(frozen=True, slots=True)
class StreamStatus:
    stream_id: str
    state: str
    provider: str
    model: str
    stats: StreamStats
    error: StreamchatError | None = None


class _Cancel(Exception):
    """Internal: cancel() was called from inside the stream's own task (see ``_stop_reason``)."""


class Stream:
    """One live response from one provider. Create, then ``await run()`` (or ``start()``)."""

    def __init__(
        self,
        provider: "Provider",
        request: ChatRequest,
        *,
        bus: EventBus | None = None,
        timeouts: "Timeouts | None" = None,
        retry: RetryPolicy | None = None,
        buffer: BufferPolicy | None = None,
        lane: str | None = None,
        stage: str | None = None,
        stream_id: str | None = None,
        continues: str | None = None,
    ) -> None:
        self.provider = provider
        self.request = request
        self.bus = bus if bus is not None else EventBus()
        self.timeouts = timeouts or provider.timeouts
        self.retry = retry or RetryPolicy()
        self.buffer = buffer or BufferPolicy()
        self.lane = lane
        self.stage = stage
        self.id = stream_id or new_stream_id()
        #: the partial answer this stream continues (its text is the start of ours), if any
        self.continues = continues
        self._original_request = request  # for a continuation: the request it continues

        self.state = "pending"
        self.error: StreamchatError | None = None
        self._task: asyncio.Task | None = None
        self._resume = asyncio.Event()
        self._resume.set()
        self._stop_reason: str | None = None  # "cancel" | "first_token" | "idle" | "total"
        # clocks (monotonic seconds)
        self._t0: float | None = None  # when run() started (the active clock's zero)
        self._paused_at: float | None = None
        self._paused_total = 0.0
        self._attempt_start = 0.0  # active clock
        self._last_chunk = 0.0  # active clock
        self._first_token_at: float | None = None  # active clock
        self._end: float | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        # counters
        self._tokens = 0
        self._chars = 0
        self._retries = 0
        self._errors = 0
        self._pieces: list[str] = []
        self._usage: dict[str, int] | None = None
        self._finish: str | None = None
        self._extra: dict[int, tuple[float | None, int]] = {}  # piece → (confidence, tokens) if not (None, 1)
        self._published = 0  # pieces [0, _published) are on the bus
        self._published_tokens = 0  # … holding this many tokens
        self._run_since = 0.0  # when the oldest unpublished token arrived
        self._run_exact = False  # an unpublished token carries a confidence

    # ------------------------------------------------------------------ public control
    def start(self) -> asyncio.Task:
        """Run in a task of its own and return it."""
        if self._task is None:
            self._task = asyncio.ensure_future(self.run())
        return self._task

    def pause(self) -> bool:
        """Stop reading from the provider. Returns False when there is nothing to pause."""
        if self.state not in ("active", "pending") or self._paused_at is not None:
            return False
        self._paused_at = time.monotonic()
        self._resume.clear()
        self.state = "paused"
        self._cancel_watchdog()
        self._emit_nowait(Paused(stream_id=self.id, lane=self.lane, stage=self.stage))
        return True

    def resume(self) -> bool:
        if self._paused_at is None or self.done:
            return False
        self._paused_total += time.monotonic() - self._paused_at
        self._paused_at = None
        self.state = "active"
        self._emit_nowait(Resumed(stream_id=self.id, lane=self.lane, stage=self.stage))
        self._resume.set()
        self._arm_watchdog()
        return True

    def toggle_pause(self) -> bool:
        return self.resume() if self._paused_at is not None else self.pause()

    def cancel(self) -> bool:
        """Close the provider response and end as cancelled, keeping the partial text."""
        if self.done:
            return False
        if self._task is None:  # never started: end at once
            self._stop_reason = "cancel"
            self.state = "cancelled"
            return True
        self._interrupt("cancel")
        return True

    @property
    def done(self) -> bool:
        return self.state in ("completed", "cancelled", "failed")

    @property
    def snapshot(self) -> ResponseSnapshot:
        """What is known of the response now — the same as folding its events with
        :func:`~streamchat.core.events.accumulate`, built on demand (no per-token cost)."""
        stats = self.stats()
        return ResponseSnapshot.with_text(
            self.text, stream_id=self.id, state=self.state, provider=self.provider.name,
            model=self.provider.model, lane=self.lane, stage=self.stage, tokens=stats.tokens,
            error=self.error, usage=self._usage, stats=stats if self.done else None,
            finish_reason=self._finish,
        )

    @property
    def text(self) -> str:
        """The answer so far (for a continuation: the partial it continues, then the new text)."""
        base = self.continues or ""
        return base + "".join(self._pieces)

    def status(self) -> StreamStatus:
        return StreamStatus(self.id, self.state, self.provider.name, self.provider.model, self.stats(), self.error)

    def stats(self) -> StreamStats:
        now = self._active_now() if self._end is None else self._end
        elapsed = max(0.0, now - self._t0) if self._t0 is not None else 0.0
        ttft = None
        tps = None
        if self._first_token_at is not None:
            ttft = self._first_token_at - self._t0
            span = now - self._first_token_at
            if span > 0 and self._tokens > 1:
                tps = (self._tokens - 1) / span
        paused = self._paused_total + (time.monotonic() - self._paused_at if self._paused_at else 0.0)
        return StreamStats(
            tokens=self._tokens,
            chars=self._chars,
            ttft=ttft,
            tokens_per_s=tps,
            elapsed=elapsed,
            paused_s=paused,
            retries=self._retries,
            errors=self._errors,
        )

    async def wait(self) -> ResponseSnapshot:
        if self._task is None:
            return await self.run()
        await asyncio.shield(self._task)
        return self.snapshot

    def continuation(self, **kw) -> "Stream":
        """A new stream that makes the model go on after this one's (cut-off) text."""
        return continue_stream(
            self.provider,
            self._original_request,
            self.text,
            bus=kw.pop("bus", self.bus),
            timeouts=kw.pop("timeouts", self.timeouts),
            retry=kw.pop("retry", self.retry),
            buffer=kw.pop("buffer", self.buffer),
            lane=kw.pop("lane", self.lane),
            stage=kw.pop("stage", self.stage),
            **kw,
        )

    # ------------------------------------------------------------------ running
    async def run(self) -> ResponseSnapshot:
        """Stream the response to its end and return the final snapshot.

        Never raises a :class:`StreamchatError`: failures end the stream as ``failed`` (see
        ``self.error``). If the task running it is cancelled from outside, the stream ends as
        cancelled (partial kept, event published) and the cancellation propagates.
        """
        if self._task is None:
            self._task = asyncio.current_task()
        if self.done:  # cancelled before it started
            await self._finish_cancelled()
            return self.snapshot
        try:
            if self.provider.prepared:
                self.provider.prepare()
            else:  # importing an SDK can take seconds: never on the event loop (other lanes, keys)
                await asyncio.to_thread(self.provider.prepare)
        except StreamchatError as err:
            self._t0 = self._end = time.monotonic()
            await self._finish_failed(err)
            return self.snapshot
        except asyncio.CancelledError:  # cancelled while the SDK was imported: nothing was sent
            self._t0 = self._end = time.monotonic()
            if self._stop_reason is None:  # from outside: end as cancelled, then propagate
                await asyncio.shield(self._finish_cancelled())
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            await self._finish_cancelled()
            return self.snapshot
        self._t0 = time.monotonic()
        if self._paused_at is not None:  # paused before it started: the pause begins now
            self._paused_at = self._t0
        try:
            await self._attempts()
        except (asyncio.CancelledError, _Cancel) as interrupt:
            reason = self._stop_reason
            task = self._task
            if reason is None:  # cancelled from outside: keep the partial, then propagate
                await asyncio.shield(self._finish_cancelled())
                raise
            if task is not None and isinstance(interrupt, asyncio.CancelledError):
                task.uncancel()
            if reason == "cancel":
                await self._finish_cancelled()
            else:
                await self._finish_failed(self._timeout_error(reason))
        except StreamchatError as err:
            await self._finish_failed(err)
        except Exception as exc:  # a bug in an adapter: still keep the partial and say so
            log.exception("stream %s crashed", self.id)
            await self._finish_failed(StreamchatError(f"internal error in {self.provider.name} adapter: {exc!r}"))
        finally:
            self._cancel_watchdog()
        return self.snapshot

    async def _attempts(self) -> None:
        attempt = 0
        while True:
            attempt += 1
            self._attempt_start = self._active_now()
            self._last_chunk = self._attempt_start
            self.state = "paused" if self._paused_at is not None else "active"
            await self._emit(
                StreamStarted(
                    stream_id=self.id,
                    lane=self.lane,
                    stage=self.stage,
                    provider=self.provider.name,
                    model=self.provider.model,
                    attempt=attempt,
                    continues=self.continues,
                )
            )
            self._arm_watchdog()
            try:
                opened = await self.provider.open(self.request)
                # Whatever the SDK read while opening (headers, often the first tokens too) came
                # in by now: a token taken from that buffer, without a network wait, is timed here.
                self._last_chunk = self._active_now()
                await self._read(opened)
                return
            except StreamchatError as err:
                self._errors += 1
                if self._tokens or not err.retryable or attempt >= self.retry.max_attempts:
                    raise
                delay = self.retry.delay(attempt, err.retry_after)
                remaining = self._remaining_total()
                if remaining is not None and delay >= remaining:
                    raise  # waiting would outlast the total timeout: give the real reason now
                self._retries += 1
                await self._emit(
                    Retrying(stream_id=self.id, lane=self.lane, stage=self.stage,
                             attempt=attempt, delay=delay, reason=str(err))
                )
                self._cancel_watchdog()
                self._arm_watchdog(total_only=True)
                await asyncio.sleep(delay)

    async def _read(self, opened: "Opened") -> None:
        """Read the provider's events until it is done; publish tokens as BufferPolicy says."""
        resume = self._resume
        limit = self.buffer.limit
        convert = opened.convert
        next_event = opened.events.__anext__
        take, take_text = self._take, self._take_text
        pieces, monotonic = self._pieces, time.monotonic
        slice_end = monotonic() + YIELD_EVERY_S
        pace = self.buffer.read_pace_ms / 1000
        read_at = None  # when a read that had to wait for the network ended (with a pace)
        tokens_at_read = 0  # the tokens counted when it did
        try:
            while True:
                if self._stop_reason is not None:  # cancel() from a handler in this task
                    raise _Cancel
                if read_at is not None:  # (see BufferPolicy.read_pace_ms)
                    gap = read_at + pace - monotonic()
                    read_at = None
                    if gap > 0:
                        if monotonic() - self._run_since >= self.buffer.hold_s:
                            await self._flush()  # (what was read goes out now, not after the gap)
                        await asyncio.sleep(gap)
                        if self._stop_reason is not None:
                            raise _Cancel
                if not resume.is_set():
                    await self._flush()  # show everything that arrived before the pause
                    await resume.wait()
                event, rest = step_now(next_event())
                waited = True  # did this step await (the network, or a yield in a burst)?
                if rest is not None:  # nothing buffered: the next event needs the network
                    event = await self._wait_for_chunk(rest)
                    # the clock is read only after a real wait: a burst arrives all at once
                    self._last_chunk = self._active_now()
                    if pace:  # (not in a burst: the reads it takes are big already)
                        if self._tokens - tokens_at_read < PACE_BELOW_TOKENS:
                            read_at = monotonic()
                        tokens_at_read = self._tokens
                elif monotonic() < slice_end:
                    waited = False
                if waited:
                    try:
                        if rest is None:  # a long burst: let keys and frames in (see Fairness)
                            if monotonic() - self._run_since >= self.buffer.hold_s:  # unless the policy holds
                                await self._flush()
                            await asyncio.sleep(0)
                        if not resume.is_set():  # paused while this event was on its way: hold it
                            await resume.wait()
                    except asyncio.CancelledError:
                        item = convert(event)  # every word that arrived belongs to the partial
                        if item is not None:
                            take_text(item) if type(item) is str else take(item)
                        raise
                    slice_end = monotonic() + YIELD_EVERY_S
                item = convert(event)
                if type(item) is str:  # the common case, inlined: a plain token
                    if not item:
                        continue
                    if self._first_token_at is None:
                        self._note_first_token()
                    if len(pieces) == self._published:
                        self._run_since = monotonic()
                    pieces.append(item)
                    self._tokens += 1
                    self._chars += len(item)
                elif item is None or not take(item):
                    continue
                if self._tokens - self._published_tokens >= limit:
                    await self._flush()
        except StopAsyncIteration:
            pass
        except (StreamchatError, _Cancel):
            raise
        except Exception as exc:
            error = self.provider.translate(exc, True)  # the request was sent and accepted
            if error is None:
                raise
            raise error from exc
        finally:
            await _close(opened.close)
        await self._flush()
        if self._stop_reason is not None:  # a handler cancelled while the last tokens went out
            raise _Cancel
        await self._finish_completed()

    async def _wait_for_chunk(self, rest: Rest) -> Chunk:
        """Finish a read that must wait — publishing pending tokens first, unless the buffer
        policy holds them; then a timer publishes them when their time is up, even if the next
        chunk is slow. (The read itself must stay in this task: the SDKs' cancel scopes are bound
        to it.)"""
        if self._unpublished() == 0:
            return await rest
        hold = self.buffer.hold_s - (time.monotonic() - self._run_since)
        if hold <= 0:
            try:
                await self._flush()
            except BaseException:  # cancelled while publishing: unwind the started read first
                await rest.abandon()
                raise
            return await rest
        flushing: list[asyncio.Task] = []
        timer = asyncio.get_running_loop().call_later(
            hold, lambda: flushing.append(asyncio.ensure_future(self._flush()))
        )
        try:
            return await rest
        finally:
            timer.cancel()
            if flushing:  # keep events in order: the timed flush goes out before anything newer
                await asyncio.wait(flushing)

    def _take(self, chunk: Chunk) -> bool:
        """Count a chunk in; returns True if it added text. Tokens are published by _flush."""
        if chunk.usage:
            self._usage = {**(self._usage or {}), **chunk.usage}
        if chunk.finish_reason:
            self._finish = chunk.finish_reason
        if chunk.confidence is not None:  # exact per-token confidence is never merged away
            self._run_exact = True
        return self._take_text(chunk.text, chunk.confidence, chunk.count)

    def _take_text(self, text: str, confidence: float | None = None, count: int = 1) -> bool:
        """Count text in (the read loop inlines this for plain tokens)."""
        if not text:
            return False
        if self._first_token_at is None:
            self._note_first_token()
        pieces = self._pieces
        if len(pieces) == self._published:
            self._run_since = time.monotonic()
        if confidence is not None or count != 1:
            self._extra[len(pieces)] = (confidence, count)
        pieces.append(text)
        self._tokens += count
        self._chars += len(text)
        return True

    def _note_first_token(self) -> None:
        self._first_token_at = self._last_chunk
        self._arm_watchdog()  # from the first-token deadline to the (often shorter) idle one

    def _unpublished(self) -> int:
        return len(self._pieces) - self._published

    async def _flush(self) -> None:
        """Publish the tokens not yet published: one event, or one per token when any carries a
        confidence (so colouring by confidence stays exact)."""
        start, end = self._published, len(self._pieces)
        if end == start:
            return
        index = self._published_tokens  # token index of the first unpublished piece
        self._published, self._published_tokens = end, self._tokens
        pieces, ids = self._pieces, dict(stream_id=self.id, lane=self.lane, stage=self.stage)
        if self._run_exact or not self.buffer.merge:
            self._run_exact = False
            extra = self._extra
            for i in range(start, end):
                confidence, count = extra.get(i, (None, 1))
                await self._emit(Token(**ids, text=pieces[i], index=index, confidence=confidence, count=count))
                index += count
            return
        text = pieces[start] if end - start == 1 else "".join(pieces[start:end])
        await self._emit(Token(**ids, text=text, index=index, count=self._tokens - index))

    # ------------------------------------------------------------------ endings
    async def _finish_completed(self) -> None:
        self._end = self._active_now()
        text = self.text
        if self.continues is not None:
            text = join_continuation(self.continues, "".join(self._pieces))
        self.state = "completed"
        await self._emit(
            Completed(stream_id=self.id, lane=self.lane, stage=self.stage, text=text,
                      usage=self._usage, stats=self.stats(), finish_reason=self._finish)
        )

    async def _finish_failed(self, err: StreamchatError) -> None:
        self._end = self._active_now()
        await self._flush()
        self.error = err
        self.state = "failed"
        await self._emit(
            Failed(stream_id=self.id, lane=self.lane, stage=self.stage, error=err, partial=self.text,
                   retryable=err.retryable, stats=self.stats())
        )

    async def _finish_cancelled(self) -> None:
        if self._end is None:
            self._end = self._active_now()
        await self._flush()
        self.state = "cancelled"
        await self._emit(
            Cancelled(stream_id=self.id, lane=self.lane, stage=self.stage, partial=self.text, stats=self.stats())
        )

    # ------------------------------------------------------------------ plumbing
    async def _emit(self, event: Event) -> None:
        await self.bus.publish(event)

    def _emit_nowait(self, event: Event) -> None:
        """Publish from a synchronous control call (pause/resume): ordered via the loop."""
        task = asyncio.ensure_future(self.bus.publish(event))
        _background.add(task)
        task.add_done_callback(_background.discard)

    # The active clock stands still while paused.
    def _active_now(self) -> float:
        now = self._paused_at if self._paused_at is not None else time.monotonic()
        return now - self._paused_total

    def _remaining_total(self) -> float | None:
        total = self.timeouts.total
        if total is None or self._t0 is None:
            return None
        return total - (self._active_now() - self._t0)

    def _deadline(self, total_only: bool = False) -> tuple[float, str] | None:
        """The nearest deadline on the active clock, and which timeout it is."""
        candidates: list[tuple[float, str]] = []
        t = self.timeouts
        if t.total is not None:
            candidates.append((self._t0 + t.total, "total"))
        if not total_only:
            if self._first_token_at is None and t.first_token is not None:
                candidates.append((self._attempt_start + t.first_token, "first_token"))
            elif self._first_token_at is not None and t.idle is not None:
                candidates.append((self._last_chunk + t.idle, "idle"))
        return min(candidates) if candidates else None

    def _arm_watchdog(self, total_only: bool = False) -> None:
        self._cancel_watchdog()
        if self.done or self._paused_at is not None:
            return
        deadline = self._deadline(total_only)
        if deadline is None:
            return
        when, _ = deadline
        loop = asyncio.get_running_loop()
        delay = max(0.0, when - self._active_now())
        self._watchdog = loop.call_later(delay, self._watchdog_fired, total_only)

    def _cancel_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _watchdog_fired(self, total_only: bool) -> None:
        self._watchdog = None
        if self.done or self._paused_at is not None:
            return
        deadline = self._deadline(total_only)
        if deadline is None:
            return
        when, which = deadline
        if self._active_now() < when:  # a chunk came since: sleep until the new deadline
            self._watchdog = asyncio.get_running_loop().call_later(
                when - self._active_now(), self._watchdog_fired, total_only
            )
            return
        self._interrupt(which)

    def _interrupt(self, reason: str) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
            self._resume.set()  # a paused stream wakes up to end
            task = self._task
            # Called from inside the stream's own task (a handler reacting to an event): the read
            # loop sees _stop_reason at its next step; cancelling ourselves would leak.
            if task is not None and not task.done() and asyncio.current_task() is not task:
                task.cancel()

    def _timeout_error(self, which: str) -> StreamTimeoutError:
        t = self.timeouts
        name = self.provider.name
        seconds = {"first_token": t.first_token, "idle": t.idle, "total": t.total}.get(which)
        what = {
            "first_token": f"no answer from {name} within {seconds:g} s",
            "idle": f"{name} stopped sending for {seconds:g} s",
            "total": f"the answer from {name} took longer than {seconds:g} s",
        }[which]
        hint = "the partial answer is kept; try again or raise --timeout" if self._tokens else "try again or raise --timeout"
        return StreamTimeoutError(f"timed out: {what}: {hint}", which=which, provider=name)


_background: set[asyncio.Task] = set()


async def _close(close: Callable[[], Awaitable[Any]]) -> None:
    """Close a provider response; a failure to close must not hide why the stream ended."""
    try:
        await close()
    except Exception:
        log.debug("closing the provider response failed", exc_info=True)


def continue_stream(
    provider: "Provider",
    request: ChatRequest,
    partial: str,
    **kw,
) -> Stream:
    """A stream that continues ``partial`` (a cut-off answer to ``request``) where it stopped.

    The provider builds the continuation request (Anthropic prefill, Ollama/local final assistant
    message, OpenAI instruction); the finished text is the partial joined with what comes next.
    """
    base = partial.rstrip()
    stream = Stream(provider, provider.continuation(request, base), continues=base, **kw)
    stream._original_request = request
    return stream
