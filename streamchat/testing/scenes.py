"""The app's main states, reached by driving the real app: one place for the snapshot tests
(``tests/test_tui_snapshots.py``) and the screenshot script (``screenshots/make_screenshots.py``).

Each :class:`Scene` builds the real app with :func:`streamchat.tui.make_app` (its providers talk to a
:class:`~streamchat.testing.wire.WireServer`, which the caller runs and points the environment at),
types a question the way a person does and presses the keys that lead to the state:

============== =================================================================================
confidence     one OpenAI answer mid-stream, shown as tokens coloured by confidence (``t``)
paused         one Ollama answer paused mid-stream (``space``)
lanes          two models side by side, one still streaming and one done, with their stats
error          an Anthropic answer that failed mid-way: the partial stays, the error and what to
               do next are shown under it
palette        the command palette (``ctrl+p``) over a finished answer
history        the history screen (``ctrl+o``) over a history seeded with fixed conversations
pipeline       ``--pipeline``: the draft stage done in its lane, the refine stage mid-stream in the
               next, as tokens marked and coloured by stage and confidence (``t``)
============== =================================================================================

Where the answer is, exactly, is part of the state: a scene never relies on timing for it.
Finished answers come from the server's fixed scenarios (``normal``, ``error-mid``). An answer
*mid-stream* is held after an exact number of tokens by :class:`TokenHold`: a subscriber of the
app's bus that stops reading, so that the bus's ``block`` policy holds the stream there (the
back-pressure a slow subscriber exerts by design). The server keeps sending; the app shows exactly
the tokens that were let through, and the stream stays live (streaming, or paused), as for a
person who looks at the screen at that moment.

What a scene does *not* fix is time: the stats panel's figures (tok/s, first token, elapsed) and
sparkline are real. The snapshot tests pin those widgets after the state is reached; screenshots
keep the real figures.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import events

from ..core.events import Event, StreamStarted

if TYPE_CHECKING:
    from textual.pilot import Pilot

    from ..config import Settings
    from ..core.bus import EventBus, Subscription
    from ..history import HistoryStore
    from ..tui.app import StreamchatApp
    from ..tui.chat import ChatScreen
    from ..tui.answer import AnswerView
    from .wire import WireServer

__all__ = ["SCENES", "SIZE", "Scene", "TokenHold", "wire_environment"]

#: the terminal size of every scene (columns, lines)
SIZE = (110, 32)
#: how long a scene waits for one step before it gives up (seconds; generous for loaded machines)
STEP_TIMEOUT = 20.0


# ------------------------------------------------------------------------------------------------
# Holding a stream after an exact number of tokens
# ------------------------------------------------------------------------------------------------


class TokenHold:
    """Hold chosen streams on ``bus`` after exactly ``tokens[model]`` tokens (``provider:model``).

    A bus handler (called inline by ``publish``) sees each stream start and subscribes to that
    stream with the ``block`` policy and room for ``n - 1`` events, which it never reads. The
    stream's n-th token is offered to the app's subscription (made earlier, so offered first), then
    its publisher waits for room that never comes: the app shows exactly n tokens, whatever the
    timing. Exact for providers that publish one event per token — OpenAI and Ollama, which get
    per-token confidence (Anthropic's bursts may be merged into one event).
    """

    def __init__(self, bus: EventBus, tokens: Mapping[str, int]) -> None:
        if any(n < 2 for n in tokens.values()):
            raise ValueError("a hold lets through at least 2 tokens")
        self.bus = bus
        self.tokens = dict(tokens)
        self.holds: dict[str, Subscription] = {}  # stream id → its (never read) subscription
        self._handle = bus.register(self)

    def on_event(self, event: Event) -> None:
        if type(event) is not StreamStarted or event.continues is not None:
            return
        n = self.tokens.get(f"{event.provider}:{event.model}")
        if n is not None and event.stream_id not in self.holds:
            self.holds[event.stream_id] = self.bus.subscribe(
                stream_id=event.stream_id, policy="block", maxsize=n - 1)

    def release(self) -> None:
        """Let every held stream go on."""
        self.bus.unregister(self._handle)
        for sub in self.holds.values():
            sub.close()


# ------------------------------------------------------------------------------------------------
# Driving the app
# ------------------------------------------------------------------------------------------------


async def until(pilot: Pilot, predicate: Callable[[], Any], what: str,
                timeout: float = STEP_TIMEOUT) -> None:
    """Wait (letting the app run) until ``predicate()`` is true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"scene: timed out waiting for {what}")
        await pilot.pause(0.02)


