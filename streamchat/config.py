"""Settings in one typed class, read from ``config.toml`` and overridden by the environment.

Where things live (platformdirs), unless ``STREAMCHAT_HOME`` moves *all* state into one folder
(tests use that): config ``<config dir>/config.toml``, data (history) ``<data dir>/``.

``config.toml``::

    default_model = "anthropic:claude-haiku-4-5"   # else picked as described in resolve_model()
    system = "You are concise."
    max_tokens = 1024
    confidence = false          # ask providers for per-token probabilities (logprobs)
    theme = "dark"              # dark, light, high-contrast, or your own in <config>/themes/

    [timeouts]                  # seconds
    connect = 10
    first_token = 60
    idle = 60

    [pipelines.NAME]            # progressive stages (see streamchat.orchestrate.pipeline)
    [router]                    # routing tiers and cache (see streamchat.orchestrate.router)

The ``pipelines`` and ``router`` tables are kept as read here and checked by their orchestrators
when they are used, so a mistake in them names its key and does not stop a plain ``ask``.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .core.errors import ConfigError
from .providers.base import Timeouts

__all__ = ["Settings", "load_settings", "config_dir", "data_dir", "resolve_model"]


def _home() -> Path | None:
    home = os.environ.get("STREAMCHAT_HOME")
    return Path(home).expanduser() if home else None


def config_dir() -> Path:
    home = _home()
    if home is not None:
        return home
    from platformdirs import user_config_path

    return user_config_path("streamchat")


def data_dir() -> Path:
    home = _home()
    if home is not None:
        return home
    from platformdirs import user_data_path

    return user_data_path("streamchat")


@dataclass
class Settings:
    #: model used when none is given (``provider:model``); None: pick as resolve_model() says
    default_model: str | None = None
    #: system prompt for every request, unless one is given
    system: str | None = None
    #: the most tokens an answer may have
    max_tokens: int = 1024
    #: ask providers for per-token probabilities (OpenAI logprobs; the local model always has them)
    confidence: bool = False
    #: colour theme (built-in: dark, light, high-contrast; or one of your own in <config>/themes/)
    theme: str | None = None
    #: connect / first token / idle gap / total, in seconds
    timeouts: Timeouts = field(default_factory=Timeouts)
    #: ``[pipelines.NAME]`` tables as read (checked by ``orchestrate.pipeline`` when one is used)
    pipelines: dict[str, Any] = field(default_factory=dict)
    #: the ``[router]`` table as read (checked by ``orchestrate.router`` when routing is used)
    router: dict[str, Any] = field(default_factory=dict)
    #: where this came from (for messages)
    source: Path | None = None


_ENV = {
    "default_model": "STREAMCHAT_MODEL",
    "system": "STREAMCHAT_SYSTEM",
    "max_tokens": "STREAMCHAT_MAX_TOKENS",
    "confidence": "STREAMCHAT_CONFIDENCE",
    "theme": "STREAMCHAT_THEME",
}


def _coerce(name: str, value: Any, expected: type, where: str) -> Any:
    if expected is bool and isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    if expected is int:
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {name} must be a whole number, not {value!r}") from None
    if expected is str and not isinstance(value, str):
        raise ConfigError(f"{where}: {name} must be text, not {value!r}")
    return value


def load_settings(path: Path | None = None) -> Settings:
    """Settings from the config file (if any) with environment overrides. Bad keys fail clearly."""
    path = path or config_dir() / "config.toml"
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
    settings = Settings(source=path if path.exists() else None)
    types = {"default_model": str, "system": str, "max_tokens": int, "confidence": bool, "theme": str}
    for key, value in data.items():
        if key == "timeouts":
            settings.timeouts = _timeouts(value, path)
        elif key in ("pipelines", "router"):
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: [{key}] must be a table")
            setattr(settings, key, value)
        elif key in types:
            setattr(settings, key, _coerce(key, value, types[key], str(path)))
        else:
            known = ", ".join([*types, "timeouts", "pipelines", "router"])
            raise ConfigError(f"{path}: unknown setting {key!r} (known: {known})")
    for key, env in _ENV.items():
        if os.environ.get(env):
            setattr(settings, key, _coerce(key, os.environ[env], types[key], env))
    return settings


def _timeouts(value: Any, path: Path) -> Timeouts:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: [timeouts] must be a table")
    names = {f.name for f in fields(Timeouts)}
    out: dict[str, float | None] = {}
    for key, seconds in value.items():
        if key not in names:
            raise ConfigError(f"{path}: unknown timeout {key!r} (known: {', '.join(sorted(names))})")
        if not isinstance(seconds, (int, float)) or seconds <= 0:
            raise ConfigError(f"{path}: timeouts.{key} must be a positive number of seconds")
        out[key] = float(seconds)
    return Timeouts(**out)


async def resolve_model(explicit: str | None, settings: Settings) -> tuple[str, str]:
    """Which model to use, and why (a short reason a person can read).

    An explicit ``--model``; else the configured default; else the first available of Anthropic
    (key set), OpenAI (key set), Ollama (server answers within ~200 ms); else the embedded local
    model ``local:smollm2``.
    """
    if explicit:
        return explicit, "given with --model"
    if settings.default_model:
        where = "STREAMCHAT_MODEL" if os.environ.get("STREAMCHAT_MODEL") else f"default_model in {settings.source}"
        return settings.default_model, f"from {where}"
    from .providers import provider_class

    anthropic = provider_class("anthropic")
    if anthropic.has_key():
        return f"anthropic:{anthropic.known_models[0]}", "ANTHROPIC_API_KEY is set"
    openai = provider_class("openai")
    if openai.has_key():
        return f"openai:{openai.known_models[0]}", "OPENAI_API_KEY is set"
    ollama = provider_class("ollama")
    status = await ollama.status(timeout=0.2)
    if status.configured and status.models:
        return f"ollama:{status.models[0]}", f"Ollama answers at {status.endpoint}"
    return "local:smollm2", "no API key set and no Ollama server: using the embedded model"
