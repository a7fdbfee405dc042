"""The small abstract base every provider adapter implements.

An adapter is the only place that imports its SDK (lazily, inside methods), turns the SDK's stream
into :class:`~streamchat.core.request.Chunk` objects, and translates every SDK or transport exception
into the :mod:`streamchat.core.errors` tree. Retries, timeouts (other than connect), pause and cancel
belong to the stream controller, not to adapters: adapters turn SDK retries off.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import AsyncIterator, ClassVar

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

    async def aclose(self) -> None:
        """Release the SDK client (connections)."""

    async def warm(self) -> None:
        """Prepare for a first request (open connections, load a model). Optional."""

    @classmethod
    async def status(cls, timeout: float = 0.5) -> ProviderStatus:
        """Is this provider usable here? Must return within about ``timeout`` seconds."""
        return ProviderStatus(cls.name, True, "available", list(cls.known_models))


def _without_prefill(messages: tuple[Message, ...]) -> tuple[Message, ...]:
    if messages and messages[-1].role == "assistant":
        return messages[:-1]
    return messages

