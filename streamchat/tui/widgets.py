"""Reusable widgets of the chat view; each carries its own DEFAULT_CSS.

* :class:`LaneStats` — live figures of one lane: tokens/s sparkline, time to first token, tokens,
  elapsed, state.
* :class:`StatusBar` — model, why it was picked, warm-up, hints.

The answer widgets (:class:`~.answer.AnswerView`, :class:`~.answer.TurnView`) are in
:mod:`.answer`, which imports Textual's Markdown: start-up does not pay for it before the first
answer. Widgets only render; the screen drives them from bus events (they never talk to a provider).
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING

from rich.segment import Segment
from rich.style import Style
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.geometry import Region, Size
from textual.reactive import Reactive
from textual.strip import Strip
from textual.widgets import Sparkline, Static

from ..core.errors import (
    AuthenticationError,
    BadRequestError,
    ConnectionLostError,
    OverloadedError,
    RateLimitedError,
    StreamchatError,
)
from ..core.text import neutralise as _neutralise

if TYPE_CHECKING:

    from ..core.stream import Stream

__all__ = ["STATES", "AlikeLines", "LaneStats", "RateLine", "StatusBar", "error_hint", "neutralise",
           "quiet_virtual_size", "state_content"]

#: display state → (label, colour variable)
STATES: dict[str, tuple[str, str]] = {
    "waiting": ("… waiting", "$text-muted"),
    "streaming": ("● streaming", "$accent"),
    "paused": ("⏸ paused", "$warning"),
    "retrying": ("↻ retrying", "$warning"),
    "stopping": ("… stopping", "$warning"),
    "cancelled": ("⏹ stopped", "$warning"),
    "failed": ("✖ failed", "$error"),
    "done": ("✓ done", "$success"),
    "idle": ("idle", "$text-muted"),
}


def quiet_virtual_size() -> Reactive[Size]:
    """A ``virtual_size`` reactive that does not ask for a layout when it changes. Textual's does,
    but the layout that changed it has just placed everything (and, for a scrolling container,
    updated its scrollbars and kept an anchored view at the bottom): while an answer streams,
    that was a second layout after each one that added a line, at every level from the
    paragraph up to the conversation. Watchers still run."""
    return Reactive(Size(0, 0), layout=False, repaint=False)


class AlikeLines:
    """For a container that draws nothing of its own but its background (and side borders): all
    its lines are alike, so it draws one and repeats it. Textual's compositor draws every widget
    on a line, back to front, also the containers its children cover, and a container that
    changed size draws each of its lines again — at each level (the turn, the lanes, the answer,
    its Markdown), every time a streaming answer grows the conversation."""

    def render_lines(self, crop: Region) -> list[Strip]:
        if crop.height > 1 and self._lines_alike():
            return super().render_lines(crop._replace(height=1)) * crop.height  # type: ignore[misc]
        return super().render_lines(crop)  # type: ignore[misc]

    def _lines_alike(self) -> bool:
        styles = self.styles  # type: ignore[attr-defined]
        (top, _), _, (bottom, _), _ = styles.border
        (outline_top, _), _, (outline_bottom, _), _ = styles.outline
        return not (top or bottom or outline_top or outline_bottom) and styles.keyline[0] == "none"


def neutralise(text: str) -> str:
    """A model must not drive the terminal (see ``core.text``); CRs are dropped in a widget."""
    return _neutralise(text, drop_cr=True)


def state_content(state: str, detail: str = "") -> Content:
    label, colour = STATES.get(state, (state, "$text-muted"))
    if detail:
        return Content.from_markup(f"[{colour}]$label[/] [$text-muted]$detail[/]", label=label, detail=detail)
    return Content.from_markup(f"[{colour}]$label[/]", label=label)


def error_hint(error: StreamchatError | None, has_partial: bool, key_env: str | None = None) -> str:
    """What to do next after ``error``, as keys (one line; the error itself says what happened)."""
    keys = "c continues the partial answer · r starts again" if has_partial else "r tries again"
    if isinstance(error, AuthenticationError):
        where = f" ({key_env})" if key_env else ""
        return f"→ set a valid API key{where} and start streamchat again · ctrl+p switches the model"
    if isinstance(error, BadRequestError):
        return "→ check the model name and options · ctrl+p switches the model"
    if isinstance(error, ConnectionLostError) and not has_partial:
        return "→ check the network or the endpoint · r tries again · ctrl+p switches the model"
    if isinstance(error, (RateLimitedError, OverloadedError)):
        return f"→ wait a little, then {keys}"
    return f"→ {keys}"


class RateLine(Sparkline):
    """Textual's ``Sparkline`` drawn as one line of eight bar heights, each its own colour between
    the min and max colours (the same CSS and component classes, the same bars).

    Textual's renders through Rich, with fractions to bucket the samples and a colour blended per
    bar: ~3 ms a frame for 120 samples, 1–1.5 % of a core at four frames a second. This is one
    strip of at most eight styles, kept until the samples, the width or the colours change."""

    BARS = "▁▂▃▄▅▆▇█"

    _strip: tuple[object, Strip] | None = None  # (what it was drawn from, the strip)

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        _, base = self.background_colors
        if y or width <= 0:
            return Strip.blank(width, Style(bgcolor=base.rich_color))
        low = base + self.get_component_styles("sparkline--min-color").color
        high = base + self.get_component_styles("sparkline--max-color").color
        data = tuple(self.data or ())
        key = (data, width, low, high, base)
        if self._strip is not None and self._strip[0] == key:
            return self._strip[1]
        levels = len(self.BARS) - 1
        styles = [Style(color=low.blend(high, level / levels).rich_color, bgcolor=base.rich_color)
                  for level in range(levels + 1)]
        if not data:
            bars = [0] * width
        else:
            count = len(data)
            if count >= width:  # each bar sums up (the summary function) the samples under it
                summary = self.summary_function
                values = [summary(data[count * i // width:count * (i + 1) // width]) for i in range(width)]
            else:  # fewer samples than columns: each sample is as wide as it can be
                values = [data[i * count // width] for i in range(width)]
            lowest, highest = min(values), max(values)
            extent = (highest - lowest) or 1
            bars = [int((value - lowest) / extent * levels) for value in values]
        segments: list[Segment] = []
        start = 0
        for x in range(1, width + 1):  # one segment per run of equal bars
            if x == width or bars[x] != bars[start]:
                level = bars[start]
                segments.append(Segment(self.BARS[level] * (x - start), styles[level]))
                start = x
        strip = Strip(segments, width)
        self._strip = (key, strip)
        return strip


class LaneStats(Vertical):
    """Live figures of one lane, refreshed by :meth:`tick` a few times a second."""

    DEFAULT_CSS = """
    LaneStats {
        width: 1fr;
        height: 4;
        padding: 0 1;
        border: round $panel-lighten-2;
        border-title-color: $primary;
        border-title-style: bold;
    }
    LaneStats.-selected {
        border: round $accent;
    }
    LaneStats > Sparkline {
        height: 1;
        margin: 0;
    }
    LaneStats > Sparkline > .sparkline--max-color {
        color: $accent;
    }
    LaneStats > Sparkline > .sparkline--min-color {
        color: $primary 50%;
    }
    LaneStats > .stats--figures {
        height: 1;
        color: $text-muted;
    }
    """

    #: samples kept for the sparkline (at 4 a second: the last 30 s)
    SAMPLES = 120

    def __init__(self, model_id: str, *, id: str | None = None, title: str | None = None) -> None:
        super().__init__(id=id)
        self.model_id = model_id
        self.title = title or model_id  # the border's title (a pipeline's lane: stage · model)
        self.sparkline = RateLine([], summary_function=max)
        self.figures = Static("no answer yet", classes="stats--figures", markup=False)
        self.stream: Stream | None = None
        self.rates: deque[float] = deque(maxlen=self.SAMPLES)
        self._last: tuple[float, int] | None = None
        #: tokens and seconds of the earlier streams of this answer (a continuation adds to them)
        self._carry: tuple[int, float] = (0, 0.0)
        self.state = "idle"
        self.ticked_at = float("-inf")  # when tick() last ran (time.monotonic)

    def compose(self) -> ComposeResult:
        yield self.sparkline
        yield self.figures

    def on_mount(self) -> None:
        self.border_title = self.title
        self.set_state("idle")

    def set_state(self, state: str, detail: str = "") -> None:
        self.state = state
        self.border_subtitle = state_content(state, detail)

    def begin(self, stream: Stream, *, fresh: bool) -> None:
        previous = self.stream
        if fresh or previous is None:
            self.rates.clear()
            self._carry = (0, 0.0)
        else:
            before = previous.stats()
            self._carry = (self._carry[0] + before.tokens, self._carry[1] + before.elapsed)
        self.stream = stream
        self._last = None
        self.set_state("waiting")
        self.tick()

    def reset(self) -> None:
        self.stream = None
        self.rates.clear()
        self._last = None
        self._carry = (0, 0.0)
        self.sparkline.data = []
        self.figures.update("no answer yet", layout=False)
        self.set_state("idle")

    def sparkline_data(self) -> list[float]:
        """The samples, right-aligned: the line fills from the right as the answer goes on."""
        rates = list(self.rates)
        return [0.0] * (self.SAMPLES - len(rates)) + rates

    def tick(self) -> None:
        stream = self.stream
        if stream is None:
            return
        stats = stream.stats()
        now = self.ticked_at = time.monotonic()
        if not stream.done:
            if self._last is not None:
                t0, n0 = self._last
                if now > t0:
                    self.rates.append(max(0.0, (stats.tokens - n0) / (now - t0)))
            self._last = (now, stats.tokens)
            self.sparkline.data = self.sparkline_data()
        tps = f"{stats.tokens_per_s:.1f} tok/s" if stats.tokens_per_s else "– tok/s"
        ttft = f"first {stats.ttft:.2f} s" if stats.ttft is not None else "first –"
        tokens, elapsed = self._carry[0] + stats.tokens, self._carry[1] + stats.elapsed
        parts = [tps, ttft, f"{tokens} tok", f"{elapsed:.1f} s"]
        if stats.paused_s >= 0.1:
            parts.append(f"paused {stats.paused_s:.1f} s")
        if stats.retries:
            parts.append(f"{stats.retries} retr{'y' if stats.retries == 1 else 'ies'}")
        if self._carry[0]:
            parts.append("continued")
        self.figures.update(" · ".join(parts), layout=False)  # one line, full width: no layout


class StatusBar(Horizontal):
    """One line at the top: the model(s) and why, warm-up, and a hint or the token legend."""

    DEFAULT_CSS = """
    StatusBar {
        height: 1;
        background: $panel;
        color: $text-muted;
        padding: 0 1;
    }
    StatusBar > .status--left {
        width: 1fr;
        height: 1;
    }
    StatusBar > .status--right {
        width: auto;
        height: 1;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.left = Static(classes="status--left")
        self.right = Static(classes="status--right")

    def compose(self) -> ComposeResult:
        yield self.left
        yield self.right

    def show(self, left: Content | str | None = None, right: Content | str | None = None) -> None:
        if left is not None:
            self.left.update(left)
        if right is not None:
            self.right.update(right)
