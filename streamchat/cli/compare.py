"""``streamchat compare``: one question to several models at once, shown live, then compared.

* On a terminal the lanes stream live (rich ``Live``, ~10 refreshes/s): side by side in columns
  with ``--merge side-by-side``, else the lane the merge strategy shows, with a status line per lane.
* Piped, ``side-by-side`` prints each lane's answer under a header line as it completes (fastest
  first); the other strategies stream the shown lane, and when the shown lane changes (fastest →
  preferred) print a new header and the new lane's answer.
* ``--json`` writes every lane's events as NDJSON (each carries its ``lane``), then one final
  ``{"type": "comparison", …}`` line.

Then a table: time to first token, tokens/s, tokens, duration, how it ended, cost where known and
agreement with the preferred lane (see :mod:`streamchat.orchestrate.compare`). The question goes
into the history once, and every lane's answer with its lane ("1", "2", … as in the TUI).

Exit: 0 when at least one lane completed (each failed lane's one-line error goes to stderr);
when every lane failed, the first lane's error's code; Ctrl+C cancels every lane, keeps the
partials (shown, recorded, in the table) and exits 130; bad input exits 2 before anything streams.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import IO, TYPE_CHECKING, Any, Callable

from ..config import Settings
from ..core.bus import EventBus
from ..core.errors import ConfigError
from ..core.events import TERMINAL_EVENTS, Completed, Event, Token
from ..core.request import ChatRequest, Message
from ..core.text import neutralise
from ..orchestrate.compare import Compare, Comparison, Lane, LaneResult, check_strategy
from ..orchestrate.cost import format_cost
from .ask import EXIT_BROKEN_PIPE, EXIT_CANCELLED, _quiet_stdout
from ._signals import sigint_calls
from .output import NdjsonPrinter, _Writer

if TYPE_CHECKING:
    from ..history import HistoryRecorder, HistoryStore

#: refreshes per second of the live view on a terminal
REFRESH_PER_SECOND = 10


async def run_compare(
    prompt: str,
    *,
    settings: Settings,
    models: list[str],
    merge: str = "side-by-side",
    prefer: str | None = None,
    system: str | None = None,
    timeout: float | None = None,
    max_tokens: int | None = None,
    json_mode: bool = False,
    history: bool = True,
    out: IO[str],
    err: IO[str],
) -> int:
    """Compare ``models`` on ``prompt``. Returns the exit code; bad input raises ConfigError
    (exit 2) before anything is sent, an unusable history its HistoryError (exit 7)."""
    check_strategy(merge)
    if len(models) < 2:
        raise ConfigError("compare needs two or more models: give --model at least twice (-m A -m B)")
    timeouts = settings.timeouts
    if timeout is not None:
        timeouts = replace(timeouts, total=timeout, connect=min(timeouts.connect or timeout, timeout))
    request = ChatRequest(
        messages=(Message("user", prompt),),
        system=system if system is not None else settings.system,
        max_tokens=max_tokens or settings.max_tokens,
    )
    bus = EventBus()
    compare = Compare(models, request, bus=bus, merge=merge, prefer=prefer, timeouts=timeouts)
    store = None
    if history:
        from ..history import HistoryStore

        store = HistoryStore()
    try:
        recorder = _record(store, compare, prompt, request.system) if store is not None else None
        return await _run(compare, recorder, json_mode=json_mode, out=out, err=err)
    finally:
        if store is not None:
            store.close()


def _record(store: "HistoryStore", compare: Compare, prompt: str, system: str | None) -> "HistoryRecorder":
    """The question now, once; every lane's answer (with its lane) from the bus as it grows."""
    from ..history import HistoryRecorder

    cid = store.create_conversation(prompt, system=system)
    store.add_message(cid, "user", prompt)
    recorder = HistoryRecorder(store).attach(compare.bus)
    compare.on_stream = lambda stream: recorder.track(stream, conversation_id=cid)
    return recorder


async def _run(compare: Compare, recorder: "HistoryRecorder | None", *, json_mode: bool, out: IO[str],
               err: IO[str]) -> int:
    view: LiveView | None = None
    writer: _Writer
    if json_mode:
        writer = NdjsonPrinter(out, on_closed=compare.cancel)
        compare.bus.register(writer)
    elif out.isatty():
        view = LiveView(compare, out)
        writer = _Writer(out, on_closed=compare.cancel)
    else:
        writer = PipePrinter(compare, out, on_closed=compare.cancel)
        compare.bus.register(writer)

    try:
        with sigint_calls(compare.cancel):  # Ctrl+C stops every lane, keeping the partials
            if view is not None:
                await view.run()
            else:
                await compare.run()
    finally:
        if recorder is not None:
            await recorder.aclose()

    comparison = compare.comparison()
    if json_mode:
        writer._write(json.dumps(comparison.to_dict(), ensure_ascii=False) + "\n")
    elif view is not None:
        view.print_table(comparison)
    else:
        assert isinstance(writer, PipePrinter)
        writer.end()
        writer._write("\n" + plain_table(comparison))
    if writer.closed:  # the reader went away (``| head``): nothing more to say, like cat
        _quiet_stdout()
        return EXIT_BROKEN_PIPE

    for result in comparison.lanes:
        if result.state == "failed":
            err.write(f"error: lane {result.lane} ({result.model}): {result.error}\n")
    if recorder is not None and recorder.error is not None:
        err.write(f"warning: the answers may be missing from the history: {recorder.error}\n")
    if compare.cancelled:
        kept = " (the partial answers are kept)" if any(lane.stream.text for lane in compare.lanes) else ""
        err.write(f"cancelled{kept}\n")
        err.flush()
        return EXIT_CANCELLED
    err.flush()
    if any(result.state == "completed" for result in comparison.lanes):
        return 0
    error = compare.error
    return error.exit_code if error is not None else 1


