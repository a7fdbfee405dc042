"""``streamchat ask``: one question, the answer streamed to stdout.

By default the question and the answer go into the history as the answer grows (``--no-history``
skips it). ``--continue`` / ``--conversation ID`` send the conversation's earlier turns as context;
``--resume`` continues the conversation's cut-off, failed or cancelled last answer where it stopped
(across restarts: the partial comes from the history), printing the partial and then the rest.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import IO, TYPE_CHECKING

from ..config import Settings, resolve_model
from ..core.bus import EventBus
from ..core.errors import ConfigError, StreamchatError
from ..core.events import Token
from ..core.request import ChatRequest, Message
from ..core.stream import Stream, continue_stream
from ..providers import create_provider
from ._signals import run_answer
from .output import NdjsonPrinter, TextPrinter, _Writer, confidence_theme

if TYPE_CHECKING:
    from ..history import HistoryRecorder, HistoryStore, ResumeInfo
    from ..orchestrate import Run

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


@dataclass
class _Turn:
    """Where this question belongs in the history, and what is sent with it."""

    conversation_id: int | None = None
    context: tuple[Message, ...] = ()
    system: str | None = None
    #: ``provider:model`` of the conversation's last answer (used when no --model is given)
    model: str | None = None
    resume: "ResumeInfo | None" = None


def _open_history() -> "HistoryStore":
    from ..history import HistoryStore

    return HistoryStore()


def _plan_turn(store: "HistoryStore | None", *, continue_last: bool, conversation: int | None,
               resume: bool) -> _Turn:
    """Find the conversation to continue (if any) and what it contributes to the request."""
    if store is None:
        if continue_last or conversation is not None or resume:
            raise ConfigError("--continue, --conversation and --resume need the history: drop --no-history")
        return _Turn()
    if conversation is None and not (continue_last or resume):
        return _Turn()
    from ..history import HistoryNotFoundError

    if conversation is not None:
        found = store.conversation(conversation)
    else:
        found = store.last_conversation()
        if found is None:
            raise HistoryNotFoundError("there is no conversation to continue yet: ask something first")
    if resume:
        store.reap()  # an answer left "streaming" by a killed streamchat is cut off: resumable
        info = store.resume_info(found.id)
        return _Turn(found.id, info.context, found.system, info.model_id, info)
    return _Turn(found.id, store.context(found.id), found.system, found.last_model)


async def run_ask(
    prompt: str | None,
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
    history: bool = True,
    continue_last: bool = False,
    conversation: int | None = None,
    resume: bool = False,
    pipeline: str | None = None,
    route: bool = False,
) -> int:
    """Stream one answer. Returns the exit code; errors are one line on ``err``.

    ``prompt`` is None only with ``resume``. ``pipeline`` (a pipeline's name) answers in stages
    (``cli.pipeline``); ``route`` lets the router pick the model (``cli.route``).

    The history is opened before anything is sent, so a database that cannot be used stops the
    command with its one-line error (``--no-history`` gets round it)."""
    store = _open_history() if history else None
    try:
        if pipeline is not None:
            from .pipeline import run_pipeline_ask

            return await run_pipeline_ask(
                prompt, store, pipeline=pipeline, settings=settings, system=system, timeout=timeout,
                json_mode=json_mode, confidence=confidence, max_tokens=max_tokens, temperature=temperature,
                out=out, err=err, continue_last=continue_last, conversation=conversation)
        if route:
            from .route import run_routed_ask

            return await run_routed_ask(
                prompt, store, settings=settings, system=system, timeout=timeout, json_mode=json_mode,
                confidence=confidence, max_tokens=max_tokens, temperature=temperature, out=out, err=err,
                continue_last=continue_last, conversation=conversation)
        return await _ask(prompt, store, settings=settings, model=model, system=system, timeout=timeout,
                          json_mode=json_mode, confidence=confidence, max_tokens=max_tokens,
                          temperature=temperature, out=out, err=err, continue_last=continue_last,
                          conversation=conversation, resume=resume)
    finally:
        if store is not None:
            store.close()


async def _ask(prompt: str | None, store: "HistoryStore | None", *, settings: Settings, model: str | None,
               system: str | None, timeout: float | None, json_mode: bool, confidence: bool,
               max_tokens: int | None, temperature: float | None, out: IO[str], err: IO[str],
               continue_last: bool, conversation: int | None, resume: bool) -> int:
    turn = _plan_turn(store, continue_last=continue_last, conversation=conversation, resume=resume)
    if model is None and turn.model is not None:  # go on with the model the conversation used
        model_id, reason = turn.model, f"as in conversation {turn.conversation_id}"
    else:
        model_id, reason = await resolve_model(model, settings)
    if model is None:  # say which model was picked and why; with --model, stderr is for errors only
        err.write(f"using {model_id} ({reason})\n")
        err.flush()
    timeouts = settings.timeouts
    if timeout is not None:
        timeouts = replace(timeouts, total=timeout, connect=min(timeouts.connect or timeout, timeout))
    provider = create_provider(model_id, timeouts=timeouts)
    if system is None:
        system = turn.system if turn.conversation_id is not None and turn.system is not None else settings.system
    messages = turn.context if turn.resume is not None else turn.context + (Message("user", prompt or ""),)
    request = ChatRequest(
        messages=messages,
        system=system,
        max_tokens=max_tokens or settings.max_tokens,
        temperature=temperature,
        confidence=confidence or settings.confidence,
    )
    bus = EventBus()
    partial = turn.resume.partial.rstrip() if turn.resume is not None else ""
    if partial:
        stream = continue_stream(provider, request, partial, bus=bus, timeouts=timeouts)
    else:  # a new question, or a question whose answer never began: answer it afresh
        stream = Stream(provider, request, bus=bus, timeouts=timeouts)
    recorder = _record(store, turn, prompt, system, stream, bus) if store is not None else None

    writer: NdjsonPrinter | TextPrinter
    if json_mode:
        writer = NdjsonPrinter(out, on_closed=stream.cancel)
    else:
        terminal = out.isatty()
        theme = confidence_theme(settings.theme, terminal, request.confidence)
        writer = TextPrinter(out, sanitise=terminal, on_closed=stream.cancel, theme=theme)
        if partial:  # the answer so far, then the rest as it comes
            writer.on_event(Token(stream_id=stream.id, text=partial, index=0))
    bus.register(writer)

    await run_answer(stream, provider.aclose, recorder)
    if isinstance(writer, TextPrinter):
        writer.end_line()
    return conclude(stream, writer, recorder, err)


def conclude(run: "Run", writer: _Writer, recorder: "HistoryRecorder | None", err: IO[str]) -> int:
    """After an answer (a Stream, or an orchestrator's run): say on ``err`` what went wrong, in
    one line, and return the exit code."""
    if recorder is not None and recorder.error is not None:
        err.write(f"warning: the answer may be missing from the history: {recorder.error}\n")
    if writer.closed:  # the reader went away (``| head``): nothing more to say, like cat
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    if run.state == "completed":
        return 0
    if run.state == "cancelled":
        kept = " (the partial answer above is kept)" if run.text else ""
        err.write(f"cancelled{kept}\n")
        return EXIT_CANCELLED
    error = run.error or StreamchatError("the answer did not complete")
    err.write(f"error: {error}\n")
    return error.exit_code


def _record(store: "HistoryStore", turn: _Turn, prompt: str | None, system: str | None, stream: Stream,
            bus: EventBus) -> "HistoryRecorder":
    """Write the question now; the answer is recorded from the bus as it grows."""
    from ..history import HistoryRecorder

    cid = turn.conversation_id
    if turn.resume is None:
        cid = store.add_question(cid, prompt or "", system=system, previous_system=turn.system)
    recorder = HistoryRecorder(store).attach(bus)
    if turn.resume is not None and turn.resume.message is not None:
        recorder.track(stream, message_id=turn.resume.message.id)
    else:
        recorder.track(stream, conversation_id=cid)
    return recorder


def read_prompt(prompt: str | None, stdin: IO[str] = sys.stdin) -> str | None:
    """The prompt from the argument, or from stdin when it is ``-`` or absent and stdin is piped."""
    if prompt is not None and prompt != "-":
        return prompt
    if prompt is None and stdin.isatty():
        return None
    return stdin.read()
