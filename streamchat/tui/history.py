"""The history screens: reopen a conversation, and how each model has streamed (as a plot).

:class:`HistoryScreen` lists the stored conversations, newest first, with how each one's last answer
ended (a cut-off one is marked, so that it can be reopened and continued with ``c``); typing
searches every message. Enter reopens the highlighted conversation in the chat (the screen is
dismissed with its id). :class:`StatsScreen` shows, per model, time to first token and tokens/s
(median, p95) with their histograms, how the streams ended and the error rates — the figures
``streamchat stats`` prints, from the same functions.

Both only read the :class:`~streamchat.history.HistoryStore` (small, indexed queries: they run on
the event loop); a history that cannot be read says so in one line instead of a list.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Footer, Input, OptionList, Static
from textual.widgets.option_list import Option

from ..core.errors import StreamchatError
from ..history.stats import bars, format_rate, format_seconds, histogram
from .widgets import neutralise

if TYPE_CHECKING:
    from ..history import HistoryStore

__all__ = ["HistoryScreen", "StatsScreen"]

#: how a conversation's last answer ended → (marker, colour variable)
ENDINGS: dict[str, tuple[str, str]] = {
    "complete": ("✓", "$success"),
    "cut_off": ("⏹ cut off", "$warning"),
    "cancelled": ("⏹ stopped", "$warning"),
    "failed": ("✖ failed", "$error"),
    "streaming": ("● streaming", "$accent"),
}
#: conversations listed (the most recent ones)
LIST_LIMIT = 200


def when(timestamp: float, now: float | None = None) -> str:
    """``14:02`` today, ``Mon 14:02`` this week, else ``2026-11-02``."""
    now = time.time() if now is None else now
    local, today = time.localtime(timestamp), time.localtime(now)
    if local[:3] == today[:3]:
        return time.strftime("%H:%M", local)
    if now - timestamp < 6 * 86400:
        return time.strftime("%a %H:%M", local)
    return time.strftime("%Y-%m-%d", local)


class HistoryScreen(Screen[int]):
    """Pick a stored conversation; dismissed with its id (or nothing, with escape)."""

    DEFAULT_CSS = """
    HistoryScreen {
        background: $background;
    }
    HistoryScreen > .history--title {
        height: 1;
        padding: 0 1;
        background: $panel;
        color: $text-muted;
    }
    HistoryScreen > Input {
        margin: 0 1;
    }
    HistoryScreen > OptionList {
        height: 1fr;
        margin: 0 1;
        border: none;
    }
    HistoryScreen > .history--problem {
        color: $error;
        padding: 1 2;
    }
    """

    BINDINGS = [
        Binding("escape", "back", "Back to the chat"),
        Binding("down", "to_list", "List", show=False),
        Binding("ctrl+s", "stats", "Stats"),
    ]

    def __init__(self, store: "HistoryStore") -> None:
        super().__init__(id="history")
        self.store = store
        self.problem: str | None = None

    def compose(self) -> ComposeResult:
        yield Static("[b]History[/b] · enter reopens a conversation (a cut-off answer goes on with c)",
                     classes="history--title")
        yield Input(placeholder="Search every message…", id="history-search")
        yield OptionList(id="history-list")
        yield Static("", classes="history--problem", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.show_conversations()
        self.query_one("#history-list", OptionList).focus()

    @property
    def options(self) -> OptionList:
        return self.query_one("#history-list", OptionList)

    def _fail(self, exc: StreamchatError) -> None:
        self.problem = str(exc)
        self.query_one(".history--problem", Static).update(f"✖ {exc}")

    def show_conversations(self) -> None:
        try:
            conversations = self.store.conversations(limit=LIST_LIMIT)
        except StreamchatError as exc:
            self._fail(exc)
            return
        now = time.time()
        options = []
        for c in conversations:
            marker, colour = ENDINGS.get(c.last_state or "", ("", "$text-muted"))
            line = Content.from_markup(
                f"[$text-muted]$when[/]  $title  [{colour}]$marker[/]  [$text-muted]$model · $n messages[/]",
                when=f"{when(c.updated_at, now):>10}", title=neutralise(c.title), marker=marker,
                model=c.last_model or "–", n=c.message_count,
            )
            options.append(Option(line, id=str(c.id)))
        self._set(options, "No conversations yet: what you ask is kept here.")

    def show_search(self, text: str) -> None:
        try:
            hits = self.store.search(text, limit=LIST_LIMIT)
        except StreamchatError as exc:
            self._fail(exc)
            return
        options, seen = [], set()
        for hit in hits:
            if hit.conversation_id in seen:  # one line per conversation: its newest match
                continue
            seen.add(hit.conversation_id)
            line = Content.from_markup(
                "$title  [$text-muted]$who: $snippet[/]", title=neutralise(hit.title),
                who="you" if hit.role == "user" else (hit.model_id or "answer"),
                snippet=neutralise(hit.snippet).replace("\n", " "),
            )
            options.append(Option(line, id=str(hit.conversation_id)))
        self._set(options, f"Nothing contains {text!r}.")

    def _set(self, options: list[Option], empty: str) -> None:
        listing = self.options
        listing.clear_options()
        if options:
            listing.add_options(options)
            listing.highlighted = 0
        else:
            listing.add_option(Option(Content.styled(empty, "$text-muted"), disabled=True))

    @on(Input.Changed, "#history-search")
    def _search(self, event: Input.Changed) -> None:
        text = event.value.strip()
        self.show_search(text) if text else self.show_conversations()

    @on(Input.Submitted, "#history-search")
    def _pick_first(self) -> None:
        self.action_to_list()
        self._open(self.options.highlighted)

    @on(OptionList.OptionSelected, "#history-list")
    def _selected(self, event: OptionList.OptionSelected) -> None:
        self._open(event.option_index)

    def _open(self, index: int | None) -> None:
        if index is None:
            return
        option = self.options.get_option_at_index(index)
        if option.id is not None:
            self.dismiss(int(option.id))

    def action_to_list(self) -> None:
        self.options.focus()

    def action_back(self) -> None:
        self.dismiss(None)

    def action_stats(self) -> None:
        self.app.push_screen(StatsScreen(self.store))


class StatsScreen(Screen[None]):
    """Per model: time to first token and tokens/s — median, p95 and a histogram — and endings."""

    DEFAULT_CSS = """
    StatsScreen > .stats--title {
        height: 1;
        padding: 0 1;
        background: $panel;
        color: $text-muted;
    }
    StatsScreen > VerticalScroll {
        padding: 0 2;
    }
    StatsScreen .stats--model {
        margin: 1 0 0 0;
        height: auto;
    }
    """

    BINDINGS = [Binding("escape", "back", "Back")]

    def __init__(self, store: "HistoryStore") -> None:
        super().__init__(id="stats")
        self.store = store

    def compose(self) -> ComposeResult:
        yield Static("[b]Stream statistics[/b] · every stored stream, per model", classes="stats--title")
        with VerticalScroll():
            yield from self._sections()
        yield Footer()

    def _sections(self) -> list[Static]:
        try:
            stats = self.store.model_stats()
        except StreamchatError as exc:
            return [Static(Content.styled(f"✖ {exc}", "$error"))]
        if not stats:
            return [Static(Content.styled("No streams recorded yet.", "$text-muted"))]
        sections = []
        for s in stats:
            lines = [Content.from_markup("[b $primary]$model[/]  [$text-muted]$n streams$endings[/]",
                                         model=s.model_id, n=s.streams, endings=f": {s.endings()}" if s.streams else "")]
            for title, dist, values, fmt in (
                ("time to first token", s.ttft, s.ttft_values, format_seconds),
                ("tokens/s", s.tokens_per_s, s.tokens_per_s_values, format_rate),
            ):
                if dist is None:
                    continue
                lines.append(Content.from_markup(
                    "[b]$title[/]  median $median · p95 $p95", title=title, median=fmt(dist.median),
                    p95=fmt(dist.p95)))
                for line in bars(histogram(values, min(8, len(values))), fmt):
                    lines.append(Content.styled(line, "$accent"))
            if s.errors:
                errors = ", ".join(f"{kind} {n} ({s.error_rate(kind):.0%})" for kind, n in s.errors.items())
                lines.append(Content.styled(f"errors: {errors}", "$error"))
            sections.append(Static(Content("\n").join(lines), classes="stats--model"))
        return sections

    def action_back(self) -> None:
        self.dismiss(None)
