"""The small abstract base every provider adapter implements.

An adapter is the only place that imports its SDK (lazily, inside methods), turns the SDK's stream
into :class:`~streamchat.core.request.Chunk` objects, and translates every SDK or transport exception
into the :mod:`streamchat.core.errors` tree. Retries, timeouts (other than connect), pause and cancel
belong to the stream controller, not to adapters: adapters turn SDK retries off.
"""

from __future__ import annotations

import os
from abc import ABC
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, ClassVar, NoReturn

from ..core.errors import AuthenticationError, StreamchatError
from ..core.imports import IMPORT_LOCK
from ..core.request import ChatRequest, Chunk, Message

__all__ = ["Provider", "ProviderStatus", "Timeouts", "Opened"]


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


@dataclass(slots=True)
class Opened:
    """A response that has started: the stream controller reads ``events`` itself, turning each into
    text with ``convert`` — a ``str`` for a plain token, a :class:`Chunk` for anything more
    (confidence, usage, finish reason), or None to skip it — and calls ``close`` at the end.

    Exceptions from ``events`` are the SDK's own; the controller has them translated by
    :meth:`Provider.translate`. (Reading the SDK's iterator directly, rather than through a
    generator of chunks, saves a generator step and a Chunk per token — about as much as the Ollama
    SDK's own parsing costs.)
    """

    events: AsyncIterator[Any]
    convert: Callable[[Any], "str | Chunk | None"]
    close: Callable[[], Awaitable[Any]]


def _as_is(chunk: Chunk) -> Chunk:
    return chunk


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

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.stream is Provider.stream and cls.open is Provider.open:
            raise TypeError(f"{cls.__name__} must implement stream() or open()")

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        """An async generator of chunks. Raises only :class:`StreamchatError` subclasses.

        Not reading from it must not read from the wire (that is how pause works), and closing it
        (``aclose()``) must close the HTTP response (that is how cancel works). Implement this, or
        :meth:`open` (then this reads what open() returns).
        """
        opened = await self.open(request)
        try:
            async for event in opened.events:
                item = opened.convert(event)
                if item is not None:
                    yield Chunk(text=item) if type(item) is str else item
        except StreamchatError:
            raise
        except Exception as exc:
            self.fail(exc, started=True)
        finally:
            await opened.close()

    async def open(self, request: ChatRequest) -> Opened:
        """Send the request and return the started response. Raises StreamchatError only.

        Default: read :meth:`stream`'s chunks. Adapters of SDKs override this (see Opened)."""
        chunks = self.stream(request)
        return Opened(chunks, _as_is, chunks.aclose)

    def translate(self, exc: BaseException, started: bool) -> "StreamchatError | None":
        """The streamchat error for an SDK or transport exception, or None for one that is not the
        provider's (a bug). ``started``: the request had been sent and accepted (False while
        connecting), which tells "could not connect" from "the connection dropped"."""
        return None

    def fail(self, exc: Exception, started: bool) -> NoReturn:
        """Raise the translation of an SDK or transport exception (or ``exc`` itself if it is
        none of the provider's)."""
        error = self.translate(exc, started)
        if error is None:
            raise exc
        raise error from exc

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
        """Import the SDK and make the client (raising AuthenticationError for a missing key).

        The stream controller calls this before its clocks start, so an SDK's import time (seconds
        for some) never eats into a timeout or a retry budget. It runs in worker threads (warm-ups,
        lanes starting together), so it imports under :data:`~streamchat.core.imports.IMPORT_LOCK`."""
        if self._client is None:
            if not self.has_key():
                raise AuthenticationError(f"no API key for {self.name}: set {self.key_env}", provider=self.name)
            with IMPORT_LOCK:
                if self._client is None:
                    self._client = self._make_client()

    @property
    def prepared(self) -> bool:
        """True when :meth:`prepare` has nothing slow left to do (the SDK client exists)."""
        return self._client is not None

    def _make_client(self) -> Any:
        """The SDK client (SDK adapters override this; they import their SDK here)."""
        return None

    @property
    def client(self) -> Any:
        self.prepare()
        return self._client

    @staticmethod
    def message_dicts(request: ChatRequest, *, with_system: bool) -> list[dict[str, str]]:
        """The conversation as ``{"role", "content"}`` dicts, the system prompt first if asked."""
        messages = [{"role": "system", "content": request.system}] if with_system and request.system else []
        messages.extend({"role": m.role, "content": m.content} for m in request.messages)
        return messages

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

