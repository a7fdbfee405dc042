"""``streamchat ask --pipeline NAME``: one question answered in progressive stages.

What goes where:

* **On a terminal** every stage is streamed as it comes, each under a header line (stage and
  model) — the draft first, so the first word on screen comes from the fastest stage. Stage
  progress (a stage that failed, which stage answered) goes to stderr.
* **Piped** (``> answer.md``, ``| less``), stdout gets the final answer's text only: the *last*
  stage is streamed as it comes (it is the answer whenever it succeeds, and a reader of the pipe
  still gets words as they arrive). If the last stage fails or times out before its first word, or
  never runs, the best earlier stage's whole answer is written at the end instead. If it fails
  *after* words were written, those words stay (they cannot be taken back), stderr says so and the
  exit code is the stage's error — the complete earlier answer is in the history. Progress lines go
  to stderr.
* ``--json``: every event, the stages' and the pipeline's Progress events, as NDJSON.

The question and then each stage's answer (with its stage) go into the history unless
``--no-history``; ``--continue`` sends earlier turns, taking the final answer of each earlier
pipeline turn (not all its stages). Ctrl+C cancels (exit 130; partial answers are kept). The exit
code is 0 when some stage produced an answer.
"""

from __future__ import annotations

from dataclasses import replace
from typing import IO, TYPE_CHECKING, Any, Callable

from ..config import Settings
from ..core.bus import EventBus
from ..core.events import TERMINAL_EVENTS, Event, Progress, StreamStarted, Token
from ..core.request import ChatRequest, Message
from ..core.text import neutralise
from ..orchestrate.pipeline import STAGE_START, Pipeline, PipelineRun, load_pipeline
from .ask import EXIT_BROKEN_PIPE, EXIT_CANCELLED, _plan_turn, _quiet_stdout
from ._signals import run_answer
from .output import NdjsonPrinter, TextPrinter, confidence_theme

if TYPE_CHECKING:
    from ..history import HistoryRecorder, HistoryStore
    from ..theming import Theme

__all__ = ["run_pipeline_ask"]


class StagePrinter(TextPrinter):
    """A terminal: every stage's tokens under a header line; Progress lines on ``err`` (the answer's
    line is ended first, so they never land in the middle of it). Stage-start progress is left out:
    the header says it."""

    def __init__(self, out: IO[str], err: IO[str], *, on_closed: Callable[[], Any] | None = None,
                 theme: "Theme | None" = None) -> None:
        super().__init__(out, sanitise=True, on_closed=on_closed, theme=theme)
        self.err = err
        self._headed: set[str] = set()

    def on_event(self, event: Event) -> None:
        kind = type(event)
        if kind is Token:
            super().on_event(event)
        elif kind is StreamStarted:
            assert isinstance(event, StreamStarted)
            if event.stream_id in self._headed:  # a retry of a stage already shown
                return
            self._headed.add(event.stream_id)
            self.end_line()
            gap = "\n" if self._headed and len(self._headed) > 1 else ""
            label = neutralise(f"▍ {event.stage or 'answer'} · {event.provider}:{event.model}")
            self._write(f"{gap}\x1b[2m{label}\x1b[22m\n")
            self.at_line_start = True
        elif kind is Progress:
            assert isinstance(event, Progress)
            if event.message.startswith(STAGE_START):
                return
            self.end_line()
            _say(self.err, event.message)


class FinalPrinter(TextPrinter):
    """Piped: the last stage's tokens only (see the module docstring); ``err`` gets progress."""

    def __init__(self, out: IO[str], err: IO[str], last_stage: str, *,
                 on_closed: Callable[[], Any] | None = None) -> None:
        super().__init__(out, sanitise=False, on_closed=on_closed)
        self.err = err
        self.last_stage = last_stage

    def on_event(self, event: Event) -> None:
        kind = type(event)
        if kind is Token:
            if event.stage == self.last_stage:
                super().on_event(event)
        elif isinstance(event, TERMINAL_EVENTS):
            if event.stage == self.last_stage:  # its answer is all out: later lines may follow it
                self.end_line()
        elif kind is Progress:
            assert isinstance(event, Progress)
            _say(self.err, event.message)


def _say(err: IO[str], message: str) -> None:
    try:
        err.write(message + "\n")
        err.flush()
    except (BrokenPipeError, ValueError):
        pass