# ---------------------------------------------------------------------------------------------
# Piped output


def _header(lane: Lane, note: str | None = None) -> str:
    star = " (preferred)" if lane.preferred else ""
    tail = f" · {note}" if note else ""
    return f"── lane {lane.name} · {lane.model_id}{star}{tail} ──\n"


class PipePrinter(_Writer):
    """Plain output for a pipe or file. ``side-by-side``: each lane's whole answer under a header
    as it ends (fastest first). Other strategies: the shown lane streams as it comes, under a
    header; when the merge shows another lane, a new header and that lane's answer so far."""

    def __init__(self, compare: Compare, out: IO[str], *, on_closed: Callable[[], Any] | None = None) -> None:
        super().__init__(out, on_closed)
        self.compare = compare
        self.following: str | None = None
        self.texts: dict[str, list[str]] = {lane.name: [] for lane in compare.lanes}
        self.finals: dict[str, str] = {}
        self.at_line_start = True
        self.printed: list[str] = []  # lanes whose answer was printed, in order

    def _text(self, text: str) -> None:
        if text:
            self._write(text)
            self.at_line_start = text.endswith("\n")

    def end(self) -> None:
        """End the current answer with exactly one newline."""
        if not self.at_line_start:
            self._write("\n")
            self.at_line_start = True

    def on_event(self, event: Event) -> None:
        lane = self.compare.lane_of(event)
        if lane is None:
            return
        kind = type(event)
        if kind is Token:
            self.texts[lane.name].append(event.text)
        elif isinstance(event, TERMINAL_EVENTS):
            self.finals[lane.name] = event.text if kind is Completed else event.partial  # type: ignore[union-attr]
        if self.compare.merge.strategy == "side-by-side":
            if isinstance(event, TERMINAL_EVENTS):
                self._write(_header(lane, _ending(lane)))
                self._text(self.finals[lane.name])
                self.end()
                self._write("\n")
                self.printed.append(lane.name)
            return
        shown = self.compare.merge.shown
        if shown is not None and shown != self.following:
            self._switch(self.compare.lane(shown))
            return  # the event that made the switch is in the text just written
        if lane.name != self.following:
            return
        if kind is Token:
            self._text(event.text)  # type: ignore[union-attr]
        elif isinstance(event, TERMINAL_EVENTS) and lane.stream.state != "completed":
            self.end()
            self._write(f"[lane {lane.name} {_ending(lane)}]\n")

    def _switch(self, lane: Lane) -> None:
        first = self.following is None
        self.end()
        if not first:
            self._write("\n")
        self.following = lane.name
        self.printed.append(lane.name)
        self._write(_header(lane, self.compare.merge.reason))
        if lane.name in self.finals:
            self._text(self.finals[lane.name])
            if lane.stream.state != "completed":
                self.end()
                self._write(f"[lane {lane.name} {_ending(lane)}]\n")
        else:
            self._text("".join(self.texts[lane.name]))


def _ending(lane: Lane) -> str:
    stream = lane.stream
    if stream.state == "completed":
        reason = stream.snapshot.finish_reason
        return "completed" if reason in (None, "stop", "end_turn", "stop_sequence") else f"completed ({reason})"
    return stream.state


# ---------------------------------------------------------------------------------------------
# The comparison table

_COLUMNS = ("lane", "model", "ttft", "tok/s", "tokens", "time", "finish", "cost", "agree")


def _row(result: LaneResult, shown: str | None) -> list[str]:
    mark = "*" if result.preferred else ""
    if shown == result.lane:
        mark += ">"
    if result.state == "completed":
        finish = result.finish_reason or "completed"
    else:
        finish = result.state
    if result.agreement is None:
        agree = "—"
    elif result.preferred:
        agree = "ref"
    else:
        agree = f"{result.agreement:.2f}"
    return [
        f"{result.lane}{mark}",
        result.model,
        f"{result.ttft:.2f}s" if result.ttft is not None else "—",
        f"{result.tokens_per_s:.1f}" if result.tokens_per_s is not None else "—",
        str(result.tokens),
        f"{result.duration:.2f}s",
        finish,
        format_cost(result.cost),
        agree,
    ]


def _legend(comparison: Comparison) -> str:
    shown = f"; > the lane shown ({comparison.strategy})" if comparison.shown is not None else ""
    return (f"* preferred lane {comparison.preferred}, the reference for agreement "
            f"({comparison.similarity}){shown}; cost: list prices, — unknown")