async def press(pilot: Pilot, *keys: str) -> None:
    """Press keys in order. Unlike ``pilot.press`` this does not wait for the CPU to go idle,
    which it does not while the in-process wire server streams; wait for the effect instead."""
    for key in keys:
        char = " " if key == "space" else key if len(key) == 1 else None
        pilot.app.post_message(events.Key(key, char))
    await pilot.pause(0)


def chat(pilot: Pilot) -> ChatScreen:
    return pilot.app.chat  # type: ignore[attr-defined]


def answers(pilot: Pilot) -> list[AnswerView]:
    from ..tui.answer import AnswerView

    return list(chat(pilot).query(AnswerView))


async def ask(pilot: Pilot, question: str) -> None:
    """Type ``question`` into the prompt and press enter, as a person does (once the providers are
    warm, so that the status bar says "ready"); return when the answers have started and the
    answer keys (space, esc, t…) work."""
    app: StreamchatApp = pilot.app  # type: ignore[assignment]
    await until(pilot, app.warmed.is_set, "the providers to warm up")
    screen = chat(pilot)
    await until(pilot, lambda: screen.focused is screen.prompt, "the prompt to have focus")
    await press(pilot, *["space" if ch == " " else ch for ch in question])
    await until(pilot, lambda: screen.prompt.value == question, "the question to be typed")
    await press(pilot, "enter")

    def started() -> bool:  # every lane's stream started, and focus left the prompt (or came back)
        turn = screen.last_turn
        return (turn is not None and all(a.stream is not None for a in turn.answers)
                and len(answers(pilot)) == len(app.providers)
                and (screen.focused is screen.scroller or not turn.live))

    await until(pilot, started, "the answers to start")


def shown(view: AnswerView) -> bool:
    """Everything that arrived is in the Markdown view (the view caught up with the stream)."""
    return view.text == "".join(piece[0] for piece in view.pieces)


async def settle(pilot: Pilot) -> None:
    """Let the app process what is pending and paint it: a layout may ask for another (an answer's
    free lines are sized in the layout that placed its text), so wait until none is pending for a
    few frames in a row (on a loaded machine that can take longer than a fixed pause)."""
    await pilot.pause(0.1)
    await pilot.app.animator.wait_until_complete()
    quiet, deadline = 0, time.monotonic() + STEP_TIMEOUT
    while quiet < 3 and time.monotonic() < deadline:
        await pilot.pause(0.03)
        quiet = 0 if pilot.app.screen._layout_required else quiet + 1


# ------------------------------------------------------------------------------------------------
# The scenes
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scene:
    """One state of the app: which models, which server settings, and how to get there."""

    name: str
    #: what the state shows (one line)
    title: str
    models: tuple[str, ...]
    #: drives a running app (built by :meth:`app`) into the state
    drive: Callable[[Pilot, Scene], Awaitable[None]]
    #: tokens after which a stream is held mid-answer (``provider:model`` → tokens)
    hold: Mapping[str, int] = field(default_factory=dict)
    #: WireServer tunables for this scene (e.g. ``slow_rate``)
    wire: Mapping[str, Any] = field(default_factory=dict)
    size: tuple[int, int] = SIZE
    #: fills the history first (the app then keeps one, in ``STREAMCHAT_HOME``); None: no history
    seed: Callable[[HistoryStore], None] | None = None
    #: the app answers in these stages (a ``[pipelines.NAME]`` table's ``stages``), one lane each
    stages: tuple[Mapping[str, Any], ...] = ()

    def app(self, settings: Settings | None = None) -> StreamchatApp:
        """The real app for this scene (default settings: no config file is read)."""
        from ..config import Settings
        from ..tui import make_app

        store = None
        if self.seed is not None:
            from ..history import HistoryStore

            store = HistoryStore()
            self.seed(store)
        pipeline = None
        if self.stages:
            from ..orchestrate.pipeline import parse_pipeline

            pipeline = parse_pipeline("careful", {"stages": [dict(stage) for stage in self.stages]}, "scene")
        return make_app(settings or Settings(), list(self.models),
                        reason=None if pipeline is not None else "given with --model",
                        store=store, freeze_gc=False, pipeline=pipeline)

    @contextlib.contextmanager
    def tuned(self, server: WireServer) -> Iterator[WireServer]:
        """``server`` with this scene's tunables, put back afterwards."""
        saved = {name: server.__dict__[name] for name in self.wire if name in server.__dict__}
        for name, value in self.wire.items():
            setattr(server, name, value)
        try:
            yield server
        finally:
            for name in self.wire:
                server.__dict__.pop(name, None)
            server.__dict__.update(saved)

    async def reach(self, pilot: Pilot) -> None:
        """Drive the running app into the state and let it paint."""
        if self.hold:  # registered on the app's bus, it lives as long as the app
            TokenHold(pilot.app.bus, self.hold)  # type: ignore[attr-defined]
        await self.drive(pilot, self)
        await settle(pilot)


