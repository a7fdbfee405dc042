"""A stored conversation as Markdown: what ``history show`` renders and ``export --format md`` writes.

An answer that did not end normally is followed by a quoted marker saying how it ended (cut off,
failed with the error, cancelled, still streaming); the last answer's marker also says how to resume
it. Texts are written as they were said (they usually are Markdown already).
"""

from __future__ import annotations

import time
from typing import Sequence

from .store import Conversation, StoredMessage

__all__ = ["to_markdown", "marker"]

_MARKS = {
    "cut_off": "✂ cut off",
    "failed": "⚠ failed",
    "cancelled": "■ cancelled",
    "streaming": "… streaming",
}


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def marker(message: StoredMessage, *, resume_with: str | None = None) -> str | None:
    """The line that marks an answer that did not end normally (None for a complete one)."""
    mark = _MARKS.get(message.state)
    if mark is None:
        return None
    if message.state == "cut_off":
        why = message.error_message or "the answer stopped before its end"
    elif message.state == "failed":
        why = message.error_message or message.error_kind or "an error ended it"
    elif message.state == "cancelled":
        why = "stopped before its end"
    else:
        why = "still being written"
    line = f"> **{mark}** — {why}"
    if message.state != "streaming":
        line += "; every word that arrived is above"
        if resume_with:
            line += f". Continue it with `{resume_with}`"
    return line + "."


def to_markdown(conversation: Conversation, messages: Sequence[StoredMessage]) -> str:
    head = f"*Conversation {conversation.id} · started {_when(conversation.created_at)}*"
    parts = [f"# {conversation.title}", head]
    if conversation.system:
        parts.append(f"*System prompt:* {conversation.system}")
    last_answer = max((m.id for m in messages if m.role == "assistant"), default=None)
    for m in messages:
        if m.role == "user":
            parts.append("## You")
        else:
            who = "## Assistant"
            if m.model_id:
                who += f" · `{m.model_id}`"
            where = " · ".join(x for x in (m.stage and f"stage {m.stage}", m.lane and f"lane {m.lane}") if x)
            parts.append(who + (f" · {where}" if where else ""))
        parts.append(m.text if m.text.strip() else "*(no text)*")
        hint = f"streamchat resume --conversation {conversation.id}" if m.id == last_answer and m.resumable \
            and m.id == messages[-1].id else None
        line = marker(m, resume_with=hint) if m.role == "assistant" else None
        if line:
            parts.append(line)
    return "\n\n".join(parts) + "\n"
