"""The one exception tree of streamchat.

Every SDK and transport exception is translated into one of these at the provider boundary
(``raise … from exc``), so front ends only ever see this tree::

    StreamchatError                  base: a one-line, human message (``str(err)``)
    ├── ConfigError                  bad model id, unknown provider, bad option or input
    ├── ProviderError                the provider answered with an error we do not classify further
    │   ├── AuthenticationError      401/403: the key is missing, wrong or not allowed
    │   ├── BadRequestError          400/404/422: the request (model name, options) was refused
    │   ├── RateLimitedError         429 (retryable, may carry ``retry_after``)
    │   └── OverloadedError          529/503/``overloaded_error`` (retryable)
    ├── ConnectionLostError          could not connect, or the connection dropped mid-answer
    └── StreamTimeoutError           connect / first token / idle gap / total time ran out

``retryable`` says whether *starting again* can help; the stream controller only retries before the
first token (after it, a failure ends the stream as failed with the partial answer kept).
Messages never contain secrets: :func:`redact` scrubs key-like strings from anything that came from
the far side of the wire.
"""

from __future__ import annotations

import os
import re

__all__ = [
    "error_of_kind",
    "StreamchatError",
    "ConfigError",
    "ProviderError",
    "AuthenticationError",
    "BadRequestError",
    "RateLimitedError",
    "OverloadedError",
    "ConnectionLostError",
    "StreamTimeoutError",
    "redact",
    "KEY_ENV_VARS",
]

#: Environment variables whose values are secrets and must never be shown.
KEY_ENV_VARS = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OLLAMA_API_KEY", "ANTHROPIC_AUTH_TOKEN")

_KEY_PATTERN = re.compile(r"(sk-[A-Za-z0-9_\-]{6,}|Bearer\s+[A-Za-z0-9_\-\.]{6,})")


def redact(text: str) -> str:
    """Remove API keys (the configured ones and anything key-shaped) from ``text``."""
    for var in KEY_ENV_VARS:
        value = os.environ.get(var)
        if value and len(value) >= 4:
            text = text.replace(value, "[redacted]")
    return _KEY_PATTERN.sub("[redacted]", text)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(redact(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class StreamchatError(Exception):
    """Base of every error streamchat shows a person. ``str(err)`` is one line."""

    #: short machine-readable kind, used in NDJSON events and the history store
    kind: str = "error"
    #: process exit code for ``streamchat ask``
    exit_code: int = 1
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        self.message = _one_line(message)
        self.provider = provider
        self.retry_after = retry_after
        self.status = status
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict:
        data = {"kind": self.kind, "message": self.message, "retryable": self.retryable}
        if self.provider:
            data["provider"] = self.provider
        if self.status is not None:
            data["status"] = self.status
        if self.retry_after is not None:
            data["retry_after"] = self.retry_after
        return data


class ConfigError(StreamchatError):
    kind = "config"
    exit_code = 2


class ProviderError(StreamchatError):
    kind = "provider"
    exit_code = 1


class AuthenticationError(ProviderError):
    kind = "auth"
    exit_code = 3


class BadRequestError(ProviderError):
    kind = "bad_request"
    exit_code = 2


class RateLimitedError(ProviderError):
    kind = "rate_limited"
    exit_code = 4
    retryable = True


class OverloadedError(ProviderError):
    kind = "overloaded"
    exit_code = 4
    retryable = True


class ConnectionLostError(StreamchatError):
    """Could not connect, or the connection broke. Retryable: before the first token only."""

    kind = "connection"
    exit_code = 6
    retryable = True


class StreamTimeoutError(StreamchatError):
    """A timeout ran out. ``which`` is ``connect``, ``first_token``, ``idle`` or ``total``."""

    kind = "timeout"
    exit_code = 5

    def __init__(self, message: str, *, which: str = "total", **kw) -> None:
        super().__init__(message, **kw)
        self.which = which
        # A connect timeout is a connection failure before anything started: worth another try.
        self.retryable = which == "connect"

    def to_dict(self) -> dict:
        return {**super().to_dict(), "which": self.which}


def error_of_kind(kind: str | None, message: str) -> StreamchatError:
    """An error of the class whose ``kind`` is ``kind`` (as stored in the history or sent in an
    event), saying ``message``; an unknown kind gives a plain :class:`StreamchatError`."""
    pending: list[type[StreamchatError]] = [StreamchatError]
    while pending:
        cls = pending.pop()
        if cls.kind == kind:
            return cls(message)
        pending.extend(cls.__subclasses__())
    return StreamchatError(message)
