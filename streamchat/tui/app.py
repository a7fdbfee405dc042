"""The Textual app and its factory.

``make_app(settings, models, system, reason=…)`` builds the app from its dependencies (one provider
per model; two or more models are side-by-side lanes). The CLI, the tests and any screenshot script
all use it. The app owns the :class:`~streamchat.core.bus.EventBus`, the providers and the theme;
the chat screen does the rest.

Start-up: the window is interactive at once; the providers warm up (SDK import, client, a local
model's load) in a background worker; once the first frame is up, and again after warm-up, the
garbage collector is run and frozen (``gc.freeze()``) so that full collections of the start-up
objects do not stall key presses later.

``ctrl+c`` never quits: while an answer streams it stops it (the partial stays); when nothing
streams it copies a selection, or says that ``ctrl+q`` quits. ``ctrl+q`` quits (streams are
cancelled first, their partials kept).

The command palette (``ctrl+p``) holds streamchat's own commands next to Textual's (quit, keys,
screenshot): switch a lane's model (``commands.ModelCommands``: the models each ready provider
offers, or any ``provider:model`` typed in), the theme (streamchat's themes replace Textual's theme command: the
confidence bands and stage colours come from them), and the token colouring.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import TYPE_CHECKING, Iterable

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.theme import Theme as TextualTheme

from ..core.bus import EventBus
from ..core.errors import StreamchatError
from ..providers import create_provider, gather_status
from ..theming import COLOR_KEYS, load_theme, theme_names
from .chat import ChatScreen
from .commands import ModelCommands

if TYPE_CHECKING:
    from textual.screen import Screen

    from ..config import Settings
    from ..history import HistoryRecorder, HistoryStore
    from ..orchestrate.pipeline import Pipeline
    from ..providers.base import Provider
    from ..theming import Theme

__all__ = ["StreamchatApp", "make_app", "textual_theme"]

log = logging.getLogger("streamchat.tui")


def textual_theme(theme: "Theme") -> TextualTheme:
    """A streamchat theme (data) as a Textual theme named ``streamchat-NAME``."""
    colors = {key: theme.colors[key] for key in COLOR_KEYS if key in theme.colors}
    return TextualTheme(name=f"streamchat-{theme.name}", dark=theme.dark, **colors)


class StreamchatApp(App):
    """The chat app. Build it with :func:`make_app`."""

    TITLE = "streamchat"
    # A mode (not get_default_screen) so that the screen's CSS_PATH is loaded.
    MODES = {"chat": ChatScreen}
    DEFAULT_MODE = "chat"
    COMMANDS = App.COMMANDS | {ModelCommands}
    BINDINGS = [
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(
        self,
        settings: "Settings",
        providers: list["Provider"],
        *,
        system: str | None = None,
        reason: str | None = None,
        palette: "Theme",
        store: "HistoryStore | None" = None,
        history_problem: str | None = None,
        freeze_gc: bool = True,
        pipeline: "Pipeline | None" = None,
    ) -> None:
        super().__init__()
        if not providers:
            raise ValueError("at least one model is needed")
        self.settings = settings
        self.providers = providers
        self.system = system
        self.reason = reason
        #: the streamchat theme (confidence bands, stage colours); its colours are the app theme
        self.palette = palette
        self.bus = EventBus()
        #: the history (None: not kept — ``--no-history``, or it could not be opened: see
        #: ``history_problem``); every answer is recorded as it grows
        self.store = store
        self.history_problem = history_problem
        self.recorder: "HistoryRecorder | None" = None
        self.freeze_gc = freeze_gc
        #: answer in stages (``--pipeline``): one lane per stage, ``providers[i]`` is stage i's model
        self.pipeline = pipeline
        self.warm_status = "warming up…"
        self.warmed = asyncio.Event()
        self._warming: dict[int, asyncio.Future] = {}  # id(provider) → its warm-up
        #: providers replaced by a model switch: an answer they wrote may still be continued
        self._retired: list["Provider"] = []
        self._found_models: list[str] = []  # see discover_models()
        self._models_checked: float | None = None
        theme = textual_theme(palette)
        self.register_theme(theme)
        self.theme = theme.name

    def lane_label(self, lane: int) -> str:
        """What a lane is called on screen: its model, or (a pipeline) its stage and model."""
        model = self.providers[lane].model_id
        if self.pipeline is not None:
            return f"{self.pipeline.stages[lane].name} · {model}"
        return model

    @property
    def chat(self) -> ChatScreen:
        screen = self.screen_stack[0]
        assert isinstance(screen, ChatScreen)
        return screen

    def on_mount(self) -> None:
        if self.store is not None:
            from ..history import HistoryRecorder

            self.recorder = HistoryRecorder(self.store).attach(self.bus)
        # Warm-up begins once the first frame is up: importing an SDK in a thread still holds the
        # GIL most of the time, and the window comes first.
        self.call_after_refresh(self._begin_warm_up)

    def _begin_warm_up(self) -> None:
        for provider in self.providers:
            if id(provider) not in self._warming:
                self._start_warming(provider)
        self.run_worker(self._warm(), name="warm", group="warm", exit_on_error=False)
        if self.freeze_gc:
            self._freeze_gc()

    def _start_warming(self, provider: "Provider") -> None:
        future = asyncio.ensure_future(provider.warm())
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # seen: no warning
        self._warming[id(provider)] = future

    def _freeze_gc(self) -> None:
        gc.collect()
        gc.freeze()

    def warming(self, provider: "Provider") -> asyncio.Future | None:
        """The provider's warm-up while it runs (a stream waits for it: starting one meanwhile
        would import the SDK on the event loop, or block it on the import lock)."""
        future = self._warming.get(id(provider))
        return future if future is not None and not future.done() else None

    async def _warm(self) -> None:
        """Pre-load every provider (SDK import and client, or the local model) off the loop, and
        the answer widgets (Textual's Markdown), which start-up leaves out."""
        from ..core.imports import import_module

        await asyncio.to_thread(import_module, f"{__package__}.answer")
        results = await asyncio.gather(*(self._warming[id(p)] for p in self.providers),
                                       return_exceptions=True)
        problems = []
        for provider, result in zip(self.providers, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("warming %s failed: %s", provider.model_id, result)
                problems.append(f"{provider.model_id}: {result}")
        self.warm_status = "ready" if not problems else "⚠ " + "; ".join(problems)
        if self.is_running and self.screen_stack:
            self.chat.show_status()
        if self.freeze_gc:
            self._freeze_gc()  # the SDK modules imported by warm-up are long-lived too
        self.warmed.set()

    async def discover_models(self) -> list[str]:
        """The models the palette offers: the ones in use, then each ready provider's. Checked
        (quickly, bounded) when the palette first opens, then kept for a minute."""
        loop = asyncio.get_running_loop()
        if self._models_checked is None or loop.time() - self._models_checked > 60:
            self._models_checked = loop.time()
            try:
                statuses = await gather_status()
            except Exception:  # the palette still takes a typed id
                log.debug("listing models failed", exc_info=True)
                statuses = []
            self._found_models = [f"{s.name}:{m}" for s in statuses if s.configured for m in s.models]
        return list(dict.fromkeys([p.model_id for p in self.providers] + self._found_models))

    # ------------------------------------------------------------------ palette commands
    def get_system_commands(self, screen: "Screen") -> Iterable[SystemCommand]:
        for command in super().get_system_commands(screen):
            if command.title != "Theme":  # streamchat's themes below hold the token colours too
                yield command
        if not isinstance(screen, ChatScreen):
            return
        if screen.token_view:
            yield SystemCommand("Show plain Markdown", "Answers as rendered Markdown (key t)",
                                screen.action_show_markdown)
        else:
            yield SystemCommand("Colour tokens by confidence", "Each token coloured by the model's "
                                "confidence, or by stage (key t)", screen.action_show_tokens)
        yield SystemCommand("New conversation", "Stop what streams and start over (ctrl+n)",
                            screen.action_new_conversation)
        if self.store is not None:
            yield SystemCommand("History", "Reopen a stored conversation, or search them (ctrl+o)",
                                screen.action_history)
            yield SystemCommand("Stream statistics", "Time to first token and tokens/s per model, as "
                                "histograms", screen.action_stats)
        for name in theme_names():
            if name != self.palette.name:
                yield SystemCommand(f"Theme: {name}", "Colours, confidence bands and stage colours",
                                    lambda name=name: self.set_palette(name), discover=False)

    def switch_model(self, lane: int, model_id: str) -> bool:
        """Talk to ``model_id`` in ``lane`` from the next prompt on (the lane's conversation goes
        on). Refused with a notice while that lane streams, or for a bad id."""
        chat = self.chat
        if chat.lane_live(lane):
            self.notify("Stop the answer first (esc), then switch the model.", severity="warning")
            return False
        try:
            provider = create_provider(model_id, timeouts=self.settings.timeouts)
        except StreamchatError as exc:
            self.notify(str(exc), title="Model not switched", severity="error")
            return False
        old = self.providers[lane]
        self._retired.append(old)
        self.providers[lane] = provider
        if self.pipeline is not None:  # the stage of this lane answers with the new model
            from dataclasses import replace

            stages = list(self.pipeline.stages)
            stages[lane] = replace(stages[lane], model=model_id)
            self.pipeline = replace(self.pipeline, stages=tuple(stages))
        self._start_warming(provider)
        self.reason = None
        chat.models_changed()
        self.notify(f"{old.model_id} → {model_id}", title="Model switched", timeout=3)
        return True

    def set_lanes(self, models: list[str]) -> bool:
        """Talk to ``models``, one lane each (a reopened conversation's models). Nothing streams
        then (the chat stops it first)."""
        try:
            providers = [create_provider(m, timeouts=self.settings.timeouts) for m in models]
        except StreamchatError as exc:
            self.notify(f"{exc}; the conversation stays with the current models", title="Models not switched",
                        severity="warning")
            return False
        self._retired.extend(self.providers)
        self.providers[:] = providers
        self.pipeline = None  # the lanes are the conversation's models now, not a pipeline's stages
        for provider in providers:
            self._start_warming(provider)
        self.reason = None
        return True

    def set_palette(self, name: str) -> bool:
        """Switch to streamchat theme ``name`` (built in, or in the config folder)."""
        try:
            palette = load_theme(name)
        except StreamchatError as exc:
            self.notify(str(exc), title="Theme not changed", severity="error")
            return False
        theme = textual_theme(palette)
        self.register_theme(theme)
        self.palette = palette
        self.theme = theme.name
        self.chat.palette_changed()
        return True

    async def action_quit(self) -> None:
        """Quit; live streams are cancelled first (each keeps its partial answer, and the history
        gets every word of it before the app goes)."""
        if self.screen_stack:
            await self.chat.stop_all(timeout=2.0)
        await self._close_history()
        self.exit()

    async def _close_history(self) -> None:
        recorder, self.recorder = self.recorder, None
        if recorder is not None:
            await recorder.aclose()
            if recorder.error is not None:
                log.error("history: %s", recorder.error)

    def history_failed(self, exc: StreamchatError) -> None:
        """The history cannot be written: say so once, chat on without it."""
        log.error("history: %s", exc)
        self.history_problem = str(exc)
        self.notify(f"{exc}\nThe chat goes on without history.", title="History off", severity="error",
                    timeout=8)
        if self.recorder is not None:
            self.recorder.detach()
        self.store = None
        self.recorder = None

    async def on_unmount(self) -> None:
        await self._close_history()  # (ctrl+q closed it already; this is for any other exit)
        for future in self._warming.values():
            future.cancel()
        for provider in [*self.providers, *self._retired]:
            try:
                await provider.aclose()
            except Exception:
                log.debug("closing %s failed", provider.model_id, exc_info=True)


def make_app(
    settings: "Settings",
    models: list[str],
    system: str | None = None,
    *,
    reason: str | None = None,
    store: "HistoryStore | None" = None,
    history_problem: str | None = None,
    freeze_gc: bool = True,
    pipeline: "Pipeline | None" = None,
) -> StreamchatApp:
    """The app for ``models`` (``provider:model`` ids; two or more are compared side by side),
    recording into ``store`` (none: no history is kept; ``history_problem`` says why, if it is
    because the history could not be opened). With a ``pipeline``, every question is answered in
    its stages, one lane per stage (``models`` is then ignored).

    Raises :class:`~streamchat.core.errors.ConfigError` for a bad model id or theme, before any
    window opens."""
    if pipeline is not None:
        models = [stage.model for stage in pipeline.stages]
    providers = [create_provider(model, timeouts=settings.timeouts) for model in models]
    palette = load_theme(settings.theme)
    return StreamchatApp(settings, providers, system=system, reason=reason, palette=palette,
                         store=store, history_problem=history_problem, freeze_gc=freeze_gc,
                         pipeline=pipeline)
