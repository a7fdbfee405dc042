"""``streamchat ask --route`` and ``streamchat route stats|clear``: the router from the command line.

``ask --route`` lets :mod:`streamchat.orchestrate.router` pick the model: its progress messages
("🔍 Analysing…", "🎯 Routed to …", "✅ done in 2.1 s") go to stderr, the answer to stdout — or,
with ``--json``, everything as NDJSON events. The question and the answer are recorded like a plain
``ask`` (with the routed model); ``--continue`` / ``--conversation`` send the earlier turns.

With validation on (``[router] validate = true``), an answer the router retries on a better tier
stays in the history; on a terminal both answers are seen as they stream (the retry announced on
stderr between them), and when stdout is a pipe or a file only the accepted answer is written to it.

``route stats`` shows the routing cache (size, limits, hits, misses, routes and hits per model);
``route clear`` forgets every route.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import IO, TYPE_CHECKING, Any

from ..config import Settings
from ..core.bus import EventBus
from ..core.events import Event, Progress
from ..core.request import ChatRequest, Message
from .ask import _plan_turn, conclude
from ._signals import run_answer
from .output import NdjsonPrinter, TextPrinter, _Writer, confidence_theme

if TYPE_CHECKING:
    from ..history import HistoryStore
    from ..orchestrate.router import RouterConfig


class _ProgressPrinter(_Writer):
    """Writes the router's progress messages to stderr, each on a line of its own (the answer's
    line on stdout is ended first, so that on a terminal they do not run into each other)."""

    def __init__(self, err: IO[str], text: TextPrinter | None) -> None:
        super().__init__(err)
        self.text = text

    def on_event(self, event: Event) -> None:
        if type(event) is not Progress:
            return
        if self.text is not None:
            self.text.end_line()
        self._write(event.message + "\n")


async def run_routed_ask(prompt: str | None, store: "HistoryStore | None", *, settings: Settings,
                         system: str | None, timeout: float | None, json_mode: bool, confidence: bool,
                         max_tokens: int | None, temperature: float | None, out: IO[str], err: IO[str],
                         continue_last: bool, conversation: int | None) -> int:
    """Route one question and stream its answer. Returns the exit code; errors are one line."""
    from ..orchestrate.router import RoutedRun, open_cache, router_config

    config = await router_config(settings)  # a bad [router] stops here: ConfigError, exit 2
    turn = _plan_turn(store, continue_last=continue_last, conversation=conversation, resume=False)
    timeouts = settings.timeouts
    if timeout is not None:
        timeouts = replace(timeouts, total=timeout, connect=min(timeouts.connect or timeout, timeout))
    if system is None:
        system = turn.system if turn.conversation_id is not None and turn.system is not None else settings.system
    request = ChatRequest(
        messages=turn.context + (Message("user", prompt or ""),),
        system=system,
        max_tokens=max_tokens or settings.max_tokens,
        temperature=temperature,
        confidence=confidence or settings.confidence,
    )
    bus = EventBus()
    recorder = None
    cid = turn.conversation_id
    if store is not None:
        from ..history import HistoryRecorder

        cid = store.add_question(cid, prompt or "", system=system, previous_system=turn.system)
        recorder = HistoryRecorder(store).attach(bus)

    def on_stream(stream: Any) -> None:
        if recorder is not None:
            recorder.track(stream, conversation_id=cid)

    run = RoutedRun(request, config=config, cache=open_cache(config), bus=bus, timeouts=timeouts,
                    on_stream=on_stream)
    text: TextPrinter | None = None
    held: _Writer | None = None  # validating into a pipe: only the accepted answer is written
    writer: _Writer
    if json_mode:
        writer = NdjsonPrinter(out, on_closed=run.cancel)
        bus.register(writer)
    else:
        terminal = out.isatty()
        if run.validate and not terminal:
            writer = held = _Writer(out, on_closed=run.cancel)
        else:
            theme = confidence_theme(settings.theme, terminal, request.confidence)
            writer = text = TextPrinter(out, sanitise=terminal, on_closed=run.cancel, theme=theme)
            bus.register(text)
        bus.register(_ProgressPrinter(err, text))

    await run_answer(run, run.aclose, recorder)
    if held is not None and run.text:
        held._write(run.text if run.text.endswith("\n") else run.text + "\n")
    if text is not None:
        text.end_line()
    return conclude(run, writer, recorder, err)


def _cache_config(settings: Settings) -> "RouterConfig":
    """The ``[router]`` table checked, without looking for the built-in tiers' providers (the
    cache commands need only its limits)."""
    from ..orchestrate.router import Tier, parse_router

    where = str(settings.source) if settings.source is not None else "config.toml"
    placeholder = tuple(Tier(name, "local:smollm2", floor) for name, floor in (("fast", 1), ("balanced", 4), ("best", 7)))
    return parse_router(settings.router or {}, where=where, defaults=placeholder)


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"


async def run_route_stats(*, settings: Settings, json_mode: bool, out: IO[str]) -> int:
    """The routing cache: size and limits, hits and misses, routes and hits per model."""
    from ..orchestrate.router import open_cache

    cache = open_cache(_cache_config(settings))
    cache.check()  # a damaged file: one line, exit 1
    stats = cache.stats()
    if json_mode:
        stats.pop("problem", None)
        out.write(json.dumps(stats, ensure_ascii=False) + "\n")
        return 0
    lookups = stats["hits"] + stats["misses"]
    rate = f", hit rate {stats['hit_rate']:.0%}" if stats["hit_rate"] is not None else ""
    lines = [
        f"routing cache  {stats['path']}",
        f"routes         {stats['size']} of {stats['max_size']}, each kept for {_duration(stats['ttl'])}",
        f"lookups        {lookups} ({stats['hits']} hits, {stats['misses']} misses{rate})",
    ]
    models = stats["models"]
    if models:
        width = max(len("model"), *(len(m) for m in models))
        lines += ["", f"{'model':<{width}}  {'routes':>6}  {'hits':>6}"]
        lines += [f"{m:<{width}}  {v['routes']:>6}  {v['hits']:>6}" for m, v in models.items()]
    else:
        lines += ["", "no routes yet: 'streamchat ask --route \"…\"' makes some"]
    out.write("\n".join(lines) + "\n")
    return 0


async def run_route_clear(*, settings: Settings, out: IO[str]) -> int:
    """Forget every cached route (a damaged cache file is started afresh)."""
    from ..orchestrate.router import open_cache

    cache = open_cache(_cache_config(settings))
    damaged = cache.problem is not None
    forgotten = cache.clear()
    if damaged:
        out.write(f"the damaged routing cache {cache.path} was started afresh\n")
    else:
        out.write(f"forgot {forgotten} cached route{'' if forgotten == 1 else 's'}\n")
    return 0
