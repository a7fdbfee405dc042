"""The small abstract base every provider adapter implements.

An adapter is the only place that imports its SDK (lazily, inside methods), turns the SDK's stream
into :class:`~streamchat.core.request.Chunk` objects, and translates every SDK or transport exception
into the :mod:`streamchat.core.errors` tree. Retries, timeouts (other than connect), pause and cancel
belong to the stream controller, not to adapters: adapters turn SDK retries off.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, ClassVar

from ..core.request import ChatRequest, Chunk, Message

__all__ = ["Provider", "ProviderStatus", "Timeouts"]


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds; None means no limit. ``first_token``, ``idle`` and ``total`` are enforced by the
    stream controller; ``connect`` is given to the SDK's HTTP client."""

    connect: float | None = 10.0
    first_token: float | None = 60.0
    idle: float | None = 60.0
    total: float | None = None


@dataclass(slots=True)
class ProviderStatus:
    """What ``streamchat models`` shows for one provider."""

    name: str
    configured: bool
    detail: str
    models: list[str] = field(default_factory=list)
    endpoint: str | None = None


class Provider(ABC):
    """One model at one provider. Subclasses set ``name`` and implement :meth:`stream`."""

    #: the prefix in model ids (``anthropic:claude-…``)
    name: ClassVar[str]
    #: environment variable that holds the key, if the provider needs one
    key_env: ClassVar[str | None] = None
    #: models worth suggesting (``streamchat models``); any name the provider accepts works
    known_models: ClassVar[tuple[str, ...]] = ()
    #: the adapter can turn ``ChatRequest.confidence`` into per-token confidence values
    supports_confidence: ClassVar[bool] = False
    #: environment variable naming the endpoint, and the endpoint used when it is not set
    base_url_env: ClassVar[str | None] = None
    default_base_url: ClassVar[str | None] = None

    #: the SDK client, made on first use by the adapter and closed by :meth:`aclose`
    _client: Any = None

    def __init__(self, model: str, *, timeouts: Timeouts | None = None) -> None:
        self.model = model
        self.timeouts = timeouts or Timeouts()

    @property
    def model_id(self) -> str:
        return f"{self.name}:{self.model}"

    @abstractmethod
    def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        """An async generator of chunks. Raises only :class:`StreamchatError` subclasses.

        Not reading from it must not read from the wire (that is how pause works), and closing it
        (``aclose()``) must close the HTTP response (that is how cancel works).
        """

    def continuation(self, request: ChatRequest, partial: str) -> ChatRequest:
        """The request that makes the model go on after ``partial`` (a cut-off answer).

        Default: the partial, without trailing whitespace, as a final assistant message that the
        model continues (Anthropic prefill, Ollama, local). OpenAI overrides this.
        """
        messages = _without_prefill(request.messages)
        return request.with_messages(messages + (Message("assistant", partial.rstrip()),))

    @classmethod
    def endpoint(cls) -> str | None:
        return (os.environ.get(cls.base_url_env) if cls.base_url_env else None) or cls.default_base_url

    @classmethod
    def has_key(cls) -> bool:
        return cls.key_env is None or bool(os.environ.get(cls.key_env))

    async def aclose(self) -> None:
        """Release the SDK client (its connections)."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    def prepare(self) -> None:
        """Import the SDK and make the client (raising e.g. AuthenticationError for a missing key).

        The stream controller calls this before its clocks start, so an SDK's import time (seconds
        for some) never eats into a timeout or a retry budget."""

    async def warm(self) -> None:
        """Get ready for a first request off the event loop (SDK import, client; a local model
        loads). The TUI calls this at start-up so the first answer does not pay for it."""
        import asyncio

        await asyncio.to_thread(self.prepare)

    @classmethod
    async def status(cls, timeout: float = 0.5) -> ProviderStatus:
        """Is this provider usable here? Must return within about ``timeout`` seconds.

        Default: configured when its key is set (no network call)."""
        models = list(cls.known_models)
        if cls.key_env is None:
            return ProviderStatus(cls.name, True, "available", models, cls.endpoint())
        if cls.has_key():
            return ProviderStatus(cls.name, True, f"key set ({cls.key_env})", models, cls.endpoint())
        return ProviderStatus(cls.name, False, f"no key: set {cls.key_env}", models, cls.endpoint())


def _without_prefill(messages: tuple[Message, ...]) -> tuple[Message, ...]:
    if messages and messages[-1].role == "assistant":
        return messages[:-1]
    return messages

