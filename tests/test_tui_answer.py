"""The answer view on its own, in a real Textual app: a long answer streamed in bursts of every
size is split into Markdown widgets of about CHUNK_BLOCKS blocks, and what it shows at the end is
exactly what one parse of the whole answer shows."""

from __future__ import annotations

import random

import pytest
from textual.app import App, ComposeResult
from textual.containers import VerticalScroll
from textual.selection import Selection
from textual.widgets.markdown import MarkdownBlock

from streamchat.core.events import Token
from streamchat.theming import load_theme
from streamchat.tui.answer import (CHUNK_BLOCKS, RUNWAY_LINES, AnswerView, _shows_exactly, _StreamParagraph,
                                   runway_lines)


def long_answer(paragraphs: int) -> str:
    """Paragraphs, headings, lists that go on after a blank line, code fences holding blank lines,
    quotes and a table: everything a split must not cut."""
    parts = []
    for i in range(paragraphs):
        parts.append(f"Paragraph {i}: the stream goes on, word after word, line after line.")
        if i % 5 == 0:
            parts.append(f"## Heading {i}")
        if i % 6 == 1:
            parts.append("- one item\n- another item")
            parts.append("- the same list, after a blank line")
        if i % 7 == 2:
            parts.append("```python\ndef f():\n\n    return 1\n\n\nprint(f())\n```")
        if i % 9 == 3:
            parts.append("> a quote\n>\n> that goes on")
        if i % 11 == 4:
            parts.append("| a | b |\n|---|---|\n| 1 | 2 |")
        if i % 8 == 5:
            parts.append("    indented code\n\n    after a blank line")
    return "\n\n".join(parts) + "\n"


class OneAnswer(App):
    def __init__(self) -> None:
        super().__init__()
        self.view = AnswerView("test:model", 0, load_theme("dark"))

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield self.view


def blocks(markdown) -> int:
    return sum(isinstance(child, MarkdownBlock) for child in markdown.children)


def shown_blocks(markdown) -> list[str]:
    """The blocks a Markdown widget shows (a paragraph widget may show several: see take_in)."""
    return [block.name for block in markdown.children if isinstance(block, MarkdownBlock)
            for _ in range(block.paragraphs if isinstance(block, _StreamParagraph) else 1)]


