"""A tiny asyncio helper: run an awaitable as far as it goes *without waiting*.

The stream controller uses it to tell a chunk the SDK already had buffered (returned at once) from
one it must wait for the network to deliver. Buffered chunks are merged into one event; before a real
wait, whatever is pending is published — so latency is untouched and a firehose pays per burst, not
per token.
"""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine, Generator

__all__ = ["step_now", "Rest"]


class Rest:
    """The rest of a coroutine that had to wait: ``await`` it to finish (like ``yield from``).

    Cancellation and exceptions thrown in by the task are passed on to the coroutine. A Rest that
    will not be awaited must be finished with ``await rest.abandon()``, so that the coroutine's own
    clean-up (closing an HTTP response, say) runs as it would on a cancellation.
    """

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self._coro = coro
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        return _drive(self._coro, self._yielded)

    async def abandon(self) -> None:
        """Cancel the coroutine where it waits and let it unwind (its awaits still work)."""
        try:
            first = self._coro.throw(asyncio.CancelledError())
        except BaseException:  # it ended at once (StopIteration, CancelledError, its own error)
            return
        try:
            await _Drive(self._coro, first)
        except BaseException:
            pass


class _Drive:
    __slots__ = ("coro", "first")

    def __init__(self, coro: Any, first: Any) -> None:
        self.coro, self.first = coro, first

    def __await__(self) -> Generator[Any, Any, Any]:
        return _drive(self.coro, self.first)


def _drive(coro: Any, value: Any) -> Generator[Any, Any, Any]:
    while True:
        try:
            sent = yield value
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                value = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                value = coro.send(sent)
            except StopIteration as stop:
                return stop.value


_WAIT = object()


def step_now(coro: Coroutine[Any, Any, Any]) -> tuple[Any, Rest | None]:
    """Run ``coro`` until it finishes or must wait.

    Returns ``(result, None)`` when it finished without waiting, or ``(None, rest)`` when it must
    wait — then ``await rest`` finishes it. Exceptions (``StopAsyncIteration`` included) propagate.
    """
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        return stop.value, None
    return None, Rest(coro, yielded)
