"""Shared translation of HTTP statuses and transport failures into the streamchat error tree.

Each adapter extracts what its SDK knows (status, retry-after, the server's error type and message)
and calls these, so every provider says the same thing in the same words.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any, Mapping

from ..core.errors import (
    AuthenticationError,
    BadRequestError,
    ConnectionLostError,
    OverloadedError,
    ProviderError,
    RateLimitedError,
    StreamchatError,
    StreamTimeoutError,
)

# How each provider is configured, for messages that say what to do.
KEY_HINT = {
    "anthropic": "check ANTHROPIC_API_KEY",
    "openai": "check OPENAI_API_KEY",
    "ollama": "check OLLAMA_API_KEY or the server's access settings",
}
ENDPOINT_HINT = {
    "anthropic": "check your network or ANTHROPIC_BASE_URL",
    "openai": "check your network or OPENAI_BASE_URL",
    "ollama": "is Ollama running? (ollama serve; OLLAMA_HOST)",
}


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return None
        return max(0.0, email.utils.mktime_tz(parsed) - time.time())


def from_status(
    provider: str,
    status: int,
    *,
    detail: str | None = None,
    error_type: str | None = None,
    headers: Mapping[str, str] | None = None,
    model: str | None = None,
) -> StreamchatError:
    """An HTTP error status (or a provider's in-stream error type) as a streamchat error."""
    detail = (detail or "").strip()
    tail = f" ({detail})" if detail else ""
    wait = retry_after(headers)
    etype = (error_type or "").lower()
    if status in (401, 403) or etype in ("authentication_error", "permission_error", "invalid_api_key"):
        return AuthenticationError(f"authentication failed for {provider}: {KEY_HINT.get(provider, 'check your key')}",
                                   provider=provider, status=status)
    if status == 429 or etype in ("rate_limit_error", "rate_limit_exceeded"):
        when = f"; retry after {wait:g} s" if wait is not None else "; wait a moment and try again"
        return RateLimitedError(f"rate limited by {provider}{when}", provider=provider, retry_after=wait, status=status)
    if status in (503, 529) or etype in ("overloaded_error", "server_overloaded"):
        return OverloadedError(f"{provider} is overloaded right now: try again in a moment", provider=provider,
                               retry_after=wait, status=status)
    if status == 404:
        what = f"model {model!r}" if model else "the requested resource"
        return BadRequestError(f"{provider} does not know {what}{tail}: check the model name (streamchat models)",
                               provider=provider, status=status)
    if status in (400, 413, 422):
        return BadRequestError(f"{provider} refused the request{tail}", provider=provider, status=status)
    if status >= 500:
        return ProviderError(f"{provider} had a server error (HTTP {status}){tail}: try again later",
                             provider=provider, status=status)
    if status <= 0 or status == 200:  # an error event inside a stream that had started well
        return ProviderError(f"{provider} reported an error during the answer{tail}", provider=provider,
                             status=status if status > 0 else None)
    return ProviderError(f"{provider} answered HTTP {status}{tail}", provider=provider, status=status)


def connection_lost(provider: str, exc: BaseException, endpoint: str | None = None, *, connecting: bool = False) -> StreamchatError:
    where = f" at {endpoint}" if endpoint else ""
    name = type(exc).__name__
    if "Timeout" in name:
        which = "connect" if connecting or "Connect" in name or "Pool" in name else "idle"
        return StreamTimeoutError(f"timed out talking to {provider}{where}: {ENDPOINT_HINT.get(provider, 'try again')}",
                                  which=which, provider=provider)
    if connecting or "Connect" in name:
        return ConnectionLostError(f"could not connect to {provider}{where}: {ENDPOINT_HINT.get(provider, 'check the address')}",
                                   provider=provider)
    return ConnectionLostError(f"the connection to {provider} dropped before the answer was complete: try again",
                               provider=provider)


def body_error(body: Any) -> tuple[str | None, str | None]:
    """(type, message) from an error body in any of the providers' shapes."""
    if isinstance(body, Mapping):
        err = body.get("error", body)
        if isinstance(err, Mapping):
            return (err.get("type") or err.get("code")), err.get("message")
        if isinstance(err, str):
            return None, err
    if isinstance(body, str):
        return None, body
    return None, None


def is_transport_error(exc: BaseException) -> bool:
    """A transport failure from httpx, httpx2 (the anthropic/openai SDKs' own stack) or a socket.

    Matched by module so that checking does not import any HTTP stack the process has not loaded.
    """
    if isinstance(exc, (OSError, EOFError)):
        return True
    module = type(exc).__module__ or ""
    return module.split(".", 1)[0] in ("httpx", "httpx2", "httpcore", "httpcore2", "anyio", "h11")
