"""Shared fixtures: one loopback wire server for the session, and hermetic environments.

* ``wire`` (session): one :class:`~streamchat.testing.wire.WireServer` on a free port.
* ``server``: the same server, reset (recorded requests, progress, once-only scenarios) before the
  test and with any tunable the test changed (``server.slow_tokens = 10``) put back after it.
  Tests use ``server``; only tests that ask for it (directly or through ``provider_env``) reset it.
* ``provider_env``: in-process tests — the SDKs pointed at the server, ``STREAMCHAT_HOME`` in a tmp dir.
* :func:`cli_env`: the full environment for a ``streamchat`` subprocess pointed at a server.

No test may reach a real provider: every ``ANTHROPIC_*``, ``OPENAI_*`` and ``OLLAMA_*`` variable (keys,
base URLs, tokens) and the streamchat settings that change an answer (``STREAMCHAT_MODEL`` …) are
removed from this process's environment when this file is imported, before any test or fixture runs; ``OLLAMA_HOST`` then points at a closed
loopback port so that a test that forgets the fixtures cannot talk to a local Ollama daemon either.
Without a key, the Anthropic and OpenAI adapters fail before any network call.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Mapping, MutableMapping

import pytest

from streamchat.testing.wire import WireServer

#: Environment prefixes that configure a provider (keys, endpoints) or streamchat itself.
PROVIDER_ENV_PREFIXES = ("ANTHROPIC_", "OPENAI_", "OLLAMA_")
#: streamchat settings read from the environment (see streamchat.config) that change an answer.
STREAMCHAT_SETTINGS = ("STREAMCHAT_MODEL", "STREAMCHAT_SYSTEM", "STREAMCHAT_MAX_TOKENS", "STREAMCHAT_CONFIDENCE",
                       "STREAMCHAT_THEME")
#: Where a test that forgot the fixtures finds "Ollama": nothing listens on the discard port.
DEAD_OLLAMA_HOST = "http://127.0.0.1:9"
_LOOPBACK = "127.0.0.1,localhost,::1"

#: WireServer tunables (class attributes) that a test may override on the instance.
WIRE_TUNABLES = (
    "slow_rate", "slow_tokens", "stall_seconds", "firehose_tokens", "retry_after", "big_tokens",
    "big_token_size", "piece_delay", "piece_sleep_every", "write_timeout", "idle_timeout", "head_delay",
)


def _is_stripped(name: str) -> bool:
    return name.startswith(PROVIDER_ENV_PREFIXES) or name in STREAMCHAT_SETTINGS


def strip_provider_env(env: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Remove every provider variable and streamchat answer setting from ``env`` (in place)."""
    for name in [n for n in env if _is_stripped(n)]:
        del env[name]
    return env


def _no_proxy_for_loopback(env: MutableMapping[str, str]) -> None:
    """Keep loopback traffic away from any HTTP proxy configured in the environment."""
    for name in ("NO_PROXY", "no_proxy"):
        current = env.get(name, "")
        env[name] = f"{current},{_LOOPBACK}" if current else _LOOPBACK


strip_provider_env(os.environ)
os.environ["OLLAMA_HOST"] = DEAD_OLLAMA_HOST
_no_proxy_for_loopback(os.environ)


# ------------------------------------------------------------------------------------------------
# The wire server
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def wire() -> Iterator[WireServer]:
    """One loopback wire server (any free port) for the whole session."""
    server = WireServer(port=0).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def server(wire: WireServer) -> Iterator[WireServer]:
    """The session's wire server, reset for this test; tunables restored afterwards."""
    wire.reset()
    try:
        yield wire
    finally:
        for name in WIRE_TUNABLES:
            wire.__dict__.pop(name, None)  # back to the class default


# ------------------------------------------------------------------------------------------------
# Environments
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def provider_env(server: WireServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Point the SDKs of this process at ``server``; ``STREAMCHAT_HOME`` in a tmp dir.

    Returns the variables that were set."""
    for name in [n for n in os.environ if _is_stripped(n)]:
        monkeypatch.delenv(name)
    home = tmp_path / "streamchat-home"
    home.mkdir(exist_ok=True)
    values = {**server.env(), "STREAMCHAT_HOME": str(home)}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def cli_env(server: WireServer, tmp_path: Path, overrides: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """The environment for a ``streamchat`` subprocess talking to ``server``.

    A copy of ``os.environ`` without any provider variable or streamchat answer setting, plus the server's
    variables, ``STREAMCHAT_HOME`` (a folder in ``tmp_path``) and ``PYTHONUNBUFFERED=1``.
    ``overrides``: extra variables; a value of None removes the variable (e.g. a missing key)."""
    env = strip_provider_env(dict(os.environ))
    _no_proxy_for_loopback(env)
    home = tmp_path / "streamchat-home"
    home.mkdir(parents=True, exist_ok=True)
    env.update(server.env())
    env["STREAMCHAT_HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    for name, value in (overrides or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env
