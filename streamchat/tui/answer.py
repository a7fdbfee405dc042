"""The answer widgets: imported when the first answer is shown (or by the warm-up after the first
frame), so that start-up does not pay for Textual's Markdown and its parser.

* :class:`AnswerView` — one lane's answer: a header (model, state), the answer as Markdown streamed
  through a ``MarkdownStream`` (or, toggled, as coloured tokens), and a note under it (cut off, or
  the error and what to do next).
* :class:`TurnView` — a prompt and its answers side by side (one per lane).
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any, ClassVar, Iterable

from textual import events
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.geometry import Region, Size
from textual.layout import DockArrangeResult
from textual.visual import Visual, visualize
from textual.widget import AwaitMount, Widget, _RenderCache
from textual.widgets import Markdown, Static
from textual.widgets.markdown import MarkdownBlock

from ..core.events import Token
from .widgets import AlikeLines, error_hint, neutralise, quiet_virtual_size, state_content

if TYPE_CHECKING:
    from markdown_it import MarkdownIt
    from textual.await_complete import AwaitComplete
    from textual.css.styles import RenderStyles
    from textual.css.types import RulesMap
    from textual.strip import Strip
    from textual.style import Style
    from textual.visual import RenderOptions
    from textual.widgets.markdown import MarkdownStream

    from ..core.errors import StreamchatError
    from ..theming import Theme

__all__ = ["CHUNK_BLOCKS", "RUNWAY_LINES", "AnswerView", "TurnView", "runway_lines"]

#: the coloured token view is re-rendered at most this often while streaming (seconds)
TOKEN_VIEW_INTERVAL = 0.1
#: While streaming, a new Markdown widget is started once the live one holds this many blocks: a
#: frame that adds a line then re-arranges a short Markdown widget, not the whole answer. The
#: widgets stay when the answer is done: each starts where nothing can go on from before (see
#: ``AnswerView._split_at``), so each parses on its own as the whole would (reference-style link
#: definitions aside).
CHUNK_BLOCKS = 12
#: While an answer streams, its live Markdown widget is a multiple of this many lines high: up to
#: this many free lines under its text (see ``AnswerMarkdown.set_runway``) — more in a taller
#: terminal, a quarter of its height, up to twice this (see ``runway_lines``)
RUNWAY_LINES = 6
#: a block that may go on after a blank line (a list, a quote, anything indented, a table, HTML):
#: never split after one
_NOT_SPLITTABLE = re.compile(r"[-*+](\s|$)|\d{1,9}[.)](\s|$)|>|\s|<|.*\|")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$", re.MULTILINE)
#: the top-level blocks (markdown-it token types) that Textual's Markdown shows as widgets
_BLOCK_TOKENS = frozenset({"heading_open", "paragraph_open", "blockquote_open", "bullet_list_open",
                           "ordered_list_open", "table_open", "fence", "code_block", "hr"})

_PARSER: MarkdownIt | None = None


def _parser() -> MarkdownIt:
    """Textual's own Markdown parser, as Markdown makes it by default — one for all the answer
    widgets (Markdown makes a new one for every append: ~0.4 ms a frame)."""
    global _PARSER
    if _PARSER is None:
        from markdown_it import MarkdownIt

        _PARSER = MarkdownIt("gfm-like")
    return _PARSER


def _in_fence(text: str) -> bool:
    """Whether ``text`` ends inside a fenced code block."""
    fence = ""
    for match in _FENCE.finditer(text):
        marker, rest = match.groups()
        if not fence:
            fence = marker
        elif marker[0] == fence[0] and len(marker) >= len(fence) and not rest.strip():
            fence = ""
    return bool(fence)


def _shows_exactly(markdown: Markdown) -> bool:
    """Whether the blocks ``markdown`` shows are those one full parse of its source gives.

    A streamed Markdown widget re-parses only its last block as text arrives; rarely, a later line
    changes how earlier lines parse (a list that goes on after a blank line…). Same top-level
    blocks over the same lines means the same view: each block was parsed whole, as the last one,
    before the next began."""
    tokens = _parser().parse(markdown.source)
    want = [(t.type, tuple(t.map)) for t in tokens if t.level == 0 and t.map is not None]
    if any(kind not in _BLOCK_TOKENS for kind, _ in want):
        return False
    have = []
    for block in markdown.children:
        if isinstance(block, _StreamParagraph):  # (perhaps a run of paragraphs: see take_in)
            have.extend((block.name, tuple(lines)) for lines in block.block_ranges)
        elif isinstance(block, MarkdownBlock):
            have.append((block.name, tuple(block.source_range)))
    return have == want


async def _make_exact(markdown: AnswerMarkdown) -> None:
    """Make ``markdown`` show what one full parse of its source gives (parse it again if a
    streamed block went otherwise), once: it gets no more text."""
    if not markdown._exact:
        if not _shows_exactly(markdown):
            await markdown.update(markdown.source)
        markdown._exact = True


def runway_lines(screen_height: int) -> int:
    """The step a live Markdown widget grows by on a screen ``screen_height`` lines high: a quarter
    of it, from RUNWAY_LINES to twice that. Each step makes the conversation taller and, while it
    follows the answer, scrolls it — every line on the screen drawn again (25–50 ms at 120×40):
    on a taller screen a step is as many lines of the answer as the conversation shows more."""
    return min(2 * RUNWAY_LINES, max(RUNWAY_LINES, screen_height // 4))


def _runway_height(lines: int, step: int) -> int:
    """The height of a live Markdown widget whose text takes ``lines`` lines: rounded up to a
    multiple of ``step``."""
    return -(-lines // step) * step


class _RunVisual(Visual):
    """What a paragraph that took in the paragraphs after it shows (see ``_StreamParagraph.take_in``):
    the paragraphs before the live one, a blank line after each (as the margin under a paragraph
    widget), then the live one. Its height is measured once per width for the earlier ones (kept
    in ``cache``, the widget's); the widget draws them once per width and style (see
    ``_StreamParagraph._render_content``)."""

    def __init__(self, done: Content, live: Content, cache: dict[object, Any]) -> None:
        self.done = done  # the earlier paragraphs, a blank line after each
        self.live = live
        self._cache = cache

    @property
    def whole(self) -> Content:
        """All of its paragraphs as one content (a blank line after each but the last)."""
        return self.done + "\n" + self.live

    def render_strips(self, width: int, height: int | None, style: Style,
                      options: RenderOptions) -> list[Strip]:
        return self.whole.render_strips(width, height, style, options)

    def get_optimal_width(self, rules: RulesMap, container_width: int) -> int:
        return max(self.done.get_optimal_width(rules, container_width),
                   self.live.get_optimal_width(rules, container_width))

    def get_minimal_width(self, rules: RulesMap) -> int:
        return max(self.done.get_minimal_width(rules), self.live.get_minimal_width(rules))

    def done_height(self, rules: RulesMap, width: int) -> int:
        key = ("height", width)
        height = self._cache.get(key)
        if height is None:
            height = self._cache[key] = self.done.get_height(rules, width)
        return height

    def get_height(self, rules: RulesMap, width: int) -> int:
        return self.done_height(rules, width) + self.live.get_height(rules, width)


class _StreamParagraph(Markdown.BLOCKS["paragraph_open"]):  # type: ignore[misc,valid-type]
    """A Markdown paragraph that, when its text changes but its height does not (most frames of a
    streaming answer: words are added to the last line), is only repainted — no layout.

    Textual's ``Static.update`` asks for a layout of the whole screen on every change; a layout
    re-arranges the widgets of the conversation and re-renders what moved, which made each frame
    cost as much as one that adds a line.

    The last paragraph of a streaming answer is *stretched* (see ``AnswerMarkdown.set_runway``):
    it fills the free lines under it, so a new line of its text is drawn into them with a repaint,
    and only when its text outgrows them is a layout needed."""

    _height_at: tuple[int, int] = (-1, -1)  # (content width, height) of the text shown
    _stretched = False  # filling the free lines of a streaming answer's live Markdown widget
    #: the paragraphs it took in before its live one (see :meth:`take_in`), and what they look like
    _done: tuple[Content, ...] = ()
    _done_ranges: tuple[tuple[int, int], ...] = ()  # (their source lines)
    _done_cache: dict[object, Any] | None = None
    #: the paragraph whose inline styles (``em``, ``strong``, ``s``, ``code_inline``) the others use
    _donor: ClassVar[_StreamParagraph | None] = None

    @staticmethod
    def _live_donor() -> _StreamParagraph | None:
        donor = _StreamParagraph._donor
        return donor if donor is not None and donor.is_attached and donor._component_styles else None

    def _get_component_classes(self) -> frozenset[str]:  # type: ignore[override]
        """The inline styles of a paragraph are the same for every paragraph of the app (Textual's
        rules for them, ``MarkdownBlock > .em`` …, do not depend on where the block is): one
        mounted paragraph computes them — four stylesheet passes over made-up nodes, three
        quarters of what styling a new paragraph cost — and the others read them from it when
        they draw (:meth:`get_component_styles`), so that a theme change, which restyles it,
        reaches them all. (Called by the stylesheet for every paragraph it styles.)"""
        donor = self._live_donor()
        if donor is not None and donor is not self:
            return frozenset()
        _StreamParagraph._donor = self
        return super()._get_component_classes()

    def get_component_styles(self, *names: str) -> RenderStyles:
        if not self._component_styles:  # styled without them: read the paragraph that has them
            donor = self._live_donor()
            if donor is not None and donor is not self:
                return donor.get_component_styles(*names)
            _StreamParagraph._donor = self  # (it is gone: this one computes them now)
            self.update_node_styles(animate=False)
        return super().get_component_styles(*names)

    virtual_size = quiet_virtual_size()

    def text_height(self, width: int) -> int:
        """The height of its text at a content width of ``width`` (measured once per text and width:
        the layout that follows a new text asks again)."""
        at, height = self._height_at
        return height if at == width else self._measure(width)

    @property
    def paragraphs(self) -> int:
        """How many paragraphs it shows (more than one: see :meth:`take_in`)."""
        return len(self._done) + 1

    @property
    def block_ranges(self) -> list[tuple[int, int]]:
        """The source lines of each paragraph it shows."""
        return [*self._done_ranges, self.source_range]

    def take_in(self, paragraphs: list[_StreamParagraph]) -> None:
        """Show ``paragraphs`` (new, not mounted) after its own, instead of as widgets of their own:
        the last of them is the live one now, whose text the next appends update. Mounting a
        paragraph widget took a layout of the screen (~15 ms, three a second at 200 tokens/s);
        this is a repaint. It stays so when the answer is done: it looks the same as a widget a
        paragraph, and ``_shows_exactly`` counts each of its paragraphs as a block (parsing the
        widget again into a widget a block, as a check once it was closed, took 40–100 ms in one
        step, a key waiting)."""
        self._done = (*self._done, self._content, *(paragraph._content for paragraph in paragraphs[:-1]))
        self._done_ranges = (*self._done_ranges, self.source_range,
                             *(paragraph.source_range for paragraph in paragraphs[:-1]))
        self._done_cache = {}
        self.source_range = paragraphs[-1].source_range
        self._copy_context(paragraphs[-1])
        # (the lines of what was the live paragraph stay as they are drawn: only the new live
        # paragraph's lines are drawn again)
        self.set_content(paragraphs[-1]._content)

    def _visual(self, content: Content) -> Visual | Content:
        if not self._done:
            return content
        if self._done_cache is None:
            self._done_cache = {}
        done = self._done_cache.get("done")
        if done is None:
            done = self._done_cache["done"] = Content("\n\n").join(self._done) + "\n"
        return _RunVisual(done, content, self._done_cache)

    def render(self) -> Any:
        return self._visual(self._content) if self._done else super().render()

    def _render_content(self) -> None:
        """A run of paragraphs (see :meth:`take_in`) while it streams: the earlier ones are drawn
        once per width and style, and a frame draws the live one only."""
        visual = self._visual(self._content)
        if not isinstance(visual, _RunVisual) or not self._stretched or self.text_selection is not None:
            super()._render_content()  # (drawn as one content: where a selection is, as it would be)
            return
        width, height = self.size
        style = self.visual_style
        key = ("lines", width, style)
        head = visual._cache.get(key)
        if head is None:
            head = visual._cache[key] = Visual.to_strips(self, visual.done, width, None, style)
        strips = head + Visual.to_strips(self, visual.live, width, None, style)
        self._render_cache = _RenderCache(self.size, strips[:height])
        self._dirty_regions.clear()

    def get_selection(self, selection: Any) -> tuple[str, str] | None:
        visual = self._render()
        if isinstance(visual, _RunVisual):
            return selection.extract(str(visual.whole)), "\n"
        return super().get_selection(selection)

    async def _update_from_block(self, block: MarkdownBlock) -> None:
        if self._done and not isinstance(block, Markdown.BLOCKS["paragraph_open"]):
            # the live paragraph turned out to be another block (a list…): the one before it is
            # the live one of this widget again, and the block goes on in a widget of its own
            *done, live = self._done
            *ranges, self.source_range = self._done_ranges
            self._done, self._done_ranges, self._done_cache = tuple(done), tuple(ranges), None
            self.set_content(live)
            await self._markdown.mount_all([block])  # (which stretches it if it is a paragraph)
            return
        await super()._update_from_block(block)

    def _measure(self, width: int) -> int:
        return visualize(self, self._visual(self._content), markup=False).get_height(self.styles, width)

    def set_content(self, content: Content) -> None:
        self._content = content
        if self._done:  # (a run of paragraphs: see take_in)
            content = self._visual(content)  # type: ignore[assignment]
        if not self.is_mounted:  # (a new block: mounting it lays it out; or a parse's, dropped)
            self._height_at = (-1, -1)
            self.update(content, layout=False)
            return
        width = self.content_size.width
        if width <= 0:
            self._height_at = (-1, -1)
            self.update(content)
            return
        height = self._measure(width)
        same = self._height_at == (width, height) and self.content_size.height == height
        self._height_at = (width, height)
        if self._stretched:
            markdown = self.parent
            # (not laid out — hidden while the token view is shown, or not yet shown again — its
            # sizes are not its own: the layout that shows it makes the room, see AnswerMarkdown.arrange)
            if (height > self.content_size.height and isinstance(markdown, AnswerMarkdown)
                    and self.region):
                markdown.make_room(height - self.content_size.height)
            if isinstance(content, _RunVisual):  # only the live paragraph's lines are drawn again
                top = content.done_height(self.styles, width)
                self.refresh(Region(0, top, width, max(1, self.content_size.height - top)))
                return
            self.update(content, layout=False)
            return
        self.update(content, layout=not same)


def _take_in_runs(first: _StreamParagraph | None, blocks: list[Widget]) -> list[Widget]:
    """The blocks to mount when each run of new paragraphs is shown by the paragraph before it (by
    ``first``, already shown, for those at the start)."""
    keep: list[Widget] = []
    holder, run = first, []
    for block in [*blocks, None]:
        if type(block) is _StreamParagraph and holder is not None:
            run.append(block)
            continue
        if run:
            holder.take_in(run)  # type: ignore[union-attr]
            run = []
        if block is not None:
            keep.append(block)
            holder = block if type(block) is _StreamParagraph else None
    return keep


class AnswerMarkdown(AlikeLines, Markdown):
    """The answer's Markdown: paragraphs that grow in place are repainted without a layout, and
    while it is the live widget of a streaming answer it keeps free lines under its text."""

    BLOCKS = {**Markdown.BLOCKS, "paragraph_open": _StreamParagraph}

    virtual_size = quiet_virtual_size()

    def __init__(self, markdown: str = "", *, classes: str | None = None) -> None:
        super().__init__(markdown, classes=classes, parser_factory=_parser)

    _runway = False  # the live widget of a streaming answer: a fixed height, with free lines
    _exact = False  # it shows what one full parse of its source gives (checked once it is closed)
    _fixed_height = 0  # the height given while streaming (0: none yet)
    _stretched: _StreamParagraph | None = None  # its last block, when a paragraph fills the free lines

    _folded = 0  # its blocks are folded away behind its own height, at this width (0: not)

    def fold(self) -> None:
        """Hide the blocks of this finished widget behind a blank of its own height (the
        conversation does this far off-screen: see ``ConversationView.fold_far``). A layout of
        the screen then skips its blocks: every layout arranged every block of the conversation,
        and with the hundreds of paragraphs of a long answer one took 100-200 ms, a key waiting
        behind it. Nothing moves, and nothing on the screen changes."""
        if self._folded or self._runway or not self.children or not self.size:
            return
        self._folded = self.size.width
        self.styles.height = self.size.height
        for block in self.children:  # (not a CSS class: that restyled every block, ~35 ms)
            block.display = False

    def unfold(self) -> None:
        """Show the blocks again (before it comes near the window, gets text, or is resized)."""
        if self._folded:
            self._folded = 0
            for block in self.children:
                block.display = True
            self.styles.height = None  # (the stylesheet's: auto)

    @property
    def folded(self) -> bool:
        return bool(self._folded)

    def on_resize(self, event: events.Resize) -> None:
        if self._folded and event.size.width != self._folded:  # (its text wraps otherwise now)
            self.unfold()

    def update(self, markdown: str) -> AwaitComplete:
        self.unfold()
        return super().update(markdown)

    def append(self, markdown: str) -> AwaitComplete:
        self.unfold()
        return super().append(markdown)

    def set_runway(self, on: bool) -> None:
        """While on, the widget is given a fixed height: its text's, rounded up to a multiple of
        its step (:func:`runway_lines`: RUNWAY_LINES, more on a tall screen), which leaves free
        lines under the text; once the text fills them, a step more. (Its height depends on its
        text and the screen's height only, never on when the frames came: the same answer is laid
        out the same way on a fast machine and a loaded one.) Its last block, when a paragraph
        (the usual case), is stretched over the free lines: a new line of the answer is drawn into
        one by repainting that paragraph — no layout at all. Only when the text outgrows the free
        lines does the widget grow (and the conversation with it, a step at a time); a new block
        is laid out inside the widget, and nothing outside it moves. (Without the free lines, each
        new line re-arranged every container up to the conversation, which grew: the view
        scrolled and every line on the screen was drawn again.) Off, the widget is as tall as its
        text again."""
        if on:
            self.unfold()
            self._runway = True
        elif self._runway:
            self._runway = False
            self._fixed_height = 0
            self._restretch()
            self.styles.height = None  # (the stylesheet's: auto)

    @property
    def _step(self) -> int:
        return runway_lines(self.screen.size.height)

    def make_room(self, lines: int) -> None:
        """The stretched paragraph's text needs ``lines`` more lines than it has: grow."""
        if self._runway:
            want = max(self._fixed_height, _runway_height(self.size.height + lines, self._step))
            if want != self._fixed_height:
                self._fixed_height = want
                self.styles.height = want

    def mount_all(self, widgets: Iterable[Widget], **where: Any) -> AwaitMount:
        """New blocks (Markdown.append mounts them). While it streams, new paragraphs that follow a
        paragraph are shown by it (``_StreamParagraph.take_in``): a new paragraph after the
        stretched one (a frame of a steady stream brings one) mounts no widget and lays nothing
        out; the many of a firehose frame come as a widget a run of paragraphs (each widget
        mounted is styled and arranged: ~0.5 ms, ~30 of them a frame). The last block takes over
        the free lines before it is mounted, so that one layout places it, stretched, and the
        block before it, no longer stretched."""
        widgets = list(widgets)
        if self._runway and self._fixed_height and widgets and not where:
            stretched = self._stretched
            if stretched is None or not self.children or stretched is not self.children[-1]:
                stretched = None
            widgets = _take_in_runs(stretched, widgets)
            if not widgets:
                return AwaitMount(self, [])  # (all shown by the stretched one: no layout)
            self._restretch(widgets[-1])
        return super().mount_all(widgets, **where)

    def arrange(self, size: Size, optimal: bool = False) -> DockArrangeResult:
        arrangement = super().arrange(size, optimal)
        if self._runway:  # (the text's own height is known here, in the layout that changed it)
            used = arrangement.total_region.bottom  # (all of it when a paragraph is stretched)
            fixed = self._fixed_height
            if (stretched := self._stretched) is not None:  # its text may not fit what is left
                for placement in arrangement.placements:
                    if placement.widget is stretched:
                        gutter = stretched.styles.gutter
                        have = placement.region.height - gutter.height
                        need = stretched.text_height(placement.region.width - gutter.width)
                        if need > have:  # (from where it is placed: arranged again at the same
                            # size before the new height is applied, it is placed the same)
                            used = max(used, placement.region.bottom + need - have)
                        break
            want = _runway_height(used, self._step) if used else fixed
            if want != fixed:
                self._fixed_height = want
                self.call_later(self._fix_height)
        return arrangement

    def _fix_height(self) -> None:
        if self._runway:
            self.styles.height = self._fixed_height
            self._restretch()

    def _restretch(self, last: Widget | None = None) -> None:
        """Stretch the last block (or ``last``, about to be mounted after it) over the free lines if
        it is a paragraph and the widget has its fixed height; give the block that was stretched
        its own height back."""
        if last is None and self.children:
            last = self.children[-1]
        want = None
        if self._runway and self._fixed_height and isinstance(last, _StreamParagraph):
            want = last
        old = self._stretched
        if old is want:
            return
        if old is not None:
            old._stretched = False
            old.styles.height = None  # (the stylesheet's: auto)
        if want is not None:
            want._stretched = True
            want.styles.height = "1fr"
        self._stretched = want


