"""Compare: one question to N models at once, each in a lane of its own, and how they compare.

A :class:`Compare` holds the lanes — named ``"1"``, ``"2"``, … in the order given (the names the
TUI uses too, in events and in the history) — and runs them concurrently on one bus: every lane is
a :class:`~streamchat.core.stream.Stream` in a task of its own, so a slow lane never delays a fast
one and a failing lane never stops the others. ``pause``/``resume``/``cancel`` act on one lane
(``lane="2"``) or on all of them.

Which lane a front end shows is decided here, not in the front end, by a :class:`MergeState`
fed with the lanes' events (so the CLI and the TUI decide alike):

* ``side-by-side`` — every lane is shown (``shown`` stays None, ``visible`` is every lane);
* ``first-token-wins`` — the first lane to produce a token is shown; the others keep running, for
  the comparison (if the shown lane then fails, the next lane that has text takes over);
* ``fastest-then-best`` — the first lane to produce a token is shown, and is replaced by the
  preferred lane's answer when that completes (with text).

Each change of the shown lane is published as a :class:`~streamchat.core.events.Progress` event
whose ``stream_id`` is the Compare's ``id`` and whose ``lane`` is the lane now shown.

Every lane has a priority: the order given, except that the preferred lane (``prefer=``, default
the first) comes first. The preferred lane is the reference of the comparison: how much another
lane's answer agrees with it is :func:`similarity` — the **word-level difflib ratio** (words are
runs of letters/digits, compared case-folded, punctuation ignored; ``2·M / T`` where ``M`` is the
number of words matched in order and ``T`` the words of both answers), so identical answers give
1.0, answers without a word in common 0.0, and reordered or reworded answers something between.
Only the first ``SIMILARITY_WORDS`` (4,000) words of each answer count, which bounds the time.

Cost is the small price table of :mod:`.cost` × the usage each answer reported.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..core.bus import EventBus
from ..core.errors import ConfigError, StreamchatError
from ..core.events import (
    Cancelled,
    Completed,
    Event,
    Failed,
    Progress,
    ResponseSnapshot,
    Token,
)
from ..core.request import ChatRequest
from ..core.stream import BufferPolicy, RetryPolicy, Stream, new_stream_id
from ..providers import create_provider, parse_model_id
from . import OnStream
from .cost import cost_of

if TYPE_CHECKING:
    from ..providers.base import Provider, Timeouts

__all__ = [
    "STRATEGIES",
    "SIMILARITY_METHOD",
    "Compare",
    "Comparison",
    "Lane",
    "LaneResult",
    "MergeState",
    "check_strategy",
    "similarity",
]

log = logging.getLogger("streamchat.compare")

#: the merge strategies, the default first
STRATEGIES = ("side-by-side", "first-token-wins", "fastest-then-best")
#: how agreement is measured (named in the comparison's output)
SIMILARITY_METHOD = "word-level difflib ratio"

_WORDS = re.compile(r"\w+")
#: at most this many words of each answer are compared (difflib's time grows with their product)
SIMILARITY_WORDS = 4000


def check_strategy(name: str) -> str:
    """``name`` if it is a merge strategy; else a ConfigError naming the valid ones."""
    if name not in STRATEGIES:
        raise ConfigError(f"unknown merge strategy {name!r}: choose one of {', '.join(STRATEGIES)}")
    return name


def words(text: str) -> list[str]:
    """The words of ``text`` as compared by :func:`similarity`: letter/digit runs, case-folded."""
    return _WORDS.findall(text.casefold())


def similarity(a: str, b: str) -> float:
    """How much two answers agree, 0..1: the word-level difflib ratio (see the module docstring).

    Two answers without words (both empty) are identical: 1.0; one empty and one not: 0.0."""
    wa, wb = words(a)[:SIMILARITY_WORDS], words(b)[:SIMILARITY_WORDS]
    if not wa and not wb:
        return 1.0
    if not wa or not wb:
        return 0.0
    return difflib.SequenceMatcher(None, wa, wb, autojunk=False).ratio()


class MergeState:
    """Which lane a front end shows, decided from the lanes' events (see the module docstring).

    Feed it every event of the lanes (:meth:`feed`); it returns a :class:`Progress` event when the
    shown lane changes (else None). ``shown`` is the lane in focus (None: none yet, or — with
    ``side-by-side`` — every lane); ``visible`` is the lanes to show now; ``changes`` lists every
    change as ``(lane, reason)``. It knows nothing of streams or screens, so any front end can
    keep one.
    """

    def __init__(self, strategy: str, lanes: Sequence[str], preferred: str | None = None, *,
                 labels: Mapping[str, str] | None = None, source_id: str = "merge") -> None:
        self.strategy = check_strategy(strategy)
        if not lanes:
            raise ValueError("MergeState needs at least one lane")
        self.lanes = tuple(lanes)
        self.preferred = preferred if preferred is not None else self.lanes[0]
        if self.preferred not in self.lanes:
            raise ValueError(f"the preferred lane {self.preferred!r} is not one of {self.lanes}")
        self.labels = dict(labels or {})
        self.source_id = source_id
        self.shown: str | None = None
        self.reason: str | None = None
        self.changes: list[tuple[str, str]] = []
        #: lanes in the order of their first token
        self.first_tokens: list[str] = []
        #: lane → how it ended (completed | failed | cancelled)
        self.ended: dict[str, str] = {}

    @property
    def visible(self) -> tuple[str, ...]:
        if self.strategy == "side-by-side":
            return self.lanes
        return (self.shown,) if self.shown is not None else ()

    def feed(self, event: Event) -> Progress | None:
        lane = event.lane
        if lane not in self.lanes or event.stream_id == self.source_id:
            return None
        kind = type(event)
        if kind is Token:
            if not event.text:
                return None
            if lane not in self.first_tokens:
                self.first_tokens.append(lane)
            if self.shown is None and self.strategy != "side-by-side":
                reason = "first to answer" if self.strategy == "first-token-wins" else "fastest"
                return self._show(lane, reason, event)
        elif kind is Completed:
            self.ended[lane] = "completed"
            if (self.strategy == "fastest-then-best" and lane == self.preferred and self.shown != lane
                    and event.text):
                return self._show(lane, "the preferred answer is complete", event)
        elif kind is Failed:
            self.ended[lane] = "failed"
            if lane == self.shown and self.strategy != "side-by-side":
                fallback = self._fallback()
                if fallback is not None:
                    return self._show(fallback, f"lane {lane} failed", event)
        elif kind is Cancelled:
            self.ended[lane] = "cancelled"
        return None

    def _fallback(self) -> str | None:
        """The lane to show instead of a failed one: one that has text and did not fail —
        the preferred lane with fastest-then-best, else the earliest to answer."""
        candidates = [lane for lane in self.first_tokens
                      if lane != self.shown and self.ended.get(lane) != "failed"]
        if self.strategy == "fastest-then-best" and self.preferred in candidates:
            return self.preferred
        return candidates[0] if candidates else None

    def _show(self, lane: str, reason: str, cause: Event) -> Progress:
        self.shown, self.reason = lane, reason
        self.changes.append((lane, reason))
        label = self.labels.get(lane)
        what = f"lane {lane} ({label})" if label else f"lane {lane}"
        return Progress(stream_id=self.source_id, lane=lane, message=f"showing {what}: {reason}")


@dataclass(eq=False)
class Lane:
    """One model answering in a Compare."""

    name: str
    model_id: str
    provider: "Provider"
    stream: Stream
    #: 0 is the preferred lane; then the order given
    priority: int

    @property
    def preferred(self) -> bool:
        return self.priority == 0

    @property
    def snapshot(self) -> ResponseSnapshot:
        return self.stream.snapshot


@dataclass(frozen=True, slots=True)
class LaneResult:
    """One lane's line in the comparison. Times in seconds; ``cost`` in USD (None: unknown);
    ``agreement`` is :func:`similarity` with the preferred lane (None when either has no text)."""

    lane: str
    model: str
    priority: int
    preferred: bool
    state: str
    finish_reason: str | None
    ttft: float | None
    tokens_per_s: float | None
    tokens: int
    duration: float
    usage: dict[str, int] | None
    cost: float | None
    agreement: float | None
    error: str | None = None
    error_kind: str | None = None
    chars: int = 0


@dataclass(frozen=True, slots=True)
class Comparison:
    """How the lanes of a Compare did; ``to_dict()`` is the final ``comparison`` NDJSON line."""

    id: str
    strategy: str
    preferred: str
    shown: str | None
    lanes: tuple[LaneResult, ...]
    similarity: str = SIMILARITY_METHOD
    changes: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "comparison",
            "id": self.id,
            "strategy": self.strategy,
            "preferred": self.preferred,
            "shown": self.shown,
            "similarity": self.similarity,
            "changes": [{"lane": lane, "reason": reason} for lane, reason in self.changes],
            "lanes": [{name: getattr(r, name) for name in r.__slots__} for r in self.lanes],
        }


class Compare:
    """N lanes answering one request concurrently on one bus. Create, then ``await run()``.

    ``models`` are ``provider:model`` ids (or Provider objects); two or more. A bad id raises its
    ConfigError here, before anything streams. The Compare's own handler is registered on the bus
    at once, so a handler registered afterwards (a printer) sees ``merge`` already updated for the
    event it is handed.
    """

    def __init__(
        self,
        models: Sequence["str | Provider"],
        request: ChatRequest,
        *,
        bus: EventBus | None = None,
        merge: str = "side-by-side",
        prefer: str | None = None,
        timeouts: "Timeouts | None" = None,
        retry: RetryPolicy | None = None,
        buffer: BufferPolicy | None = None,
        on_stream: OnStream | None = None,
    ) -> None:
        if len(models) < 2:
            raise ConfigError("compare needs two or more models: give --model at least twice")
        strategy = check_strategy(merge)
        providers = [create_provider(m, timeouts=timeouts) if isinstance(m, str) else m for m in models]
        names = [str(i + 1) for i in range(len(providers))]
        ids = [p.model_id for p in providers]
        preferred = _preferred_index(prefer, ids, names)
        self.id = "c" + new_stream_id()[1:]
        self.bus = bus if bus is not None else EventBus()
        self.request = request
        self.on_stream = on_stream
        order = [preferred] + [i for i in range(len(providers)) if i != preferred]
        priority = {index: rank for rank, index in enumerate(order)}
        self.lanes: list[Lane] = []
        for i, provider in enumerate(providers):
            stream = Stream(provider, request, bus=self.bus, timeouts=timeouts, retry=retry, buffer=buffer,
                            lane=names[i])
            self.lanes.append(Lane(names[i], ids[i], provider, stream, priority[i]))
        self._by_stream = {lane.stream.id: lane for lane in self.lanes}
        self.merge = MergeState(strategy, names, names[preferred], labels=dict(zip(names, ids)),
                                source_id=self.id)
        self._progress: set[asyncio.Task] = set()
        self._started = False
        self.cancelled = False  # cancel() was called for every lane
        self._handle = self.bus.register(self)

    # ------------------------------------------------------------------ lanes
    @property
    def preferred(self) -> Lane:
        return next(lane for lane in self.lanes if lane.priority == 0)

    def by_priority(self) -> list[Lane]:
        return sorted(self.lanes, key=lambda lane: lane.priority)

    def lane(self, name: "str | int") -> Lane:
        """The lane called ``name`` (``"2"`` or 2)."""
        key = str(name)
        for lane in self.lanes:
            if lane.name == key:
                return lane
        raise ConfigError(f"there is no lane {key}: the lanes are {', '.join(l.name for l in self.lanes)}")

    def lane_of(self, event: Event) -> Lane | None:
        """The lane an event belongs to (None for an event of another stream, or the Compare's own)."""
        return self._by_stream.get(event.stream_id)

    @property
    def shown(self) -> Lane:
        """The lane in focus: the merge's shown lane, or the preferred lane while there is none."""
        return self.lane(self.merge.shown) if self.merge.shown is not None else self.preferred

    # ------------------------------------------------------------------ the Run surface
    @property
    def state(self) -> str:
        if not self._started and not any(lane.stream.done for lane in self.lanes):
            return "pending"
        live = [lane.stream for lane in self.lanes if not lane.stream.done]
        if live:
            return "paused" if all(s.state == "paused" for s in live) else "active"
        states = {lane.stream.state for lane in self.lanes}
        if "completed" in states:
            return "completed"
        return "cancelled" if "cancelled" in states else "failed"

    @property
    def done(self) -> bool:
        return all(lane.stream.done for lane in self.lanes)

    @property
    def error(self) -> StreamchatError | None:
        """When every lane failed: the error of the first lane (in the order given)."""
        if self.state != "failed":
            return None
        return next((lane.stream.error for lane in self.lanes if lane.stream.error is not None), None)

    @property
    def text(self) -> str:
        return self.shown.stream.text

    def _targets(self, lane: "str | int | None") -> list[Lane]:
        return list(self.lanes) if lane is None else [self.lane(lane)]

    def pause(self, lane: "str | int | None" = None) -> bool:
        """Pause one lane, or every lane. True if anything was paused."""
        return any([target.stream.pause() for target in self._targets(lane)])

    def resume(self, lane: "str | int | None" = None) -> bool:
        return any([target.stream.resume() for target in self._targets(lane)])

    def cancel(self, lane: "str | int | None" = None) -> bool:
        """Cancel one lane, or every lane (each keeps its partial answer)."""
        if lane is None:
            self.cancelled = True
        return any([target.stream.cancel() for target in self._targets(lane)])

    async def run(self) -> list[ResponseSnapshot]:
        """Run every lane concurrently to its end; the lanes' final snapshots, in lane order.

        ``on_stream`` is called with every lane's stream before any starts. A lane that fails ends
        as failed and the others go on. If this task is cancelled, every lane is cancelled (its
        partial kept) before the cancellation propagates. The providers are closed at the end."""
        if self._started:
            raise RuntimeError("a Compare runs once")
        self._started = True
        try:
            if self.on_stream is not None:
                for lane in self.lanes:
                    self.on_stream(lane.stream)
            # each lane in a task of its own (the Stream imports a cold SDK in a thread, so no lane
            # waits for another's import)
            tasks = [asyncio.ensure_future(lane.stream.run()) for lane in self.lanes]
            try:
                results = await asyncio.gather(*tasks, return_exceptions=True)
            except asyncio.CancelledError:
                for lane in self.lanes:
                    lane.stream.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
            for lane, result in zip(self.lanes, results):
                if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                    log.error("lane %s (%s) crashed: %r", lane.name, lane.model_id, result)
        finally:
            if self._progress:
                await asyncio.gather(*list(self._progress), return_exceptions=True)
            await self._close_providers()
        return [lane.stream.snapshot for lane in self.lanes]

    async def _close_providers(self) -> None:
        async def close(provider: "Provider") -> None:
            try:
                await provider.aclose()
            except Exception:
                log.debug("closing %s failed", provider.model_id, exc_info=True)

        await asyncio.gather(*(close(lane.provider) for lane in self.lanes))

    # ------------------------------------------------------------------ the bus handler
    def on_event(self, event: Event) -> None:
        if event.stream_id not in self._by_stream:
            return
        progress = self.merge.feed(event)
        if progress is not None:
            task = asyncio.ensure_future(self.bus.publish(progress))
            self._progress.add(task)
            task.add_done_callback(self._progress.discard)

    def close(self) -> None:
        """Stop listening to the bus (done by nobody else: the bus may outlive the Compare)."""
        self.bus.unregister(self._handle)

    # ------------------------------------------------------------------ the comparison
    def comparison(self) -> Comparison:
        """How the lanes did (so far, if called before the end)."""
        reference = self.preferred.stream.text
        results = []
        for lane in self.lanes:
            stream = lane.stream
            stats = stream.stats()
            text = stream.text
            snap = stream.snapshot
            if lane.preferred:
                agreement = 1.0 if text else None
            else:
                agreement = similarity(text, reference) if text and reference else None
            error = stream.error
            results.append(LaneResult(
                lane=lane.name,
                model=lane.model_id,
                priority=lane.priority,
                preferred=lane.preferred,
                state=stream.state,
                finish_reason=snap.finish_reason,
                ttft=stats.ttft,
                tokens_per_s=stats.tokens_per_s,
                tokens=stats.tokens,
                duration=stats.elapsed,
                usage=dict(snap.usage) if snap.usage else None,
                cost=cost_of(lane.provider.name, lane.provider.model, snap.usage),
                agreement=agreement,
                error=str(error) if error is not None else None,
                error_kind=error.kind if error is not None else None,
                chars=stats.chars,
            ))
        return Comparison(self.id, self.merge.strategy, self.preferred.name, self.merge.shown, tuple(results),
                          changes=tuple(self.merge.changes))


def _preferred_index(prefer: str | None, ids: list[str], names: list[str]) -> int:
    """Which lane ``prefer`` names: a model id among the lanes' (the first such lane), or a lane name."""
    if prefer is None:
        return 0
    if prefer in names:
        return names.index(prefer)
    provider, model = parse_model_id(prefer)
    wanted = f"{provider}:{model}"
    if wanted in ids:
        return ids.index(wanted)
    raise ConfigError(f"--prefer {prefer} is not one of the models compared ({', '.join(ids)})")