@pytest.mark.parametrize("seed", [1, 2])
async def test_a_long_answer_streamed_in_bursts_is_shown_as_one_parse_shows_it(seed):
    text = long_answer(90)
    rng = random.Random(seed)
    app = OneAnswer()
    async with app.run_test(size=(100, 40)) as pilot:
        view = app.view
        await view.begin("s1", fresh=True)
        at, index = 0, 0
        while at < len(text):
            # a frame: a few characters, a few lines, or (as under a firehose) a third of the answer
            size = rng.choice([1, 7, 40, 300, len(text) // 3])
            for piece in (text[at:at + size][i:i + 5] for i in range(0, min(size, len(text) - at), 5)):
                view.take(Token(stream_id="s1", text=piece, index=index))
                index += 1
            at += size
            await view.flush()
            await pilot.pause(0)
        await view.finish("completed", text)
        await pilot.pause()

        widgets = [view.markdown, *view._chunks]
        assert view.text == text
        assert len(widgets) >= 90 // CHUNK_BLOCKS  # the answer was split as it streamed …
        # … into widgets of about CHUNK_BLOCKS blocks (a split waits for a block that can end one)
        assert max(blocks(markdown) for markdown in widgets) <= 2 * CHUNK_BLOCKS
        # every widget shows what a parse of its own source shows, and no source was cut inside a
        # fence, a list or a quote: the widgets together show what one parse of the whole shows
        assert all(_shows_exactly(markdown) for markdown in widgets)
        from markdown_it import MarkdownIt

        whole = [t.type for t in MarkdownIt("gfm-like").parse(text) if t.level == 0 and t.map]
        shown = [name for markdown in widgets for name in shown_blocks(markdown)]
        assert shown == whole


async def test_a_streaming_answer_grows_into_free_lines_and_the_conversation_grows_in_steps():
    """A new line of a streaming answer is drawn into free lines under its text: the last
    paragraph fills them, so it is only repainted (its size does not change, nothing is laid
    out); the conversation grows by RUNWAY_LINES at a time; nothing of the text is ever cut off;
    the finished answer keeps no free lines."""
    app = OneAnswer()
    async with app.run_test(size=(60, 20)) as pilot:
        view = app.view
        scroller = app.query_one(VerticalScroll)
        await view.begin("s1", fresh=True)
        heights, lines, index, paragraphs = [], 0, 0, 1
        resized, last = 0, None  # frames in which the same last paragraph changed size
        words = "every frame brings a few more words to the answer as it streams in".split()
        for frame in range(120):
            for word in words[frame % 7: frame % 7 + 3]:  # ~20 characters: a line every 3 frames
                view.take(Token(stream_id="s1", text=word + " ", index=index))
                index += 1
            if frame % 40 == 39:  # now and then a new paragraph
                view.take(Token(stream_id="s1", text="\n\n", index=index))
                index += 1
                paragraphs += 1
            await view.flush()
            await pilot.pause()
            live = view._live_markdown
            text_bottom = 0
            for block in live.children:
                height = block.size.height
                if block is live._stretched:  # its text is at its top, the free lines under it
                    height = block.text_height(block.content_size.width)
                    assert height <= block.content_size.height  # nothing cut off
                text_bottom = max(text_bottom, block.region.y - live.region.y + height)
            assert text_bottom <= live.size.height  # nothing cut off
            assert live.size.height - text_bottom <= 2 * RUNWAY_LINES + 1
            heights.append(scroller.virtual_size.height)
            block = live.children[-1]
            if last is not None and block is last[0] and block.size != last[1]:
                resized += 1
            last = (block, block.size)
            lines = text_bottom
        assert lines > 3 * RUNWAY_LINES  # (the answer grew by many lines)
        assert live._stretched is live.children[-1]  # (the last paragraph fills the free lines)
        # the conversation grew in steps of free lines, not with every line …
        assert len(set(heights)) <= lines // RUNWAY_LINES + 3
        assert heights == sorted(heights)
        # … and a new line did not change the paragraph's size, but only when it filled the lines
        assert resized <= lines // RUNWAY_LINES + paragraphs + 2

        await view.finish("completed", view.text)
        await pilot.pause()
        live = view._live_markdown
        text_bottom = max(block.region.bottom for block in live.children) - live.region.y
        assert live.size.height == text_bottom + 1  # (the last paragraph's bottom margin)


async def test_paragraphs_share_their_inline_styles_which_follow_the_theme():
    """Every paragraph of an answer shows inline code, emphasis and strong text as a stock Textual
    Markdown paragraph does — though one paragraph computes those styles and the others share them
    — also after a theme change, and after the paragraph that computed them is gone (with the
    others, or alone)."""
    from textual.widgets import Markdown

    text = "One `code` and *em* and **strong**.\n\nTwo `code` and *em*.\n\nThree `code`.\n"

    class Both(OneAnswer):
        def compose(self) -> ComposeResult:
            yield from super().compose()
            yield Markdown(text, id="stock")

    def inline(paragraph) -> list[tuple]:
        styles = [paragraph.get_visual_style(name) for name in ("code_inline", "em", "strong", "s")]
        return [(str(style.background), str(style.foreground), style.italic, style.bold) for style in styles]

    async def stream(view, pilot) -> None:
        # (in one frame: a paragraph a frame would be drawn by the one before it — see take_in)
        await view.begin("s1", fresh=True)
        for i, piece in enumerate(text[j:j + 40] for j in range(0, len(text), 40)):
            view.take(Token(stream_id="s1", text=piece, index=i))
        await view.flush()
        await view.finish("completed", text)
        await pilot.pause()

    app = Both()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        stock = app.query_one("#stock", Markdown).children[0]
        view = app.view
        await stream(view, pilot)
        paragraphs = list(view.markdown.children)
        assert len(paragraphs) == 3
        assert all(inline(p) == inline(stock) for p in paragraphs)
        before = inline(stock)
        app.theme = "textual-light" if app.theme != "textual-light" else "nord"
        await pilot.pause()
        assert inline(stock) != before  # (the theme changes how inline code looks)
        assert all(inline(p) == inline(stock) for p in paragraphs)
        # the paragraphs that computed the styles are gone; the theme changes; a new answer
        await view.begin("s0", fresh=True)
        await pilot.pause()
        assert all(not p.is_attached for p in paragraphs)
        before = inline(stock)
        app.theme = "dracula"
        await pilot.pause()
        assert inline(stock) != before
        await stream(view, pilot)
        assert len(view.markdown.children) == 3
        assert all(inline(p) == inline(stock) for p in view.markdown.children)
        # the paragraph that computed them is removed, the others stay; the theme changes
        first, *others = view.markdown.children
        await first.remove()
        app.theme = "textual-dark"
        await pilot.pause()
        assert all(inline(p) == inline(stock) for p in others)


def screen_cells(app, rows: int) -> list[list[tuple]]:
    """What the top ``rows`` lines of the screen show: per cell, its character and how it looks."""
    cells = []
    for strip in app.screen._compositor.render_strips()[:rows]:
        line = []
        for segment in strip:
            style = segment.style
            look = (None if style is None else
                    (str(style.color), str(style.bgcolor), style.bold, style.italic, style.underline))
            line.extend((char, look) for char in segment.text)
        cells.append(line)
    return cells


async def test_new_paragraphs_are_drawn_by_the_streaming_paragraph_and_look_as_widgets_would():
    """While an answer streams slowly, a new paragraph after the stretched last one is drawn by
    that paragraph (no widget is mounted, nothing laid out), and it stays so when the answer is
    done. The screen shows, while it streams and when it is done, exactly what a widget per block
    shows: the same characters, colours, emphasis and inline code. Each paragraph counts as a block
    of the parse. A paragraph that turns out to be another block (a list) gets a widget of its
    own, and the paragraphs before it stay."""
    paragraphs = [f"Paragraph {i}: with `code {i}`, *emphasis* and **strong** words that wrap "
                  f"over more than one line of the answer, as a model writes them." for i in range(5)]
    text = "\n\n".join([*paragraphs[:3], "1. a list that began as a paragraph", "- and goes on",
                        *paragraphs[3:]]) + "\n"
    app = OneAnswer()
    async with app.run_test(size=(80, 40)) as pilot:
        view = app.view
        await view.begin("s1", fresh=True)
        await pilot.pause()
        live = view._live_markdown
        took_in = 0
        for index, at in enumerate(range(0, len(text), 3)):  # a frame every 3 characters
            view.take(Token(stream_id="s1", text=text[at:at + 3], index=index))
            await view.flush()
            await pilot.pause(0)
            stretched = live._stretched
            if stretched is not None:
                took_in = max(took_in, stretched.paragraphs)
        await pilot.pause()
        assert len(view._chunks) == 0  # (one Markdown widget: fewer than CHUNK_BLOCKS blocks)
        # paragraphs 0–2 were drawn by one widget, so were 3–4 after the list
        assert took_in == 3
        assert blocks(live) == 4  # paragraphs 0–2 · the list · the other list · paragraphs 3–4
        assert _shows_exactly(live)  # (each paragraph of a widget counted as a block)
        streamed = screen_cells(app, 40)

        await view.finish("completed", text)
        await pilot.pause()
        assert blocks(live) == 4 and _shows_exactly(live)  # (not parsed again)
        rows = max(block.region.bottom for block in live.children)  # (the rest: free lines, then)
        assert 15 < rows < 40
        done = screen_cells(app, rows)
        assert done[1:] == streamed[1:rows]  # (under the header: its state changed)
        assert any("`" not in "".join(c for c, _ in line) and "code 1" in "".join(c for c, _ in line)
                   for line in done)  # (inline code shown as code)
        selected = live.children[0].get_selection(Selection(None, None))
        plain = [paragraph.replace("`", "").replace("*", "") for paragraph in paragraphs[:3]]
        assert selected == ("\n\n".join(plain), "\n")  # (selecting all of it copies its text)

        await live.update(text)  # a widget per block
        await pilot.pause()
        assert blocks(live) == 7
        assert screen_cells(app, rows) == done


async def test_the_paragraphs_of_a_firehose_frame_come_as_a_widget_a_run_and_look_as_widgets_would():
    """A frame that brings many blocks at once (a firehose) mounts a widget for each run of
    paragraphs, not one a paragraph: the first shows those after it (the stretched one, those
    right after it). The screen shows, while it streams and when it is done, what a widget per
    block shows, and each paragraph counts as a block of the parse."""
    paragraphs = [f"Paragraph {i}: with `code {i}`, *emphasis* and **strong** words that wrap "
                  f"over more than one line of the answer, as a model writes them." for i in range(9)]
    opening = paragraphs[0] + "\n\n"
    burst = "\n\n".join([*paragraphs[1:4], "- a list between them", "## and a heading",
                          *paragraphs[4:]]) + "\n"
    app = OneAnswer()
    async with app.run_test(size=(80, 60)) as pilot:
        view = app.view
        await view.begin("s1", fresh=True)
        live = view._live_markdown
        view.take(Token(stream_id="s1", text=opening, index=0))  # (a frame: the first paragraph)
        await view.flush()
        await pilot.pause()
        first = live.children[0]
        assert isinstance(first, _StreamParagraph) and first is live._stretched
        view.take(Token(stream_id="s1", text=burst, index=1))  # (one frame: the rest at once)
        await view.flush()
        await pilot.pause()
        assert len(view._chunks) == 0
        # paragraphs 0–3 are shown by the first widget; 4–8 by one after the list and the heading
        assert [type(block).__name__ for block in live.children] == [
            "_StreamParagraph", "MarkdownBulletList", "MarkdownH2", "_StreamParagraph"]
        assert live.children[0] is first and first.paragraphs == 4
        assert live.children[3].paragraphs == 5 and live.children[3] is live._stretched
        assert _shows_exactly(live)
        last = live.children[3]
        rows = last.region.y + last.text_height(last.content_size.width)  # (the text's last row)
        # the widget is its text's height, rounded up to a step (laid out twice before its new
        # height came, it had grown a step more each time)
        step = runway_lines(60)
        assert live.region.height == -(-(rows - live.region.y) // step) * step
        streamed = screen_cells(app, rows)

        await view.finish("completed", opening + burst)
        await pilot.pause()
        assert blocks(live) == 4 and _shows_exactly(live)  # (not parsed again)
        done = screen_cells(app, rows)
        assert done[1:] == streamed[1:]  # (under the header: its state changed)

        await live.update(opening + burst)  # a widget per block
        await pilot.pause()
        assert blocks(live) == 11
        assert screen_cells(app, rows) == done


@pytest.mark.parametrize(("size", "step"), [((60, 20), RUNWAY_LINES), ((100, 40), 10), ((100, 60), 12)])
async def test_the_free_lines_of_a_streaming_answer_come_in_steps_that_grow_with_the_screen(size, step):
    """A streaming answer's live widget grows a step of free lines at a time: RUNWAY_LINES on a
    small screen, a quarter of a taller one's height (up to twice RUNWAY_LINES) — each step
    scrolls the conversation, which draws every line on the screen again."""

    assert runway_lines(size[1]) == step
    app = OneAnswer()
    async with app.run_test(size=size) as pilot:
        view = app.view
        await view.begin("s1", fresh=True)
        heights = set()
        for index in range(160):
            view.take(Token(stream_id="s1", text="word by word the answer grows ", index=index))
            await view.flush()
            await pilot.pause(0)
            heights.add(view._live_markdown.size.height)
        await pilot.pause()
        heights.add(view._live_markdown.size.height)
        heights = sorted(heights)[1:]  # (the first: its text's, before the first layout gave it one)
        assert len(heights) >= 3
        assert all(height % step == 0 for height in heights), heights