class AnswerView(AlikeLines, Vertical):
    """One lane's answer. The screen calls :meth:`begin` when a stream starts writing to it,
    :meth:`take` per token event, :meth:`flush` once per frame and :meth:`finish` at the end."""

    DEFAULT_CSS = """
    AnswerView {
        width: 1fr;
        height: auto;
        padding: 0 1;
    }
    AnswerView > .answer--header {
        height: 1;
        color: $text-muted;
    }
    AnswerView > Markdown {
        margin: 0;
        padding: 0;
        background: transparent;
    }
    AnswerView > .answer--tokens {
        display: none;
        height: auto;
    }
    AnswerView.-tokens > Markdown {
        display: none;
    }
    AnswerView.-tokens > .answer--tokens {
        display: block;
    }
    AnswerView > .answer--note {
        display: none;
        height: auto;
        padding: 0 1;
    }
    AnswerView.-cut > .answer--note {
        display: block;
        color: $warning;
        border-left: outer $warning;
    }
    AnswerView.-failed > .answer--note {
        display: block;
        color: $error;
        border-left: outer $error;
    }
    """

    virtual_size = quiet_virtual_size()

    def __init__(self, model_id: str, lane: int, theme: Theme, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="answer")
        self.model_id = model_id
        self.lane = lane
        self.palette = theme
        self.markdown = AnswerMarkdown("", classes="answer--md")
        self.tokens_view = Static("", classes="answer--tokens", markup=False)
        self.header = Static(classes="answer--header")
        self.note = Static("", classes="answer--note", markup=False)
        self.state = "waiting"
        self.stream_id: str | None = None
        self._md_stream: MarkdownStream | None = None
        self._pending: list[str] = []
        #: more Markdown widgets after ``markdown`` while streaming (see CHUNK_BLOCKS)
        self._chunks: list[AnswerMarkdown] = []
        self._live_text = ""  # what was written to the last Markdown widget (the live one)
        #: every piece of text as it arrived: (text, confidence, stage) — for the token view
        self.pieces: list[tuple[str, float | None, str | None]] = []
        self._tokens_rendered_at = 0.0
        self._tokens_dirty = False

    def compose(self) -> ComposeResult:
        yield self.header
        yield self.markdown
        yield self.tokens_view
        yield self.note

    def on_mount(self) -> None:
        self.set_state("waiting")

    # -- driven by the screen ---------------------------------------------------------------
    @property
    def text(self) -> str:
        """What the Markdown view holds (``markdown`` and, for a long answer, the chunks after it)."""
        if self._chunks:
            return self.markdown.source + "".join(chunk.source for chunk in self._chunks)
        return self.markdown.source

    @property
    def markdowns(self) -> tuple[AnswerMarkdown, ...]:
        """Its Markdown widgets, in order (``markdown`` and the chunks after it)."""
        return (self.markdown, *self._chunks)

    @property
    def _live_markdown(self) -> AnswerMarkdown:
        return self._chunks[-1] if self._chunks else self.markdown

    def set_state(self, state: str, detail: str = "") -> None:
        self.state = state
        header = Content.from_markup("[b]$model[/b]  ", model=self.model_id) + state_content(state, detail)
        self.header.update(header, layout=False)  # one line, full width: its size never changes

    async def begin(self, stream_id: str, *, fresh: bool) -> None:
        """A stream starts writing here: a new answer (``fresh``) or a continuation of this one."""
        await self.stop_streaming()
        if fresh:
            self.pieces.clear()
            await self._drop_chunks()
            await self.markdown.update("")
            self.tokens_view.update("")
        self.stream_id = stream_id
        self._pending.clear()
        self.remove_class("-cut", "-failed")
        self.note.update("")
        live = self._live_markdown
        live._exact = False  # (it gets more text)
        self._live_text = live.source
        self._md_stream = Markdown.get_stream(live)
        live.set_runway(True)
        self.set_state("waiting")

    def take(self, token: Token) -> None:
        text = neutralise(token.text)
        self._pending.append(text)
        self.pieces.append((text, token.confidence, token.stage))
        self._tokens_dirty = True

    async def flush(self) -> None:
        """Write what arrived since the last frame: one MarkdownStream write per Markdown widget
        it fills (a burst that holds many blocks goes into several widgets, one after another, so
        that no step mounts more than about CHUNK_BLOCKS blocks while a key waits)."""
        if self._pending and self._md_stream is not None:
            text = "".join(self._pending)
            self._pending.clear()
            while (split := self._split_at(text)) is not None:
                await self._md_stream.write(text[:split])
                await self._next_chunk()
                text = text[split:]
            self._live_text += text
            await self._md_stream.write(text)
        if self._tokens_dirty and self.has_class("-tokens"):
            now = time.monotonic()
            if now - self._tokens_rendered_at >= TOKEN_VIEW_INTERVAL:
                self.render_tokens()

    def _split_at(self, text: str) -> int | None:
        """The first place in ``text`` where a new Markdown widget may start, once the live widget
        would hold CHUNK_BLOCKS blocks: after a blank line that ends a flush-left paragraph or
        heading (nothing can continue those) and before a flush-left block, outside a code fence;
        else None."""
        live = self._live_text
        have = live.count("\n\n")
        if have + text.count("\n\n") < CHUNK_BLOCKS:
            return None
        whole = live + text
        at = max(0, len(live) - 2)  # a blank line may straddle what was written and the new text
        for _ in range(max(0, CHUNK_BLOCKS - have) - 1):  # skip to the CHUNK_BLOCKS-th blank line
            at = whole.find("\n\n", at)
            if at < 0:
                return None
            at += 2
        while (at := whole.find("\n\n", at)) >= 0:
            end = at + 2
            while end < len(whole) and whole[end] == "\n":
                end += 1
            if end == len(whole):  # the next block has not begun yet
                return None
            if whole[end] not in " \t":  # the next block begins flush left
                start = whole.rfind("\n\n", 0, at)
                start = 0 if start < 0 else start + 2
                block = whole[start:at].lstrip("\n")
                if block and not _NOT_SPLITTABLE.match(block) and not _in_fence(whole[:at]):
                    return end - len(live)
            at = end
        return None

    async def _next_chunk(self) -> None:
        """Go on writing into a new Markdown widget after the live one, which gets no more text:
        it is checked against a full parse now, while the answer streams, not all at the end."""
        if self._md_stream is not None:
            await self._md_stream.stop()
        live = self._live_markdown
        live.set_runway(False)
        await _make_exact(live)
        chunk = AnswerMarkdown("", classes="answer--md")
        chunk.set_runway(True)
        await self.mount(chunk, after=live)
        self._chunks.append(chunk)
        self._live_text = ""
        self._md_stream = Markdown.get_stream(chunk)

    async def _drop_chunks(self) -> None:
        chunks, self._chunks = self._chunks, []
        self._live_text = ""
        if chunks:
            await self.remove_children(chunks)

    async def stop_streaming(self) -> None:
        md_stream, self._md_stream = self._md_stream, None
        self._live_markdown.set_runway(False)
        if md_stream is not None:
            if self._pending:  # (what came with the end: in one go — split into Markdown widgets
                # of CHUNK_BLOCKS, each mounted in turn, the answer was complete on screen ~0.15 s
                # later after a firehose)
                await md_stream.write("".join(self._pending))
                self._pending.clear()
            await md_stream.stop()

    async def finish(self, state: str, text: str, error: StreamchatError | None = None,
                     key_env: str | None = None, at_limit: bool = False) -> None:
        """The stream ended: make the view hold exactly ``text`` and say how it ended."""
        await self.stop_streaming()
        text = neutralise(text)
        if self.text != text:  # (e.g. a continuation joined with overlap): one full parse
            with self.app.batch_update():
                await self.markdown.update(text)
                await self._drop_chunks()
            self.markdown._exact = True
        else:
            # What streamed in is the answer: a Markdown widget is parsed again (its blocks
            # re-mounted) only if a full parse of it differs from what it shows — which the
            # chunks allow: each starts a block of its own (see _split_at). Re-mounting every
            # block of a long answer took most of a second, with keys waiting. The chunks closed
            # while streaming were checked then (see _next_chunk).
            for markdown in self.markdowns:
                await _make_exact(markdown)
        if "".join(p[0] for p in self.pieces) != text:  # e.g. a continuation joined with overlap
            self._reconcile_pieces(text)
        if self.has_class("-tokens"):
            self.render_tokens()
        if state == "cancelled":
            self.add_class("-cut")
            self.note.update("⏹ cut off here — c continues from here · r regenerates")
            self.set_state("cancelled")
        elif state == "failed":
            self.add_class("-failed")
            self.note.update(f"✖ {error}\n{error_hint(error, bool(text.strip()), key_env)}")
            self.set_state("failed")
        elif at_limit:
            self.add_class("-cut")
            self.note.update("⏹ stopped at the token limit (max_tokens) — c continues")
            self.set_state("done", "at the token limit")
        elif not text.strip():
            self.add_class("-cut")
            self.note.update("The model sent an empty answer — r regenerates.")
            self.set_state("done", "empty")
        else:
            self.set_state("done")

    def _reconcile_pieces(self, text: str) -> None:
        """Keep the pieces that ``text`` starts with (their colours stay); the rest becomes one
        plain piece."""
        kept: list[tuple[str, float | None, str | None]] = []
        at = 0
        for piece in self.pieces:
            if not text.startswith(piece[0], at):
                break
            kept.append(piece)
            at += len(piece[0])
        if at < len(text):
            kept.append((text[at:], None, None))
        self.pieces[:] = kept
        self._tokens_dirty = True

    async def abandon(self) -> None:
        """Stop rendering for good (the view is about to be removed)."""
        self.stream_id = None
        await self.stop_streaming()

    # -- the coloured token view ---------------------------------------------------------------
    def show_tokens(self, on: bool) -> None:
        self.set_class(on, "-tokens")
        if on:
            self.render_tokens()
        elif self._md_stream is not None:
            # the Markdown comes back while it streams: its live widget's height was kept while
            # it was hidden (no layout); it is worked out from its text again
            live = self._live_markdown
            live.set_runway(False)
            live.set_runway(True)

    def render_tokens(self) -> None:
        """Tokens coloured by confidence band (or stage colour); plain tokens alternate two shades
        so that their boundaries show."""
        theme = self.palette
        parts: list[tuple[str, str] | str] = []
        plain = ("", "$text-muted")
        stage_now: str | None = None
        for i, (text, confidence, stage) in enumerate(self.pieces):
            if stage and stage != stage_now:
                marker = theme.stage(stage)
                if marker is not None and marker.marker:
                    parts.append((f"{marker.marker} ", marker.color))
                stage_now = stage
            band = theme.band(confidence)
            if band is not None:
                style = band.color
            elif (stage_style := theme.stage(stage)) is not None:
                style = stage_style.color
            else:
                style = plain[i % 2]
            parts.append((text, style) if style else text)
        self.tokens_view.update(Content.assemble(*parts))
        self._tokens_rendered_at = time.monotonic()
        self._tokens_dirty = False


