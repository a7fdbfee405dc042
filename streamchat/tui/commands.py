"""The palette's model commands: switch a lane to another model.

Offered: the models each ready provider lists (checked when the palette opens, so that a plain
start-up never pays for it), and whatever ``provider:model`` id is typed (e.g.
``ollama:qwen3:0.6b``), listed or not. The fixed commands (theme, token colouring, new
conversation) are the app's system commands (``StreamchatApp.get_system_commands``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from textual.command import DiscoveryHit, Hit, Hits, Provider

from ..core.errors import ConfigError
from ..providers import parse_model_id, provider_names

if TYPE_CHECKING:
    from .app import StreamchatApp

__all__ = ["ModelCommands"]


class ModelCommands(Provider):
    """``Model: [lane N] → provider:model`` for every lane and every known model."""

    _models: list[str] = []

    @property
    def chat_app(self) -> "StreamchatApp":
        return self.app  # type: ignore[return-value]

    async def startup(self) -> None:
        self._models = await self.chat_app.discover_models()

    def _commands(self, models: list[str]) -> list[tuple[str, str, Callable[[], object]]]:
        app = self.chat_app
        lanes = len(app.providers)
        commands = []
        for lane, provider in enumerate(app.providers):
            where = f"lane {lane + 1} " if lanes > 1 else ""
            for model_id in models:
                if model_id != provider.model_id:
                    commands.append((
                        f"Model: {where}→ {model_id}",
                        f"now {provider.model_id}",
                        lambda lane=lane, model_id=model_id: app.switch_model(lane, model_id),
                    ))
        return commands

    async def discover(self) -> Hits:
        for title, help, command in self._commands(self._models):
            yield DiscoveryHit(title, command, help=help)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help, command in self._commands(self._models):
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), command, text=title, help=help)
        typed = _typed_model(query)
        if typed is not None and typed not in self._models:
            for title, help, command in self._commands([typed]):
                yield Hit(1.0, title, command, text=title, help=help)


def _typed_model(query: str) -> str | None:
    """``query`` when it reads as ``provider:model`` for a provider we have."""
    text = query.strip()
    if ":" not in text or " " in text:
        return None
    try:
        provider, _ = parse_model_id(text)
    except ConfigError:
        return None
    return text if provider in provider_names() else None
