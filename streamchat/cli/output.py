"""CLI subscribers: the plain-text printer and the NDJSON event writer.

When output goes to a terminal, the text is neutralised first (``core.text``: escape sequences
and control characters become visible, inert pictures).
"""

from __future__ import annotations

import json
from typing import IO, TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from ..theming import Theme

from ..core.events import Event, Token, event_to_dict
from ..core.text import neutralise

__all__ = ["NdjsonPrinter", "TextPrinter", "confidence_theme", "neutralise"]


def confidence_theme(theme_name: str, terminal: bool, confidence: bool) -> "Theme | None":
    """The theme whose bands colour tokens by confidence: on a terminal, when confidence is asked for."""
    if not (terminal and confidence):
        return None
    from ..theming import load_theme

    return load_theme(theme_name)


class _Writer:
    """Writes to ``out`` and flushes; when the reader goes away (``| head``) it stops writing,
    remembers it (``closed``) and calls ``on_closed`` once — the stream is then cancelled."""

    def __init__(self, out: IO[str], on_closed: Callable[[], Any] | None = None) -> None:
        self.out = out
        self.on_closed = on_closed
        self.closed = False

    def _write(self, text: str) -> None:
        if self.closed:
            return
        try:
            self.out.write(text)
            self.out.flush()
        except BrokenPipeError:
            self.closed = True
            if self.on_closed is not None:
                self.on_closed()


class TextPrinter(_Writer):
    """Writes answer text as it arrives, flushed per token; remembers whether it ended a line.

    With a ``theme`` (on a terminal), a token that carries a confidence is coloured by the theme's
    confidence band — after its text was neutralised, so only our own colour codes reach the screen.
    """

    def __init__(self, out: IO[str], *, sanitise: bool, on_closed: Callable[[], Any] | None = None,
                 theme: "Theme | None" = None) -> None:
        super().__init__(out, on_closed)
        self.sanitise = sanitise
        self.theme = theme
        self.wrote = False
        self.at_line_start = True

    def on_event(self, event: Event) -> None:
        if type(event) is not Token or not event.text:
            return
        text = neutralise(event.text) if self.sanitise else event.text
        band = self.theme.band(event.confidence) if self.theme is not None else None
        self._write(_paint(text, band.color) if band is not None else text)
        self.wrote = True
        self.at_line_start = text.endswith("\n")

    def end_line(self) -> None:
        """End the answer with exactly one newline (none if it already ends a line)."""
        if self.wrote and not self.at_line_start:
            self._write("\n")
            self.at_line_start = True


def _paint(text: str, color: str) -> str:
    r, g, b = int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)
    return f"\x1b[38;2;{r};{g};{b}m{text}\x1b[39m"


class NdjsonPrinter(_Writer):
    """Writes every bus event as one JSON object per line (``type`` first)."""

    def on_event(self, event: Event) -> None:
        self._write(json.dumps(event_to_dict(event), ensure_ascii=False, default=_default) + "\n")


def _default(value: Any) -> Any:
    return str(value)