class _Lanes(AlikeLines, Horizontal):
    """The answers of one turn, side by side."""

    virtual_size = quiet_virtual_size()


class TurnView(AlikeLines, Vertical):
    """A prompt, then one :class:`AnswerView` per lane, side by side."""

    DEFAULT_CSS = """
    TurnView {
        height: auto;
        margin-bottom: 1;
    }
    TurnView > .turn--prompt {
        height: auto;
        margin: 0 0 1 0;
        padding: 0 1;
        color: $text;
        background: $boost;
        border-left: outer $primary;
    }
    TurnView > .turn--lanes {
        height: auto;
    }
    TurnView.-lanes AnswerView {
        border-left: vkey $panel-lighten-2;
    }
    TurnView.-lanes AnswerView:first-of-type {
        border-left: none;
    }
    """

    virtual_size = quiet_virtual_size()

    def __init__(self, prompt: str, models: list[str], theme: Theme) -> None:
        super().__init__(classes="turn")
        self.prompt = prompt
        self.answers = [AnswerView(model, i, theme) for i, model in enumerate(models)]
        self.set_class(len(models) > 1, "-lanes")

    def compose(self) -> ComposeResult:
        yield Static(neutralise(self.prompt), classes="turn--prompt", markup=False)
        with _Lanes(classes="turn--lanes"):
            yield from self.answers