def plain_table(comparison: Comparison) -> str:
    """The comparison as fixed-width text (for pipes and files)."""
    rows = [list(_COLUMNS)] + [_row(r, comparison.shown) for r in comparison.lanes]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    return "\n".join(lines) + "\n" + _legend(comparison) + "\n"


# ---------------------------------------------------------------------------------------------
# The live view on a terminal


class LiveView:
    """Rich ``Live`` over the lanes, redrawn ~10 times a second from the streams' texts (so a
    firehose costs per frame, not per token). Every frame fits the screen (each lane shows the
    tail of its answer); the last frame shows the answers whole, and stays."""

    def __init__(self, compare: Compare, out: IO[str]) -> None:
        from rich.console import Console

        self.compare = compare
        self.console = Console(file=out, highlight=False)

    async def run(self) -> None:
        from rich.live import Live

        live = Live(self.render(), console=self.console, auto_refresh=False, transient=False,
                    redirect_stdout=False, redirect_stderr=False)
        live.start()
        refresher = asyncio.ensure_future(self._refresh(live))
        try:
            await self.compare.run()
        finally:
            refresher.cancel()
            try:
                await refresher
            except asyncio.CancelledError:
                pass
            try:
                live.update(self.render(final=True))
            finally:
                live.stop()  # redraws once more, whole (rich lets the last frame overflow)

    async def _refresh(self, live: Any) -> None:
        while True:
            await asyncio.sleep(1 / REFRESH_PER_SECOND)
            live.update(self.render(), refresh=True)

    # -- rendering ---------------------------------------------------------------------------
    def _status(self, lane: Lane) -> str:
        stats = lane.stream.stats()
        state = lane.stream.state
        parts = [_ending(lane) if state == "completed" else "starting" if state == "pending" else state]
        if stats.ttft is not None:
            parts.append(f"first token {stats.ttft:.2f}s")
        parts.append(f"{stats.tokens} tok")
        if stats.tokens_per_s is not None:
            parts.append(f"{stats.tokens_per_s:.1f} tok/s")
        return " · ".join(parts)

    def _title(self, lane: Lane) -> str:
        star = " ★" if lane.preferred else ""
        return f"{lane.name} · {lane.model_id}{star}"

    def _body(self, lane: Lane, width: int, height: int | None) -> Any:
        from rich.text import Text

        text = lane.stream.text
        if height is not None:  # only the tail fits: wrap just enough of the end to fill the height
            text = text[-max(400, width * height * 3):]
        body = Text(neutralise(text, drop_cr=True))
        if lane.stream.state == "failed" and lane.stream.error is not None:
            body.append(("\n" if text else "") + f"⚠ {lane.stream.error}", style="red")
        elif not text and not lane.stream.done:
            body.append("waiting for the first token…", style="dim")
        if height is None:
            return body
        lines = body.wrap(self.console, max(8, width))
        if len(lines) > height:
            lines = lines[-height:]
        return Text("\n").join(lines)

    def _panel(self, lane: Lane, width: int, height: int | None, note: str | None = None) -> Any:
        from rich.panel import Panel

        style = {"completed": "green", "failed": "red", "cancelled": "yellow", "paused": "yellow"}
        title = self._title(lane) + (f" — {note}" if note else "")
        return Panel(self._body(lane, width - 4, height), title=title, title_align="left",
                     subtitle=self._status(lane), subtitle_align="left",
                     border_style=style.get(lane.stream.state, "blue"))

    def render(self, final: bool = False) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        width, screen = self.console.size
        lanes = self.compare.lanes
        merge = self.compare.merge
        if merge.strategy == "side-by-side":
            height = None if final else max(3, screen - 3)
            column = max(12, width // len(lanes))
            grid = Table.grid(expand=True, padding=0)
            for _ in lanes:
                grid.add_column(ratio=1)
            grid.add_row(*(self._panel(lane, column, height) for lane in lanes))
            return grid
        status = Text()
        for lane in lanes:
            mark = "▶ " if merge.shown == lane.name else "  "
            status.append(f"{mark}{self._title(lane)}: {self._status(lane)}\n", style="dim" if not mark.strip() else "")
        if merge.shown is None:
            waiting = Text("waiting for the first token…" if not self.compare.done else "no lane answered",
                           style="dim")
            return Group(waiting, status)
        shown = self.compare.lane(merge.shown)
        height = None if final else max(3, screen - len(lanes) - 3)
        return Group(self._panel(shown, width, height, merge.reason), status)

    def print_table(self, comparison: Comparison) -> None:
        from rich.table import Table

        table = Table(title=None, caption=_legend(comparison), caption_justify="left")
        for name in _COLUMNS:
            table.add_column(name, justify="right" if name in ("ttft", "tok/s", "tokens", "time", "cost", "agree") else "left",
                             no_wrap=name != "model")
        for result in comparison.lanes:
            style = {"failed": "red", "cancelled": "yellow"}.get(result.state)
            table.add_row(*_row(result, comparison.shown), style=style)
        self.console.print(table)
