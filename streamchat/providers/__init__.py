"""Provider registry: model ids read ``provider:model`` and split on the *first* colon.

Built-in adapters are named here as import paths, so nothing is imported until a provider is used
(start-up must not pay for SDKs it does not need). Third parties add a provider with an entry point
in the ``streamchat.providers`` group (``name = "package.module:Class"``).
"""

from __future__ import annotations

import asyncio
import importlib
from typing import TYPE_CHECKING

from ..core.errors import ConfigError

if TYPE_CHECKING:
    from .base import Provider, ProviderStatus, Timeouts

__all__ = ["BUILTIN", "parse_model_id", "provider_class", "create_provider", "provider_names", "gather_status"]

BUILTIN: dict[str, str] = {
    "anthropic": "streamchat.providers.anthropic:AnthropicProvider",
    "openai": "streamchat.providers.openai:OpenAIProvider",
    "ollama": "streamchat.providers.ollama:OllamaProvider",
    "local": "streamchat.providers.local:LocalProvider",
}

_ENTRY_POINT_GROUP = "streamchat.providers"


def parse_model_id(model_id: str) -> tuple[str, str]:
    """``"ollama:llama3.2:1b"`` → ``("ollama", "llama3.2:1b")``."""
    provider, sep, model = model_id.strip().partition(":")
    if not sep or not provider or not model:
        raise ConfigError(
            f"model {model_id!r} is not of the form PROVIDER:MODEL "
            f"(e.g. anthropic:claude-haiku-4-5, openai:gpt-4o-mini, ollama:llama3.2:1b)"
        )
    return provider.lower(), model


def _third_party() -> dict[str, str]:
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=_ENTRY_POINT_GROUP) if ep.name not in BUILTIN}


def provider_names() -> list[str]:
    return [*BUILTIN, *sorted(_third_party())]


def provider_class(name: str) -> type["Provider"]:
    target = BUILTIN.get(name) or _third_party().get(name)
    if target is None:
        raise ConfigError(f"unknown provider {name!r}: choose one of {', '.join(provider_names())}")
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def create_provider(model_id: str, *, timeouts: "Timeouts | None" = None) -> "Provider":
    name, model = parse_model_id(model_id)
    return provider_class(name)(model, timeouts=timeouts)


async def gather_status(timeout: float = 0.5) -> list["ProviderStatus"]:
    """Every provider's status, checked in parallel, each bounded by ``timeout``."""

    async def one(name: str) -> "ProviderStatus":
        from .base import ProviderStatus

        try:
            cls = provider_class(name)
            # the check bounds its own network wait; the outer bound only catches a hung plugin
            return await asyncio.wait_for(cls.status(timeout=timeout), timeout + 5.0)
        except asyncio.TimeoutError:
            return ProviderStatus(name, False, "status check timed out")
        except Exception as exc:  # a broken plugin must not break the list
            return ProviderStatus(name, False, f"unavailable: {exc or type(exc).__name__}")

    return list(await asyncio.gather(*(one(name) for name in provider_names())))
