"""Orchestrators: several streams working on one question, visibly.

* :mod:`.compare` — N lanes in parallel (e.g. local next to cloud), merge strategies, a comparison.
* :mod:`.pipeline` — progressive stages (a fast draft, then refinements), from the config file.
* :mod:`.router` — analyse a query, pick a model from tiers, an LRU+TTL routing cache.

Every orchestrator speaks the same two small contracts, so the CLI, the TUI, ``bench`` and the
history can drive any of them the way they drive a single :class:`~streamchat.core.stream.Stream`:

* :class:`Run` — what a front end needs of something that answers: ``run()``, ``pause()``,
  ``resume()``, ``cancel()``, ``state``, ``text``, ``error``, ``id`` and the ``bus`` its events go
  to. A :class:`~streamchat.core.stream.Stream` is a ``Run``.
* :data:`OnStream` — an orchestrator calls ``on_stream(stream)`` for every ``Stream`` it creates,
  before the stream starts, so that a subscriber that follows streams by id (the history
  recorder's ``track``) sees every one of them from its first event. A pipeline, whose stages
  start one after another, also awaits what ``on_stream`` returns, if it is awaitable (the TUI
  gets the stage's view ready).

Orchestrators import core and providers, never a UI; events they make themselves (a stage that
failed, a route that was picked) are :class:`~streamchat.core.events.Progress` events on the bus.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..core.bus import EventBus
    from ..core.errors import StreamchatError
    from ..core.events import ResponseSnapshot
    from ..core.stream import Stream

__all__ = ["Run", "OnStream"]

#: called with each Stream an orchestrator creates, before it starts
OnStream = Callable[["Stream"], Any]


@runtime_checkable
class Run(Protocol):
    """Something that produces one answer on a bus and can be steered (a Stream is one)."""

    id: str
    bus: "EventBus"
    state: str  # pending | active | paused | completed | cancelled | failed
    error: "StreamchatError | None"

    @property
    def text(self) -> str: ...

    @property
    def done(self) -> bool: ...

    def pause(self) -> bool: ...

    def resume(self) -> bool: ...

    def cancel(self) -> bool: ...

    async def run(self) -> "ResponseSnapshot": ...
