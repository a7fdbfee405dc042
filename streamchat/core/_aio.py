"""A tiny asyncio helper: run an awaitable as far as it goes *without waiting*.

The stream controller uses it to tell a chunk the SDK already had buffered (returned at once) from
one it must wait for the network to deliver. Buffered chunks are merged into one event; before a real
wait, whatever is pending is published — so latency is untouched and a firehose pays per burst, not
per token.
"""

from __future__ import annotations

from typing import Any, Coroutine, Generator

__all__ = ["step_now", "Rest"]


class Rest:
    """The rest of a coroutine that had to wait: ``await`` it to finish (like ``yield from``).

    Cancellation and exceptions thrown in by the task are passed on to the coroutine. A Rest that is
    never awaited must be ``close()``d.
    """

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self._coro = coro
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self._coro, self._yielded
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

    def close(self) -> None:
        self._coro.close()


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
