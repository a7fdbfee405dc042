"""The answer view on its own, in a real Textual app: a long answer streamed in bursts of every
size is split into Markdown widgets of about CHUNK_BLOCKS blocks, and what it shows at the end is
exactly what one parse of the whole answer shows."""

from __future__ import annotations

import random

import pytest
from textual.app import App, ComposeResult
from textual.containers import VerticalScroll
from textual.widgets.markdown import MarkdownBlock

from streamchat.core.events import Token
from streamchat.theming import load_theme
from streamchat.tui.answer import CHUNK_BLOCKS, RUNWAY_LINES, AnswerView, _shows_exactly


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
        shown = [block.name for markdown in widgets for block in markdown.children
                 if isinstance(block, MarkdownBlock)]
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
        await view.begin("s1", fresh=True)
        for i, piece in enumerate(text[j:j + 4] for j in range(0, len(text), 4)):
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
