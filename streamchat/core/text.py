"""Text from a model, made safe to show in a terminal.

A model must not be able to drive the terminal: every C0 control character except newline and tab
(ESC, BEL, CR, backspace…) and DEL is shown as its Unicode control picture (ESC → ␛), and C1
controls become U+FFFD, so escape sequences are visible but inert. This works character by
character, so it is safe however the text is split into tokens.
"""

from __future__ import annotations

__all__ = ["neutralise"]

_TABLE: dict[int, int | None] = {c: 0x2400 + c for c in range(0x20) if c not in (0x09, 0x0A)}
_TABLE[0x7F] = 0x2421
_TABLE.update({c: 0xFFFD for c in range(0x80, 0xA0)})
# The same, but a carriage return is dropped (CRLF line ends are common and harmless in a widget).
_TABLE_NO_CR = dict(_TABLE)
_TABLE_NO_CR[0x0D] = None


def neutralise(text: str, *, drop_cr: bool = False) -> str:
    """Make control characters and escape sequences harmless (visible, not acted on). With
    ``drop_cr`` a carriage return disappears instead of showing as ␍."""
    return text.translate(_TABLE_NO_CR if drop_cr else _TABLE)
