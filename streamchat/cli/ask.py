"""``streamchat ask``: one question, the answer streamed to stdout."""

from __future__ import annotations

import asyncio
import signal
import sys
from dataclasses import replace
from typing import IO

from ..config import Settings, resolve_model
from ..core.bus import EventBus
from ..core.request import ChatRequest
from ..core.stream import Stream
from ..providers import create_provider
from .output import NdjsonPrinter, TextPrinter

EXIT_CANCELLED = 130
EXIT_BROKEN_PIPE = 141  # what a shell reports for a program ended by SIGPIPE


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so Python's exit-time flush does not complain about the pipe."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


async def run_ask(
    prompt: str,
    *,
    settings: Settings,
    model: str | None,
    system: str | None,
    timeout: float | None,
    json_mode: bool,
    confidence: bool,
    max_tokens: int | None,
    temperature: float | None,
    out: IO[str],
    err: IO[str],
) -> int:
    """Stream one answer. Returns the exit code; errors are one line on ``err``."""
    model_id, reason = await resolve_model(model, settings)
    if model is None:  # say which model was picked and why; with --model, stderr is for errors only
        err.write(f"using {model_id} ({reason})\n")
        err.flush()
    timeouts = settings.timeouts
    if timeout is not None:
        timeouts = replace(timeouts, total=timeout, connect=min(timeouts.connect or timeout, timeout))
    provider = create_provider(model_id, timeouts=timeouts)
    request = ChatRequest.from_prompt(
        prompt,
        system=system if system is not None else settings.system,
        max_tokens=max_tokens or settings.max_tokens,
        temperature=temperature,
        confidence=confidence or settings.confidence,
    )
    bus = EventBus()
    stream = Stream(provider, request, bus=bus, timeouts=timeouts)
    writer: NdjsonPrinter | TextPrinter
    if json_mode:
        writer = NdjsonPrinter(out, on_closed=stream.cancel)
    else:
        terminal = out.isatty()
        theme = None
        if terminal and request.confidence:  # colour tokens by confidence on a terminal
            from ..theming import load_theme

            theme = load_theme(settings.theme)
        writer = TextPrinter(out, sanitise=terminal, on_closed=stream.cancel, theme=theme)
    bus.register(writer)

    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, stream.cancel)
    except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
        pass
    try:
        await stream.run()
    finally:
        try:
            loop.remove_signal_handler(signal.SIGINT)
        except (NotImplementedError, RuntimeError):
            pass
        await provider.aclose()
    if isinstance(writer, TextPrinter):
        writer.end_line()
    if writer.closed:  # the reader went away (``| head``): nothing more to say, like cat
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    if stream.state == "completed":
        return 0
    if stream.state == "cancelled":
        kept = " (the partial answer above is kept)" if stream.text else ""
        err.write(f"cancelled{kept}\n")
        return EXIT_CANCELLED
    assert stream.error is not None
    err.write(f"error: {stream.error}\n")
    return stream.error.exit_code


def read_prompt(prompt: str | None, stdin: IO[str] = sys.stdin) -> str | None:
    """The prompt from the argument, or from stdin when it is ``-`` or absent and stdin is piped."""
    if prompt is not None and prompt != "-":
        return prompt
    if prompt is None and stdin.isatty():
        return None
    return stdin.read()