def _held(scene: Scene, view: AnswerView) -> bool:
    """The lane of ``view`` shows exactly the tokens its hold lets through."""
    model = view.model_id.rpartition(" · ")[2]  # (a pipeline's lane is called "stage · model")
    return len(view.pieces) == scene.hold[model] and shown(view)


async def _confidence(pilot: Pilot, scene: Scene) -> None:
    await ask(pilot, "How do tokens reach the screen?")
    (view,) = answers(pilot)
    await until(pilot, lambda: _held(scene, view) and view.state == "streaming",
                "the held tokens")
    await press(pilot, "t")
    await until(pilot, lambda: view.has_class("-tokens") and chat(pilot).token_view, "the token view")


async def _paused(pilot: Pilot, scene: Scene) -> None:
    await ask(pilot, "Tell me about streams.")
    (view,) = answers(pilot)
    await until(pilot, lambda: _held(scene, view) and view.state == "streaming",
                "the held tokens")
    await press(pilot, "space")
    screen = chat(pilot)
    await until(pilot, lambda: screen.paused and view.state == "paused"
                and screen.lane_stats(0).state == "paused", "the pause")


async def _lanes(pilot: Pilot, scene: Scene) -> None:
    await ask(pilot, "Say hello.")
    left, right = answers(pilot)
    await until(pilot, lambda: _held(scene, left) and left.state == "streaming",
                "the left lane's held tokens")
    await until(pilot, lambda: right.state == "done" and chat(pilot).lane_stats(1).state == "done",
                "the right lane's answer")


async def _error(pilot: Pilot, scene: Scene) -> None:
    await ask(pilot, "Say hello.")
    (view,) = answers(pilot)
    await until(pilot, lambda: view.state == "failed" and chat(pilot).lane_stats(0).state == "failed"
                and not chat(pilot).streaming, "the error")


async def _palette(pilot: Pilot, scene: Scene) -> None:
    from textual.command import CommandPalette

    await ask(pilot, "Say hello.")
    (view,) = answers(pilot)
    screen = chat(pilot)
    await until(pilot, lambda: view.state == "done" and screen.focused is screen.prompt, "the answer")
    await press(pilot, "ctrl+p")

    def ready() -> bool:
        palette = pilot.app.screen
        return (isinstance(palette, CommandPalette) and palette.has_class("-ready")
                and not palette._show_busy)  # (its loading indicator is off)

    await until(pilot, ready, "the command palette")


async def _pipeline(pilot: Pilot, scene: Scene) -> None:
    await ask(pilot, "Why is the sky blue?")
    draft, refine = answers(pilot)
    await until(pilot, lambda: draft.state == "done" and _held(scene, refine) and refine.state == "streaming",
                "the refine stage's held tokens")
    await press(pilot, "t")
    await until(pilot, lambda: refine.has_class("-tokens") and draft.has_class("-tokens"), "the token view")


#: 2026-11-02 12:00 UTC: fixed times in the past, shown as a date in any time zone
_SEED_TIME = 1793620800.0


