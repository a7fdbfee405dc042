"""Ctrl+C while an answer streams: stop the answer (its partial is kept), do not kill the process."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any, Awaitable, Callable, Iterator

__all__ = ["run_answer", "sigint_calls"]


@contextlib.contextmanager
def sigint_calls(handler: Callable[[], Any]) -> Iterator[None]:
    """While the body runs, SIGINT calls ``handler`` (e.g. ``stream.cancel``) on the running loop
    instead of raising KeyboardInterrupt; where signals cannot be handled (not the main thread),
    the body just runs."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, handler)
    except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)


async def run_answer(run: Any, close: Callable[[], Awaitable[Any]], recorder: Any = None) -> None:
    """Run ``run`` (a Stream or an orchestrator's run) to its end — Ctrl+C stops it, keeping its
    partial — then ``close`` what it used and the history ``recorder`` (if any), whatever happened."""
    try:
        with sigint_calls(run.cancel):
            await run.run()
    finally:
        await close()
        if recorder is not None:
            await recorder.aclose()
