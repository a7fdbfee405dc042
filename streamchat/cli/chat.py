"""``streamchat`` in a plain terminal: a line-by-line chat that keeps the conversation.

Enter sends; Ctrl+C stops the answer being streamed (the partial stays in the conversation);
Ctrl+C at the prompt or Ctrl+D quits. ``/continue`` goes on with a cut-off answer.

The conversation is recorded in the history as it goes (as ``ask`` and the app do), unless
``history`` is False; a history that cannot be opened is one warning, and the chat goes on.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from typing import IO

from ..config import Settings, resolve_model
from ..core.bus import EventBus
from ..core.errors import StreamchatError
from ..core.request import ChatRequest, Message
from ..core.stream import Stream, continue_stream
from ..providers import create_provider
from .output import TextPrinter, confidence_theme


def _read_line(loop: asyncio.AbstractEventLoop, prompt: str) -> asyncio.Future:
    """input() in a daemon thread, so the loop (and model warm-up) runs while a person types."""
    future: asyncio.Future = loop.create_future()

    def work() -> None:
        try:
            value: str | None = input(prompt)
        except (EOFError, OSError):
            value = None

        def deliver() -> None:
            if not future.done():
                future.set_result(value)

        loop.call_soon_threadsafe(deliver)

    threading.Thread(target=work, name="streamchat-input", daemon=True).start()
    return future


async def run_chat(*, settings: Settings, model: str | None, system: str | None, history: bool = True,
                   out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> int:
    loop = asyncio.get_running_loop()
    model_id, reason = await resolve_model(model, settings)
    provider = create_provider(model_id, timeouts=settings.timeouts)
    warm = asyncio.ensure_future(provider.warm())
    err.write(f"streamchat · {model_id} ({reason})\n"
              "Enter sends · Ctrl+C stops an answer · /continue resumes a cut-off one · Ctrl+D quits\n")
    err.flush()
    bus = EventBus()
    terminal = out.isatty()
    theme = confidence_theme(settings.theme, terminal, settings.confidence)
    system = system if system is not None else settings.system
    store, recorder = _open_history(err) if history else (None, None)
    if recorder is not None:
        recorder.attach(bus)
    conversation_id: int | None = None
    answer_id = None  # the last answer's message in the history (an id, or a future of it)
    conversation: list[Message] = []
    last: tuple[ChatRequest, Stream] | None = None
    current: Stream | None = None
    waiting: asyncio.Future | None = None

    def on_interrupt() -> None:
        if current is not None and not current.done:
            current.cancel()
        elif waiting is not None and not waiting.done():
            waiting.set_result(None)

    try:
        loop.add_signal_handler(signal.SIGINT, on_interrupt)
    except (NotImplementedError, RuntimeError):
        pass
    try:
        while True:
            waiting = _read_line(loop, "› ")
            line = await waiting
            if line is None:
                err.write("\n")
                return 0
            line = line.strip()
            if not line:
                continue
            if line == "/continue":
                if last is None or last[1].state == "completed":
                    err.write("nothing to continue: the last answer is complete\n")
                    continue
                request, previous = last
                if conversation and conversation[-1].role == "assistant":
                    conversation.pop()
                current = continue_stream(provider, request, previous.text, bus=bus, timeouts=settings.timeouts)
                if recorder is not None and answer_id is not None:
                    if not isinstance(answer_id, int):
                        answer_id = await asyncio.wrap_future(answer_id)
                    recorder.track(current, message_id=answer_id)
                printer = TextPrinter(out, sanitise=terminal, theme=theme)
                printer.at_line_start = False
                out.write(previous.text)  # show the whole answer again, then its continuation
            else:
                conversation.append(Message("user", line))
                request = ChatRequest(
                    messages=tuple(conversation),
                    system=system,
                    max_tokens=settings.max_tokens,
                    confidence=settings.confidence,
                )
                current = Stream(provider, request, bus=bus, timeouts=settings.timeouts)
                if store is not None and recorder is not None:
                    try:
                        if conversation_id is None:
                            conversation_id = store.create_conversation(line, system=system)
                        store.add_message(conversation_id, "user", line)
                        answer_id = recorder.track(current, conversation_id=conversation_id)
                    except StreamchatError as exc:
                        err.write(f"warning: no history from here on: {exc}\n")
                        recorder.detach()
                        store = recorder = None
                printer = TextPrinter(out, sanitise=terminal, theme=theme)
            handle = bus.register(printer, stream_id=current.id)
            try:
                await current.run()
            finally:
                bus.unregister(handle)
            printer.end_line()
            if current.text:
                conversation.append(Message("assistant", current.text))
            last = (request, current)
            if current.state == "cancelled":
                err.write("(stopped — /continue goes on from here)\n")
            elif current.state == "failed":
                err.write(f"error: {current.error}\n")
                if current.text:
                    err.write("(the partial answer is kept — /continue goes on from here)\n")
            current = None
    finally:
        try:
            loop.remove_signal_handler(signal.SIGINT)
        except (NotImplementedError, RuntimeError):
            pass
        warm.cancel()
        await provider.aclose()
        if recorder is not None:
            await recorder.aclose()
            if recorder.error is not None:
                err.write(f"warning: the last answer may be missing from the history: {recorder.error}\n")
        if store is not None:
            store.close()


def _open_history(err: IO[str]):
    """``(store, recorder)``, or ``(None, None)`` with a warning when the history cannot be used."""
    from ..history import HistoryRecorder, HistoryStore

    try:
        store = HistoryStore()
    except StreamchatError as exc:
        err.write(f"warning: no history for this chat: {exc}\n")
        return None, None
    return store, HistoryRecorder(store)