def _seed_history(store: HistoryStore) -> None:
    """Four conversations, one of each ending, at fixed times."""
    for i, (title, answer, model, state) in enumerate((
        ("Why is the sky blue?", "Rayleigh scattering: shorter wavelengths scatter more.",
         "anthropic:claude-haiku-4-5", "complete"),
        ("Explain TCP slow start", "The sender starts with a small congestion window and", "ollama:llama3.2:1b",
         "cut_off"),
        ("Summarise this diff", "The change moves", "openai:gpt-4o-mini", "failed"),
        ("Name three colours.", "1. Red\n2. Blue\n3. Green", "local:smollm2", "complete"),
    )):
        at = _SEED_TIME + i * 3600
        provider, _, model_name = model.partition(":")
        cid = store.create_conversation(title, created_at=at)
        store.add_message(cid, "user", title, created_at=at)
        store.add_message(cid, "assistant", answer, provider=provider, model=model_name, state=state,
                          error_kind="connection" if state == "failed" else None,
                          error_message="the connection dropped" if state == "failed" else None,
                          created_at=at + 2)


async def _history(pilot: Pilot, scene: Scene) -> None:
    from ..tui.history import HistoryScreen

    await until(pilot, lambda: chat(pilot).focused is chat(pilot).prompt, "the chat")
    await press(pilot, "ctrl+o")

    def listed() -> bool:
        screen = pilot.app.screen
        return isinstance(screen, HistoryScreen) and screen.options.option_count == 4 \
            and screen.focused is screen.options

    await until(pilot, listed, "the history screen")


#: every scene, by name (the order of the screenshots)
SCENES: dict[str, Scene] = {scene.name: scene for scene in (
    Scene("confidence", "one answer mid-stream, its tokens coloured by confidence (t)",
          ("openai:slow",), _confidence, hold={"openai:slow": 56},
          wire={"slow_rate": 50, "slow_tokens": 64}),
    Scene("paused", "an answer paused mid-stream (space); esc would stop it, keeping the partial",
          ("ollama:slow",), _paused, hold={"ollama:slow": 48},
          wire={"slow_rate": 50, "slow_tokens": 56}),
    Scene("lanes", "two models side by side, each with its live stats",
          ("openai:slow", "anthropic:normal"), _lanes, hold={"openai:slow": 40},
          wire={"slow_rate": 50, "slow_tokens": 48}),
    Scene("error", "an error mid-answer: the partial stays, and what to do next is shown",
          ("anthropic:error-mid",), _error),
    Scene("palette", "the command palette (ctrl+p)", ("openai:normal",), _palette,
          seed=lambda store: None),  # (with a history, as people run it: its commands are listed)
    Scene("history", "the history (ctrl+o): enter reopens a conversation, c continues a cut-off answer",
          ("openai:normal",), _history, seed=_seed_history),
    Scene("pipeline", "--pipeline: a fast draft done, the refine stage streaming next to it (t: by stage)",
          (), _pipeline, hold={"openai:slow": 40}, wire={"slow_rate": 50, "slow_tokens": 48},
          stages=({"name": "draft", "model": "ollama:normal", "confidence": 0.4},
                  {"name": "refine", "model": "openai:slow", "type": "refine"})),
)}


# ------------------------------------------------------------------------------------------------
# The environment (for a script; tests use the provider_env fixture)
# ------------------------------------------------------------------------------------------------

_PROVIDER_PREFIXES = ("ANTHROPIC_", "OPENAI_", "OLLAMA_", "STREAMCHAT_")


@contextlib.contextmanager
def wire_environment(server: WireServer, home: Path) -> Iterator[None]:
    """Point this process's SDKs at ``server`` (and ``STREAMCHAT_HOME`` at ``home``) for a while:
    every provider and streamchat variable is removed first, and the environment is put back
    afterwards."""
    saved = dict(os.environ)
    try:
        for name in [n for n in os.environ if n.startswith(_PROVIDER_PREFIXES)]:
            del os.environ[name]
        os.environ.update(server.env())
        os.environ["STREAMCHAT_HOME"] = str(home)
        loopback = "127.0.0.1,localhost,::1"
        for name in ("NO_PROXY", "no_proxy"):
            os.environ[name] = f"{os.environ[name]},{loopback}" if os.environ.get(name) else loopback
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
