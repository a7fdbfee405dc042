"""The chat screen: the conversation, N side-by-side lanes, live stats, the prompt — and the keys
that steer a live answer.

How an answer reaches the screen: each lane's :class:`~streamchat.core.stream.Stream` runs in a
worker and publishes on the app's :class:`~streamchat.core.bus.EventBus`. One subscription (policy
``coalesce``: it never slows a stream down) is read by one worker, :meth:`ChatScreen._consume`,
in batches — await one event, ``drain()`` the rest — at most ~30 times a second; each batch becomes
at most one ``MarkdownStream.write`` per lane. Keys act on the streams directly (pause, cancel) and
show their effect at once, without waiting for the bus.

Focus: while an answer streams, focus moves from the prompt to the conversation so that the
single-key bindings (space, c, r, t) work. When every lane completed, focus returns to the prompt;
when one was cut off or failed, it stays on the answer so that ``c`` continues it (enter or ``i``
goes back to the prompt, escape in the prompt comes back to the answer keys).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import TYPE_CHECKING

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Footer, Input, Static

from ..core.events import (
    Cancelled,
    Completed,
    Event,
    Failed,
    Paused,
    Progress,
    Resumed,
    Retrying,
    StreamStarted,
    Token,
)
from ..core.errors import StreamchatError, error_of_kind
from ..core.request import ChatRequest, Message
from ..core.stream import BufferPolicy, Stream, continue_stream
from .conversation import Answer, Conversation, Turn
from .widgets import LaneStats, StatusBar, quiet_virtual_size

if TYPE_CHECKING:
    from textual.timer import Timer

    from ..history import StoredMessage
    from ..orchestrate.pipeline import PipelineRun
    from .answer import AnswerView, TurnView
    from .app import StreamchatApp

__all__ = ["ChatScreen", "FRAME_S"]

log = logging.getLogger("streamchat.tui")

#: the answer views are written at most this often (seconds): ~30 frames a second …
FRAME_S = 1 / 30
#: … and at least this often while text arrives: frames are spaced out (up to this) while the app
#: uses more than CPU_BUDGET of a core — a long answer or a fast stream costs more per second to
#: show, and a frame that adds a line re-lays and re-renders the whole conversation view
FRAME_MAX_S = 0.2
#: the share of one core (the whole app: SDK, stream and rendering) above which frames are spaced
#: out. Streaming costs a floor that frames do not change (~10 % at 200 tokens/s: reading, parsing,
#: the new lines); each frame a second adds ~0.7 %. At 16 %: ~7 frames/s at 200 tokens/s, ~15 at 50
#: tokens/s, 30 when it is cheap (issue #4's target: under 20 % of a core at 200 tokens/s).
CPU_BUDGET = 0.16
#: the CPU share is measured over at least this long (seconds)
CPU_WINDOW_S = 0.3
#: the finished Markdown widgets of the conversation more than this many windows away from the
#: window are folded away (see ConversationView.fold_far)
FOLD_SCREENS = 2
#: While an answer streams, the garbage collector's full (generation 2) collections are held off
#: (its third threshold is raised to this): each scans every object the growing answer made —
#: measured, 32 of them in a 6,000-token answer took 1.6 s in all and up to 100 ms each, keys
#: waiting. The young generations are still collected; one full collection runs GC_AFTER_S after
#: the last stream ended (if none streams then): it holds the interpreter for up to a few hundred
#: ms, which must not delay the final frame.
GC_HOLD_THRESHOLD = 1_000_000
GC_AFTER_S = 1.0
#: the stats panel refreshes this often (seconds) while no frames come (waiting, paused); while they
#: come, it refreshes in a frame at most every STATS_FRAME_S, so that a frame and a refresh of the
#: panel are one screen update, not two (each screen update costs 2–4 ms at 200 tokens/s)
STATS_S = 0.25
STATS_FRAME_S = 0.19
#: The app's streams read the network at most ~40 times a second (see BufferPolicy.read_pace_ms):
#: a frame shows what came since the last one anyway, and each read costs the SDK's HTTP stack
READ_PACE = BufferPolicy(read_pace_ms=25)

WELCOME = (
    "Type a question and press Enter.\n"
    "While an answer streams: space pauses/resumes · esc stops (the partial stays) · "
    "c continues a cut-off answer · r regenerates · t shows tokens coloured by confidence · "
    "ctrl+n starts over · ctrl+q quits."
)


#: a stored answer's state → the chat's (a cut-off answer reads as stopped: c continues it)
STORED_STATES = {"complete": "completed", "cut_off": "cancelled", "cancelled": "cancelled", "failed": "failed",
                 "streaming": "cancelled"}


def _stored_turns(messages: list["StoredMessage"]) -> list[tuple[str, dict[int, "StoredMessage"]]]:
    """The stored messages as turns: each question with the last answer of each lane (a
    regenerated answer replaces the earlier one on screen; both stay in the history)."""
    turns: list[tuple[str, dict[int, StoredMessage]]] = []
    for message in messages:
        if message.role == "user":
            turns.append((message.text, {}))
        elif message.role == "assistant" and turns:
            lane = int(message.lane) - 1 if message.lane and message.lane.isdigit() else 0
            turns[-1][1][lane] = message
    return turns


class ConversationView(VerticalScroll):
    """The scrolling conversation (focusable, so that the answer keys work while it has focus).

    :meth:`follow` holds the view at the bottom while an answer grows, until the person scrolls
    up (Textual's ``anchor()``). Anchoring waits until the conversation overflows the window: an
    anchored container that is not full shows its content at the bottom, which looks wrong for a
    short chat. Every change of the content's size checks again."""

    DEFAULT_CSS = """
    ConversationView {
        height: 1fr;
        padding: 0 1;
    }
    ConversationView:focus {
        background-tint: $foreground 3%;
    }
    """

    virtual_size = quiet_virtual_size()

    follow_pending = False

    def follow(self) -> None:
        self.follow_pending = True
        self._check_follow()

    def unfollow(self) -> None:
        self.follow_pending = False
        self.anchor(False)

    def _check_follow(self) -> None:
        if self.follow_pending and self.max_scroll_y > 0:
            self.follow_pending = False
            self.anchor()

    def watch_virtual_size(self) -> None:
        self._check_follow()
        self.fold_far()

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        if round(old) != round(new):
            self.fold_far()

    def fold_far(self) -> None:
        """Fold away the blocks of the finished Markdown widgets of the conversation that are
        more than FOLD_SCREENS windows above or below the window, and unfold those that come
        within one (before they are drawn: this runs as the view scrolls, and as the content
        grows). A layout then arranges the blocks near the window only, however long the
        conversation (see ``AnswerMarkdown.fold``)."""
        height = self.scrollable_content_region.height
        if height <= 0:
            return
        top = self.scroll_y
        near_top, near_bottom = top - height, top + 2 * height
        far_top, far_bottom = top - FOLD_SCREENS * height, top + (FOLD_SCREENS + 1) * height
        for turn in self.children:
            answers = getattr(turn, "answers", None)  # (a TurnView; answer.py loads late)
            if not answers:
                continue
            turn_y = turn.virtual_region.y
            for view in answers:
                base = turn_y + view.parent.virtual_region.y + view.virtual_region.y
                for markdown in view.markdowns:
                    region = markdown.virtual_region
                    if not region.height:  # (not shown: the token view)
                        continue
                    y = base + region.y
                    if markdown.folded:
                        if y + region.height > near_top and y < near_bottom:
                            markdown.unfold()
                    elif y + region.height < far_top or y > far_bottom:
                        markdown.fold()

    def watch_has_focus(self, _has_focus: bool) -> None:
        """Restyle only this container on focus changes (its ``:focus`` tint); Textual's default
        restyles every descendant — with a long answer on screen, thousands of widgets, which took
        most of a second whenever an answer started or ended. The children are repainted."""
        self.app.stylesheet.update_nodes([self], animate=True)
        for widget in self.walk_children():
            widget.refresh()


class ChatScreen(Screen):
    CSS_PATH = "chat.tcss"

    BINDINGS = [
        # priority: handled as the app takes the key, not after it has passed to the focused
        # widget and up (a step at a time, each waiting its turn behind a layout under a
        # firehose); check_action lets space through to the prompt
        Binding("space", "pause", "Pause", priority=True),
        Binding("space", "resume", "Resume", priority=True),
        Binding("escape", "stop", "Stop"),
        Binding("escape", "answer_keys", "Answer keys"),
        Binding("ctrl+c", "interrupt", "Stop", show=False, priority=True),
        Binding("c", "continue", "Continue"),
        Binding("r", "regenerate", "Regenerate"),
        Binding("t", "show_tokens", "Tokens"),
        Binding("t", "show_markdown", "Markdown"),
        Binding("enter,i", "write", "Ask", key_display="enter"),
        Binding("ctrl+n", "new_conversation", "New chat", priority=True),
        Binding("ctrl+o", "history", "History"),
        # 1–9: the single keys act on that lane alone (the same digit again: on every lane)
        *(Binding(str(n), f"select_lane({n - 1})", f"Lane {n}", show=False) for n in range(1, 10)),
    ]

    def __init__(self) -> None:
        super().__init__(id="chat")
        self.conversation: Conversation | None = None
        #: the view of each answer, and which stream writes into it now (stream id → …)
        self._live: dict[str, tuple[Answer, AnswerView]] = {}
        self._views: dict[int, TurnView] = {}  # id(Turn) → its view
        self.token_view = False
        #: the pipeline answering the last prompt (``--pipeline``), if any
        self._pipeline_run: PipelineRun | None = None
        #: the lane the single keys act on (1–9 select it); None: every lane
        self.selected_lane: int | None = None
        self._subscription = None
        self.frames = 0  # batches rendered (for tests and measurements)

    @property
    def chat_app(self) -> "StreamchatApp":
        return self.app  # type: ignore[return-value]

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        app = self.chat_app
        yield StatusBar(id="status")
        with ConversationView(id="conversation"):
            yield Static(WELCOME, id="welcome", markup=False)
        with Horizontal(id="lanes-stats"):
            for i, provider in enumerate(app.providers):
                yield LaneStats(provider.model_id, id=f"stats-{i}", title=app.lane_label(i))
        yield Input(placeholder="Ask something…  (Enter sends)", id="prompt")
        yield Footer()

    def on_mount(self) -> None:
        app = self.chat_app
        self.conversation = Conversation(len(app.providers))
        # Subscribe now (synchronously), so that no event can be published before we listen.
        self._subscription = app.bus.subscribe(maxsize=4096, policy="coalesce")
        self.run_worker(self._consume(), name="bus", group="bus", exit_on_error=False)
        self.set_interval(STATS_S, self._tick_stats, name="stats")
        self.show_status()
        self.query_one("#prompt", Input).focus()
        if app.history_problem:
            self.notify(f"{app.history_problem}\nThe chat goes on without history.", title="History off",
                        severity="error", timeout=8)

    def on_unmount(self) -> None:
        if self._subscription is not None:
            self._subscription.close()

    # ------------------------------------------------------------------ helpers
    @property
    def prompt(self) -> Input:
        return self.query_one("#prompt", Input)

    @property
    def scroller(self) -> ConversationView:
        return self.query_one("#conversation", ConversationView)

    def lane_stats(self, lane: int) -> LaneStats:
        return self.query_one(f"#stats-{lane}", LaneStats)

    @property
    def last_turn(self) -> Turn | None:
        return self.conversation.last if self.conversation else None

    def turn_view(self, turn: Turn) -> TurnView:
        return self._views[id(turn)]

    @property
    def streaming(self) -> bool:
        return self._live_pipeline is not None or any(answer.live for answer, _ in self._live.values())

    @property
    def _live_pipeline(self) -> "PipelineRun | None":
        """The pipeline run while it runs (between two stages no answer is live, but it is)."""
        run = self._pipeline_run
        return run if run is not None and not run.done else None

    def live_answers(self) -> list[tuple[Answer, AnswerView]]:
        return [(a, v) for a, v in self._live.values() if a.live]

    def _steered(self) -> list[tuple[Answer, AnswerView]]:
        """The live answers the single keys act on: every lane's, or the selected lane's."""
        lane = self.selected_lane
        return [(a, v) for a, v in self.live_answers() if lane is None or a.lane == lane]

    @property
    def paused(self) -> bool:
        run = self._live_pipeline
        if run is not None:
            return run.state == "paused"
        live = self._steered()
        return bool(live) and all(a.stream is not None and a.stream.state == "paused" for a, _ in live)

    def _cut_answers(self) -> list[tuple[Answer, AnswerView]]:
        turn = self.last_turn  # (a lane may be continued while the others still stream)
        if turn is None:
            return []
        view = self.turn_view(turn)
        lane = self.selected_lane
        return [(a, v) for a, v in zip(turn.answers, view.answers, strict=True)
                if a.cut_off and (lane is None or a.lane == lane)]

    def show_status(self, right: str | Content | None = None) -> None:
        app = self.chat_app
        if app.pipeline is not None:
            # (each lane's header and stats box say the stage's model)
            models = f"pipeline {app.pipeline.name}: " + " → ".join(stage.name for stage in app.pipeline.stages)
        else:
            models = " │ ".join(p.model_id for p in app.providers)
        left = Content.from_markup("[b]streamchat[/b] · $models", models=models)
        if app.reason:
            left += Content.from_markup("  ($reason)", reason=app.reason)
        if self.selected_lane is not None:
            n = self.selected_lane + 1
            left += Content.from_markup("  [b]keys → lane $n[/b] ($n again: every lane)", n=str(n))
        if self.token_view:
            legend = Content("  confidence: ")
            for band in app.palette.bands:
                legend += Content.assemble(("■ ", band.color), (f"{band.label} ", band.color))
            left += legend
        status = self.query_one("#status", StatusBar)
        status.show(left, right if right is not None else app.warm_status)

    @property
    def system(self) -> str | None:
        """The system prompt: the conversation's own (reopened), else ``--system``, else the config's."""
        app = self.chat_app
        if self.conversation is not None and self.conversation.system is not None:
            return self.conversation.system
        return app.system if app.system is not None else app.settings.system

    def _request_base(self, lane: int) -> ChatRequest:
        app = self.chat_app
        provider = app.providers[lane]
        settings = app.settings
        return ChatRequest(
            messages=(),
            system=self.system,
            max_tokens=settings.max_tokens,
            # per-token confidence colours the token view: ask whenever the provider can give it
            confidence=bool(provider.supports_confidence or settings.confidence),
        )

    def _new_stream(self, answer: Answer) -> Stream:
        app = self.chat_app
        return Stream(
            app.providers[answer.lane],
            answer.request,
            bus=app.bus,
            timeouts=app.settings.timeouts,
            lane=self._lane_name(answer.lane),
            buffer=READ_PACE,
        )

    def _lane_name(self, lane: int) -> str | None:
        """Events and the history name lanes "1", "2"… when there are several (None for one)."""
        return str(lane + 1) if len(self.chat_app.providers) > 1 else None

    async def _start(self, answer: Answer, view: AnswerView, stream: Stream, *, fresh: bool,
                     run: bool = True) -> None:
        """Make ``stream`` write into ``view`` and (unless a pipeline runs it) run it in a worker."""
        answer.stream = stream
        answer.state = "pending"
        answer.error = None
        self._live = {sid: pair for sid, pair in self._live.items() if pair[1] is not view}
        self._live[stream.id] = (answer, view)
        await view.begin(stream.id, fresh=fresh)
        self.lane_stats(answer.lane).begin(stream, fresh=fresh)
        await self._record(answer, stream, fresh=fresh)
        if run:
            self.run_worker(self._run_stream(answer, view, stream), name=f"stream-{stream.id}",
                            group=f"lane-{answer.lane}", exit_on_error=False)

    async def _record(self, answer: Answer, stream: Stream, *, fresh: bool) -> None:
        """Have the history record ``stream``: a new answer, or more of the answer it continues."""
        app = self.chat_app
        recorder, conversation = app.recorder, self.conversation
        if recorder is None or conversation is None or conversation.id is None:
            return
        if fresh or answer.message is None:
            answer.message = recorder.track(stream, conversation_id=conversation.id)
            return
        message = answer.message
        if not isinstance(message, int):  # started moments ago: the writer has not said its id yet
            try:
                message = await asyncio.wait_for(asyncio.wrap_future(message), 5.0)
            except (asyncio.TimeoutError, StreamchatError) as exc:
                log.warning("history: the answer being continued has no id (%s): recorded anew", exc)
                answer.message = recorder.track(stream, conversation_id=conversation.id)
                return
            answer.message = message
        recorder.track(stream, message_id=message)

    def _record_prompt(self, prompt: str) -> None:
        """The prompt goes into the history (a new conversation begins with its first prompt)."""
        app = self.chat_app
        store, conversation = app.store, self.conversation
        if store is None or conversation is None:
            return
        try:
            if conversation.id is None:
                conversation.id = store.create_conversation(prompt, system=self.system)
            store.add_message(conversation.id, "user", prompt)
        except StreamchatError as exc:
            app.history_failed(exc)

    async def _run_stream(self, answer: Answer, view: AnswerView, stream: Stream) -> None:
        warming = self.chat_app.warming(stream.provider)
        if warming is not None:
            if view.state == "waiting":
                self._set_state(answer, view, "waiting", "warming up")
            # wait for the warm-up, unless the person stops the stream meanwhile
            while not warming.done() and not stream.done:
                await asyncio.wait({warming}, timeout=0.05)
        await stream.run()  # never raises a StreamchatError: failures end it as failed

    def _streaming_started(self) -> None:
        """Move focus off the prompt so that the single keys work; follow the answer."""
        if self.focused is None or self.focused is self.prompt:
            self.scroller.focus()
        self.scroller.follow()
        self.refresh_bindings()

    # ------------------------------------------------------------------ prompt
    @on(Input.Submitted, "#prompt")
    async def _submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        if self.streaming:
            self.notify("An answer is still streaming: esc stops it.", severity="warning", timeout=3)
            return
        event.input.value = ""
        await self.send(text)

    async def send(self, prompt: str) -> None:
        """Start a turn: the prompt, and one streaming answer per lane."""
        assert self.conversation is not None
        app = self.chat_app
        conversation = self.conversation
        turn = Turn(prompt)
        for lane in range(len(app.providers)):
            request = conversation.request(lane, prompt, self._request_base(lane))
            turn.answers.append(Answer(lane=lane, request=request))
        conversation.turns.append(turn)
        self._record_prompt(prompt)
        from .answer import TurnView  # (Markdown is imported with the first answer, not at start-up)

        view = TurnView(prompt, [app.lane_label(i) for i in range(len(app.providers))], app.palette)
        self._views[id(turn)] = view
        welcome = self.query("#welcome")
        if welcome:
            await welcome.remove()
        await self.scroller.mount(view)
        for answer, answer_view in zip(turn.answers, view.answers, strict=True):
            answer_view.show_tokens(self.token_view)
            if app.pipeline is None:
                await self._start(answer, answer_view, self._new_stream(answer), fresh=True)
        if app.pipeline is not None:
            self._start_pipeline(turn, view)
        self._streaming_started()

    # ------------------------------------------------------------------ a pipeline (--pipeline)
    def _start_pipeline(self, turn: Turn, view: TurnView) -> None:
        """Answer ``turn`` in the pipeline's stages: stage i writes into lane i when it starts (the
        pipeline runs the streams; keys act on the run, so a stopped stage is the last one)."""
        from ..orchestrate.pipeline import PipelineRun

        app = self.chat_app
        pipeline = app.pipeline
        assert pipeline is not None and self.conversation is not None
        names = [stage.name for stage in pipeline.stages]
        request = self._request_base(0).with_messages(
            self.conversation.best_context(len(self.conversation.turns) - 1) + (Message("user", turn.prompt),))

        async def attach(stream: Stream) -> None:  # before the stage's stream starts
            lane = names.index(stream.stage) if stream.stage in names else 0
            answer = turn.answers[lane]
            answer.request = stream.request  # the stage's own request (with the earlier stage's answer)
            await self._start(answer, view.answers[lane], stream, fresh=True, run=False)

        run = PipelineRun(pipeline, request, bus=app.bus, timeouts=app.settings.timeouts, on_stream=attach,
                          providers={p.model_id: p for p in app.providers})
        self._pipeline_run = run
        for lane, answer_view in enumerate(view.answers[1:], 1):
            answer_view.set_state("waiting", f"after {names[lane - 1]}")
        self.run_worker(self._drive_pipeline(turn, view, run), name=f"pipeline-{run.id}", group="pipeline",
                        exit_on_error=False)

    async def _drive_pipeline(self, turn: Turn, view: TurnView, run: "PipelineRun") -> None:
        try:
            await run.run()  # never raises a StreamchatError: stage failures are Progress events
        finally:
            await run.aclose()  # (the app's providers it borrowed stay open)
            if self._pipeline_run is run:  # not replaced by a regenerate or a new conversation
                for answer, answer_view in zip(turn.answers, view.answers, strict=True):
                    if answer.stream is None:  # a stage that never ran (an earlier one was stopped)
                        answer.state = "skipped"
                        self._set_state(answer, answer_view, "idle", "not run")
                if not self.streaming:
                    self._all_done()

    def _pipeline_progress(self, event: Progress) -> None:
        """The pipeline's own messages (a stage starts, fails, which stage answered) in the status
        bar; a failed stage also as a notice."""
        message = event.message
        if message.startswith("⚠"):
            self.notify(message, severity="warning", timeout=6)
        self.show_status(message)

    # ------------------------------------------------------------------ the bus → the view
    #: the frame interval now (seconds; see _consume), for measurements
    frame_interval: float = FRAME_S

    async def _consume(self) -> None:
        """Render bus events in batches, at most one batch per frame.

        The frame interval adapts: FRAME_S (~30 frames/s) while the app is cheap to run; when the
        app used more than CPU_BUDGET of a core over the last CPU_WINDOW_S, frames are spaced out
        in proportion, up to FRAME_MAX_S; they speed up again once it is cheaper. The first event
        after a quiet spell is shown at once, at the fast rate, and so is the end of a stream (a
        bus handler for the ending events cuts the wait short)."""
        sub = self._subscription
        assert sub is not None
        loop = asyncio.get_running_loop()
        interval = FRAME_S
        window_cpu, window_start = time.process_time(), loop.time()
        ended = asyncio.Event()

        class EndWatch:  # only these hooks: a token costs the bus nothing for it
            def on_stream_complete(self, _: object) -> None:
                ended.set()

            on_stream_error = on_stream_cancel = on_stream_complete

        handle = self.chat_app.bus.register(EndWatch())
        try:
            await self._render_loop(sub, ended, interval, window_cpu, window_start)
        finally:
            self.chat_app.bus.unregister(handle)

    async def _render_loop(self, sub, ended: asyncio.Event, interval: float, window_cpu: float,
                           window_start: float) -> None:
        """The body of :meth:`_consume`: one batch per frame until the subscription ends."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                first = await sub.__anext__()
            except StopAsyncIteration:
                return
            started = loop.time()
            if started - window_start > FRAME_MAX_S + CPU_WINDOW_S:  # nothing came for a while
                interval = FRAME_S
                window_cpu, window_start = time.process_time(), started
            ended.clear()  # an end published from now on is in a later batch: it wakes the wait
            batch = [first, *sub.drain()]
            try:
                await self._apply_batch(batch)
            except Exception:  # a rendering bug must not stop the answers from showing
                log.exception("rendering %d events failed", len(batch))
            self.frames += 1
            self._last_frame = loop.time()
            self._tick_stats(in_frame=True)
            self._hold_gc(self.streaming)
            now = loop.time()
            if now - window_start >= CPU_WINDOW_S:
                cpu = time.process_time()
                share = (cpu - window_cpu) / (now - window_start)
                window_cpu, window_start = cpu, now
                # proportional: twice the budget → twice the interval (by at most ×2 or ÷2 a window)
                factor = min(2.0, max(0.5, share / CPU_BUDGET))
                interval = min(FRAME_MAX_S, max(FRAME_S, interval * factor))
            self.frame_interval = interval
            rest = interval - (now - started)
            if rest > 0 and not ended.is_set():
                try:
                    await asyncio.wait_for(ended.wait(), rest)
                except asyncio.TimeoutError:
                    pass

    _gc_thresholds: tuple[int, int, int] | None = None  # the collector's thresholds while held
    _gc_release: Timer | None = None  # the timer that runs the held-off collection

    def _hold_gc(self, hold: bool) -> None:
        """Hold off full collections while an answer streams (see GC_HOLD_THRESHOLD). When the last
        stream ends they stay held off for GC_AFTER_S more: the thresholds are given back only
        after the one full collection has run. (Given back at once, the next allocation — the
        final frame's, the footer's new keys — ran it, and the final frame waited 0.2–0.3 s.)"""
        if hold:
            if self._gc_release is not None:
                self._gc_release.stop()
                self._gc_release = None
            if self._gc_thresholds is None:
                self._gc_thresholds = gc.get_threshold()
                gc.set_threshold(*self._gc_thresholds[:2], GC_HOLD_THRESHOLD)
        elif self._gc_thresholds is not None and self._gc_release is None:
            self._gc_release = self.set_timer(GC_AFTER_S, self._release_gc)

    def _release_gc(self) -> None:
        self._gc_release = None
        if self.streaming or self._gc_thresholds is None:  # (held again meanwhile)
            return
        gc.collect()
        gc.set_threshold(*self._gc_thresholds)
        self._gc_thresholds = None

    async def _apply_batch(self, batch: list[Event]) -> None:
        touched: dict[int, AnswerView] = {}
        live = self._live
        for event in batch:
            pair = live.get(event.stream_id)
            if pair is None:  # a stream whose view is gone (new conversation, regenerated)
                run = self._pipeline_run
                if type(event) is Progress and run is not None and event.stream_id == run.id:
                    self._pipeline_progress(event)
                continue
            answer, view = pair
            if view.stream_id != event.stream_id:
                continue
            kind = type(event)
            if kind is Token:
                if view.state not in ("streaming", "paused", "stopping"):
                    self._set_state(answer, view, "streaming")
                view.take(event)
                touched[id(view)] = view
            elif kind is StreamStarted:
                answer.state = "active"
                if view.state != "paused":
                    self._set_state(answer, view, "waiting", "continuing" if event.continues else "")
            elif kind is Paused:
                answer.state = "paused"
                self._set_state(answer, view, "paused")
            elif kind is Resumed:
                answer.state = "active"
                if view.state != "stopping":
                    self._set_state(answer, view, "streaming" if view.pieces else "waiting")
            elif kind is Retrying:
                self._set_state(answer, view, "retrying", f"in {event.delay:.1f} s — {event.reason}")
            elif kind is Progress:
                self._set_state(answer, view, view.state, event.message)
            elif kind in (Completed, Failed, Cancelled):
                touched.pop(id(view), None)
                await self._finish(answer, view, event)
        for view in touched.values():
            await view.flush()

    async def _finish(self, answer: Answer, view: AnswerView, event: Event) -> None:
        answer.finish_reason = None
        if isinstance(event, Completed):
            answer.state, answer.text, answer.error = "completed", event.text, None
            answer.finish_reason = event.finish_reason
        elif isinstance(event, Failed):
            answer.state, answer.text, answer.error = "failed", event.partial, event.error
        else:
            assert isinstance(event, Cancelled)
            answer.state, answer.text, answer.error = "cancelled", event.partial, None
        provider = self.chat_app.providers[answer.lane]
        await view.finish(answer.state, answer.text, answer.error, key_env=provider.key_env,
                          at_limit=answer.at_limit)
        stats = self.lane_stats(answer.lane)
        stats.tick()
        stats.set_state(view.state)
        self._live.pop(event.stream_id, None)
        if not self.streaming:
            self._all_done()
        else:
            self.refresh_bindings()  # e.g. c for this lane while the others go on

    def _all_done(self) -> None:
        turn = self.last_turn
        completed = turn is not None and all(a.state == "completed" and not a.cut_off for a in turn.answers)
        if completed and (self.focused is self.scroller or self.focused is None):
            self.prompt.focus()
        self.refresh_bindings()

    def _set_state(self, answer: Answer, view: AnswerView, state: str, detail: str = "") -> None:
        view.set_state(state, detail)
        self.lane_stats(answer.lane).set_state(state, detail)

    @property
    def all_lane_stats(self) -> list[LaneStats]:
        """The stats panels, one per lane (the row's children: no walk through the conversation)."""
        return list(self.query_one("#lanes-stats", Horizontal).query_children(LaneStats))

    _last_frame = float("-inf")  # (the event loop's clock)

    def _tick_stats(self, in_frame: bool = False) -> None:
        """Refresh the live stats panels: from the interval timer only while no frame came for a
        while, from a frame when the panel's last refresh is STATS_FRAME_S old."""
        now = time.monotonic()
        if not in_frame and asyncio.get_running_loop().time() - self._last_frame < 1.5 * STATS_S:
            return
        for stats in self.all_lane_stats:
            if stats.stream is not None and not stats.stream.done:
                if not in_frame or now - stats.ticked_at >= STATS_FRAME_S:
                    stats.tick()

    # ------------------------------------------------------------------ keys
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        prompt_focused = self.focused is not None and self.focused is self.query_one("#prompt")
        streaming = self.streaming
        steerable = self._live_pipeline is not None or bool(self._steered())
        if action == "pause":
            return steerable and not self.paused and not prompt_focused
        if action == "resume":
            return steerable and self.paused and not prompt_focused
        if action == "select_lane":
            lanes = len(self.chat_app.providers)
            return (not prompt_focused and self.chat_app.pipeline is None and lanes > 1
                    and isinstance(parameters[0], int) and parameters[0] < lanes)
        if action == "stop":
            return streaming
        if action == "answer_keys":
            return not streaming and prompt_focused and self.last_turn is not None
        if action == "continue":
            return not prompt_focused and bool(self._cut_answers())
        if action == "regenerate":
            return not prompt_focused and self.last_turn is not None
        if action == "show_tokens":
            return not prompt_focused and not self.token_view
        if action == "show_markdown":
            return not prompt_focused and self.token_view
        if action == "write":
            return not prompt_focused
        return True

    def action_pause(self) -> None:
        run = self._live_pipeline
        if run is not None:
            run.pause()  # the live stage, and a stage that starts meanwhile starts paused
        for answer, view in self._steered():
            assert answer.stream is not None
            if answer.stream.pause():  # shown at once, not when the Paused event comes round
                answer.state = "paused"
                self._set_state(answer, view, "paused")
        self.refresh_bindings()

    def action_resume(self) -> None:
        run = self._live_pipeline
        if run is not None:
            run.resume()
        for answer, view in self._steered():
            assert answer.stream is not None
            if answer.stream.resume():
                answer.state = "active"
                self._set_state(answer, view, "streaming" if view.pieces else "waiting")
        self.refresh_bindings()

    def action_stop(self) -> None:
        """Cancel every live lane; each keeps its partial answer (marked cut off). A pipeline
        starts no further stage."""
        run = self._live_pipeline
        if run is not None:
            run.cancel()  # cancels its live stage too
        for answer, view in self._steered():
            assert answer.stream is not None
            if answer.stream.cancel() or run is not None:
                self._set_state(answer, view, "stopping")

    def action_interrupt(self) -> None:
        """ctrl+c: stop a live answer — never quit. Idle: copy the selection, else a hint."""
        if self.streaming:
            self.action_stop()
            return
        focused = self.focused
        if isinstance(focused, Input) and focused.selected_text:
            focused.action_copy()
            return
        if self.get_selected_text():
            self.action_copy_text()
            return
        self.notify("Nothing is streaming. ctrl+q quits.", timeout=2)

    def action_select_lane(self, lane: int) -> None:
        """The single keys act on ``lane`` alone from now on — or, selected again, on every lane."""
        self.selected_lane = None if self.selected_lane == lane else lane
        self._mark_selected_lane()
        self.show_status()
        self.refresh_bindings()

    def _mark_selected_lane(self) -> None:
        for i, stats in enumerate(self.all_lane_stats):
            stats.set_class(i == self.selected_lane, "-selected")

    def action_answer_keys(self) -> None:
        self.scroller.focus()
        self.refresh_bindings()

    def action_write(self) -> None:
        self.prompt.focus()
        self.refresh_bindings()

    async def action_continue(self) -> None:
        """Continue every cut-off lane of the last turn in place (the continuation is appended to
        the same message); a lane that got no text at all starts again."""
        pairs = self._cut_answers()
        if not pairs:
            return
        for answer, view in pairs:
            previous = answer.stream
            if previous is not None and answer.text.strip():
                stream = previous.continuation(bus=self.chat_app.bus)
                await self._start(answer, view, stream, fresh=False)
            elif answer.text.strip():  # reopened from the history: no stream of this run wrote it
                app = self.chat_app
                stream = continue_stream(app.providers[answer.lane], answer.request, answer.text, bus=app.bus,
                                         timeouts=app.settings.timeouts, lane=self._lane_name(answer.lane),
                                         buffer=READ_PACE)
                await self._start(answer, view, stream, fresh=False)
            else:
                await self._start(answer, view, self._new_stream(answer), fresh=True)
        self._streaming_started()

    async def action_regenerate(self) -> None:
        """Ask the last prompt again in every lane (live lanes are cancelled first)."""
        turn = self.last_turn
        if turn is None:
            return
        view = self.turn_view(turn)
        pipeline = self.chat_app.pipeline
        if self._pipeline_run is not None:
            self._pipeline_run.cancel()
        for answer, answer_view in zip(turn.answers, view.answers, strict=True):
            if answer.live and answer.stream is not None:
                answer.stream.cancel()
            answer.text = ""
            if pipeline is None:
                await self._start(answer, answer_view, self._new_stream(answer), fresh=True)
            else:  # every stage again: the views empty until their stage starts
                answer.stream, answer.state, answer.error = None, "pending", None
                self._live = {sid: pair for sid, pair in self._live.items() if pair[1] is not answer_view}
                await answer_view.begin("", fresh=True)
                self.lane_stats(answer.lane).reset()
        if pipeline is not None:
            self._start_pipeline(turn, view)
        self._streaming_started()

    def action_show_tokens(self) -> None:
        self._set_token_view(True)

    def action_show_markdown(self) -> None:
        self._set_token_view(False)

    def _set_token_view(self, on: bool) -> None:
        self.token_view = on
        for view in self.query("AnswerView"):
            view.show_tokens(on)
        self.show_status()
        self.refresh_bindings()

    async def action_new_conversation(self) -> None:
        """Cancel what streams, forget every turn, clear the view."""
        run, self._pipeline_run = self._pipeline_run, None
        if run is not None:
            run.cancel()
        for answer, view in list(self._live.values()):
            if answer.live and answer.stream is not None:
                answer.stream.cancel()
            await view.abandon()
        self._live.clear()
        self._views.clear()
        if self.conversation is not None:
            self.conversation.clear()
        self.scroller.unfollow()
        await self.scroller.remove_children()
        await self.scroller.mount(Static(WELCOME, id="welcome", markup=False))
        for stats in self.all_lane_stats:
            stats.reset()
        self.prompt.value = ""
        self.prompt.focus()
        self.refresh_bindings()

    # ------------------------------------------------------------------ for the app
    def lane_live(self, lane: int) -> bool:
        return any(answer.lane == lane for answer, _ in self.live_answers())

    def models_changed(self) -> None:
        """A lane's model was switched: its stats panel starts afresh under the new name."""
        for lane, provider in enumerate(self.chat_app.providers):
            stats = self.lane_stats(lane)
            if stats.model_id != provider.model_id:
                stats.model_id = provider.model_id
                stats.title = stats.border_title = self.chat_app.lane_label(lane)
                stats.reset()
        self.show_status()

    def palette_changed(self) -> None:
        """The theme changed: token colours and the legend follow it."""
        palette = self.chat_app.palette
        for view in self.query("AnswerView"):
            view.palette = palette
            if view.has_class("-tokens"):
                view.render_tokens()
        self.show_status()

    async def stop_all(self, timeout: float) -> None:
        """Cancel every live stream and wait (at most ``timeout``) until each has ended, so that its
        partial answer is complete in the history."""
        self.cancel_all()
        deadline = asyncio.get_running_loop().time() + timeout
        while self.streaming and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)

    # ------------------------------------------------------------------ history
    def action_history(self) -> None:
        app = self.chat_app
        if app.store is None:
            why = app.history_problem or "streamchat was started with --no-history"
            self.notify(f"No history: {why}.", severity="warning")
            return
        from .history import HistoryScreen

        def chosen(conversation_id: int | None) -> None:
            if conversation_id is not None:
                self.run_worker(self.open_conversation(conversation_id), group="open", exclusive=True,
                                exit_on_error=False)

        app.push_screen(HistoryScreen(app.store), chosen)

    def action_stats(self) -> None:
        app = self.chat_app
        if app.store is None:
            self.notify("No history, so no statistics.", severity="warning")
            return
        from .history import StatsScreen

        app.push_screen(StatsScreen(app.store))

    async def open_conversation(self, conversation_id: int) -> None:
        """Show a stored conversation and go on with it: the lanes take the models its answers
        came from; a cut-off or failed last answer can be continued with ``c``."""
        app = self.chat_app
        store = app.store
        if store is None:
            return
        try:
            stored = store.conversation(conversation_id)
            messages = store.messages(conversation_id)
        except StreamchatError as exc:
            self.notify(str(exc), title="Cannot open it", severity="error")
            return
        turns = _stored_turns(messages)
        lanes = max((max(answers) + 1 for _, answers in turns if answers), default=len(app.providers))
        models = []  # each lane's most recent model
        for lane in range(lanes):
            model = next((a[lane].model_id for _, a in reversed(turns) if lane in a and a[lane].model_id), None)
            models.append(model or app.providers[min(lane, len(app.providers) - 1)].model_id)
        await self.action_new_conversation()
        if models != [p.model_id for p in app.providers]:
            if app.set_lanes(models):
                await self._rebuild_lanes()
            elif lanes != len(app.providers):
                return
        conversation = self.conversation
        assert conversation is not None
        conversation.id = stored.id
        conversation.system = stored.system
        welcome = self.query("#welcome")
        if welcome:
            await welcome.remove()
        for prompt, answers in turns:
            turn = Turn(prompt)
            for lane in range(lanes):
                request = conversation.request(lane, prompt, self._request_base(lane))
                message = answers.get(lane)
                answer = Answer(lane=lane, request=request)
                if message is not None:
                    answer.text, answer.message = message.text, message.id
                    answer.finish_reason = message.finish_reason
                    answer.state = STORED_STATES.get(message.state, "cancelled")
                    if answer.state == "failed":
                        answer.error = error_of_kind(message.error_kind, message.error_message or "it failed")
                turn.answers.append(answer)
            conversation.turns.append(turn)
            names = [answers[lane].model_id or "?" if lane in answers else "–" for lane in range(lanes)]
            from .answer import TurnView

            view = TurnView(prompt, names, app.palette)
            self._views[id(turn)] = view
            await self.scroller.mount(view)
            for answer, answer_view in zip(turn.answers, view.answers, strict=True):
                provider = app.providers[answer.lane]
                await answer_view.finish(answer.state, answer.text, answer.error, key_env=provider.key_env,
                                         at_limit=answer.at_limit)
        self.scroller.scroll_end(animate=False)
        self.show_status()
        if self._cut_answers():
            self.scroller.focus()
        self.refresh_bindings()
        self.notify(f"{stored.title}", title=f"Conversation {stored.id} reopened", timeout=3)

    async def _rebuild_lanes(self) -> None:
        """One stats panel per lane again (the number of lanes changed with the models)."""
        app = self.chat_app
        row = self.query_one("#lanes-stats", Horizontal)
        await row.remove_children()
        await row.mount_all([LaneStats(p.model_id, id=f"stats-{i}", title=app.lane_label(i))
                             for i, p in enumerate(app.providers)])
        self.conversation = Conversation(len(app.providers))
        self.selected_lane = None
        self.show_status()

    def cancel_all(self) -> None:
        run = self._live_pipeline
        if run is not None:
            run.cancel()
        for answer, _ in self.live_answers():
            if answer.stream is not None:
                answer.stream.cancel()
