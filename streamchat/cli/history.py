"""``streamchat history``: list, show, export, import, delete and search stored conversations.

A conversation is named by its id (``history list`` shows them) or ``last`` (the most recently
active one). ``show`` renders the conversation as Markdown with rich, marking answers that did not
end normally (cut off, failed, cancelled); ``export`` writes the raw Markdown or the JSON that
``import`` reads back.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ..core.errors import ConfigError

if TYPE_CHECKING:
    from ..history import HistoryStore

__all__ = ["run_list", "run_show", "run_export", "run_import", "run_delete", "run_search", "conversation_id"]


def _store() -> "HistoryStore":
    from ..history import HistoryStore

    return HistoryStore()


def conversation_id(store: "HistoryStore", ident: str) -> int:
    """``"last"`` or a number → a conversation id that exists (else a one-line error, exit 2)."""
    from ..history import HistoryNotFoundError

    if ident.strip().lower() == "last":
        found = store.last_conversation()
        if found is None:
            raise HistoryNotFoundError("the history has no conversations yet")
        return found.id
    try:
        cid = int(ident)
    except ValueError:
        raise ConfigError(f"{ident!r} is not a conversation id (a number from 'streamchat history list', or 'last')") from None
    store.conversation(cid)  # raises HistoryNotFoundError if there is none
    return cid


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def _console(out: IO[str]) -> Any:
    from rich.console import Console

    return Console(file=out, highlight=False, soft_wrap=False)


async def run_list(*, limit: int, json_mode: bool, out: IO[str]) -> int:
    from ..history import state_label

    with _store() as store:
        conversations = store.conversations(limit=limit)
        path = store.path
    if json_mode:
        out.write(json.dumps([asdict(c) for c in conversations], ensure_ascii=False, indent=2) + "\n")
        return 0
    if not conversations:
        out.write(f"no conversations in the history yet ({path})\n")
        return 0
    from rich.table import Table
    from rich.text import Text

    rows = []
    for c in conversations:
        state = state_label(c.last_state) if c.last_state else "-"
        style = "" if c.last_state in (None, "complete") else "yellow" if c.last_state != "failed" else "red"
        rows.append((str(c.id), _when(c.updated_at), str(c.message_count), c.last_model or "-", Text(state, style=style),
                     Text(c.title)))
    console = _console(out)
    table = Table(box=None, pad_edge=False, header_style="bold")
    # the figures keep their width (a narrow terminal, a pipe); the title gets the rest, cut with "…"
    columns = (("id", {"justify": "right"}), ("when", {}), ("msgs", {"justify": "right"}), ("model", {}),
               ("last answer", {}))
    used = 0
    for i, (name, kw) in enumerate(columns):
        widest = max(len(name), *(len(str(row[i])) for row in rows))
        used += widest + 2  # (a column and its padding)
        table.add_column(name, no_wrap=True, width=widest, **kw)
    table.add_column("title", no_wrap=True, overflow="ellipsis", width=max(8, console.width - used))
    for row in rows:
        table.add_row(*row)
    console.print(table)
    return 0


async def run_show(ident: str, *, out: IO[str]) -> int:
    from rich.markdown import Markdown

    from ..core.text import neutralise
    from ..history.render import to_markdown

    with _store() as store:
        cid = conversation_id(store, ident)
        conversation, messages = store.conversation(cid), store.messages(cid)
    if out.isatty():  # a model must not drive the terminal, in the history either
        messages = [replace(m, text=neutralise(m.text)) for m in messages]
        conversation = replace(conversation, title=neutralise(conversation.title))
    _console(out).print(Markdown(to_markdown(conversation, messages)))
    return 0


async def run_export(ident: str, *, fmt: str, output: Path | None, out: IO[str]) -> int:
    from ..history.render import to_markdown
    from ..history.store import dumps_export

    fmt = fmt.lower()
    if fmt not in ("md", "json"):
        raise ConfigError(f"unknown export format {fmt!r}: choose md or json")
    with _store() as store:
        cid = conversation_id(store, ident)
        if fmt == "json":
            text = dumps_export(store.export(cid))
        else:
            text = to_markdown(store.conversation(cid), store.messages(cid))
    if output is None:
        out.write(text)
        return 0
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {output} ({exc.strerror})") from exc
    return 0


async def run_import(source: str, *, out: IO[str]) -> int:
    try:
        raw = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {source} ({getattr(exc, 'strerror', None) or exc})") from exc
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source} is not JSON ({exc.msg}, line {exc.lineno})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source} is not a streamchat conversation export")
    with _store() as store:
        cid = store.import_conversation(data)
        n = len(store.messages(cid))
    out.write(f"imported as conversation {cid} ({n} messages)\n")
    return 0


async def run_delete(ident: str, *, yes: bool, out: IO[str], stdin: IO[str] = sys.stdin) -> int:
    with _store() as store:
        cid = conversation_id(store, ident)
        title = store.conversation(cid).title
        if not yes and stdin.isatty():
            import typer

            if not typer.confirm(f"delete conversation {cid} ({title!r})?", default=False):
                out.write("kept\n")
                return 0
        n = store.delete_conversation(cid)
    out.write(f"deleted conversation {cid} ({n} messages)\n")
    return 0


async def run_search(text: str, *, limit: int, json_mode: bool, out: IO[str]) -> int:
    if not text.strip():
        raise ConfigError("nothing to search for")
    with _store() as store:
        hits = store.search(text, limit=limit)
    if json_mode:
        out.write(json.dumps([asdict(h) for h in hits], ensure_ascii=False, indent=2) + "\n")
        return 0
    if not hits:
        out.write(f"no message contains {text!r}\n")
        return 0
    from rich.table import Table
    from rich.text import Text

    from ..core.text import neutralise

    terminal = out.isatty()
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("conv", "when", "who", "found"):
        table.add_column(name, justify="right" if name == "conv" else "left")
    for h in hits:
        snippet = Text(neutralise(h.snippet) if terminal else h.snippet)
        snippet.highlight_words([text.strip()], style="bold yellow", case_sensitive=False)
        who = "you" if h.role == "user" else (h.model_id or "assistant")
        table.add_row(str(h.conversation_id), _when(h.created_at), who, snippet)
    _console(out).print(table)
    return 0