async def run_pipeline_ask(
    prompt: str | None,
    store: "HistoryStore | None",
    *,
    pipeline: str,
    settings: Settings,
    system: str | None,
    timeout: float | None,
    json_mode: bool,
    confidence: bool,
    max_tokens: int | None,
    temperature: float | None,
    out: IO[str],
    err: IO[str],
    continue_last: bool = False,
    conversation: int | None = None,
) -> int:
    """Answer ``prompt`` through the pipeline ``pipeline``; returns the exit code.

    ``--timeout`` caps each stage's time (a stage's own ``timeout`` may be shorter)."""
    pipe = await load_pipeline(pipeline, settings)
    turn = _plan_turn(store, continue_last=continue_last, conversation=conversation, resume=False)
    context: tuple[Message, ...] = ()
    if store is not None and turn.conversation_id is not None:
        context = store.context(turn.conversation_id)  # one answer per question: the refined one
    if system is None:
        system = turn.system if turn.conversation_id is not None and turn.system is not None else settings.system
    timeouts = settings.timeouts
    if timeout is not None:
        timeouts = replace(timeouts, total=timeout, connect=min(timeouts.connect or timeout, timeout))
    request = ChatRequest(
        messages=context + (Message("user", prompt or ""),),
        system=system,
        max_tokens=max_tokens or settings.max_tokens,
        temperature=temperature,
        confidence=confidence or settings.confidence,
    )
    bus = EventBus()
    recorder: "HistoryRecorder | None" = None
    on_stream = None
    if store is not None:
        recorder, on_stream = _record(store, turn.conversation_id, turn.system, prompt or "", system, bus)
    run = PipelineRun(pipe, request, bus=bus, timeouts=timeouts, on_stream=on_stream)

    writer: NdjsonPrinter | TextPrinter
    terminal = False
    if json_mode:
        writer = NdjsonPrinter(out, on_closed=run.cancel)
    else:
        _say(err, f"pipeline {pipe.name}: {pipe.describe()}")
        terminal = out.isatty()
        if terminal:  # (with confidence asked for, every stage's tokens carry one)
            theme = confidence_theme(settings.theme, terminal, request.confidence)
            writer = StagePrinter(out, err, on_closed=run.cancel, theme=theme)
        else:
            writer = FinalPrinter(out, err, pipe.stages[-1].name, on_closed=run.cancel)
    bus.register(writer)

    await run_answer(run, run.aclose, recorder)
    return _conclude(run, pipe, writer, recorder, err, terminal=terminal)


def _conclude(run: PipelineRun, pipe: Pipeline, writer: NdjsonPrinter | TextPrinter,
              recorder: "HistoryRecorder | None", err: IO[str], *, terminal: bool) -> int:
    """Finish the output and pick the exit code."""
    partial_last = None
    if isinstance(writer, FinalPrinter):
        last = run.streams[-1] if run.streams else None
        if writer.wrote and last is not None and last.stage == writer.last_stage and last.state != "completed":
            partial_last = last  # the last stage's words are out, but it did not finish
        elif not writer.wrote and run.text:
            writer.on_event(Token(stream_id=run.id, stage=writer.last_stage, text=run.text, index=0))
    if isinstance(writer, TextPrinter):
        writer.end_line()
    if recorder is not None and recorder.error is not None:
        _say(err, f"warning: the answers may be missing from the history: {recorder.error}")
    if writer.closed:  # the reader went away (``| head``)
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    if run.state == "cancelled":
        _say(err, "cancelled" + (" (the partial answer is kept)" if run.text else ""))
        return EXIT_CANCELLED
    if partial_last is not None and partial_last.error is not None:
        best = run.final_stage.name if run.final_stage is not None else "earlier"
        _say(err, f"error: {partial_last.stage} stopped mid-answer ({partial_last.error}); the text above is "
                  f"its partial answer — the {best} answer is in the history")
        return partial_last.error.exit_code
    if run.state == "completed":
        return 0
    error = run.error
    _say(err, f"error: {error}" if error is not None else "error: no stage produced an answer")
    return error.exit_code if error is not None else 1


def _record(store: "HistoryStore", conversation_id: int | None, previous_system: str | None, prompt: str,
            system: str | None, bus: EventBus) -> tuple["HistoryRecorder", Callable[[Any], None]]:
    """Write the question now; each stage's answer is recorded (with its stage) as it grows."""
    from ..history import HistoryRecorder

    cid = store.add_question(conversation_id, prompt, system=system, previous_system=previous_system)
    recorder = HistoryRecorder(store).attach(bus)

    def on_stream(stream: Any) -> None:
        recorder.track(stream, conversation_id=cid)

    return recorder, on_stream
