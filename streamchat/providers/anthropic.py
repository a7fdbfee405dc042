"""Anthropic Claude through the official ``anthropic`` SDK (Messages API, ``stream=True``).

The raw event stream is used rather than the ``messages.stream()`` helper: it does no snapshot
work per token, and an empty answer is simply an empty answer (the helper's ``get_final_text()``
raises). Errors: an in-stream ``error`` event arrives as ``APIStatusError`` with status 200 and
``.type`` set; a dropped, reset or stalled connection raises the SDK's own transport errors
(``httpx2``, not ``httpx``) — unwrapped up to anthropic 2.12, wrapped in ``APIConnectionError`` /
``APITimeoutError`` (the transport error as ``__cause__``) in 2.17 — all translated here.

As for OpenAI (see ``providers/openai.py``), the stream is the SDK's own ``AsyncStream`` (its SSE
decoding, ``error`` events and clean-up) of plain event dicts — ``client.post`` with
``stream_cls=AsyncStream[object]``, the request ``messages.create`` sends: no pydantic model is
built per token.
"""

from __future__ import annotations

import os
from typing import Any

from ..core.errors import StreamchatError
from ..core.request import ChatRequest, Chunk
from . import _errors
from .base import Opened, Provider

DEFAULT_BASE_URL = "https://api.anthropic.com"


class AnthropicProvider(Provider):
    name = "anthropic"
    key_env = "ANTHROPIC_API_KEY"
    base_url_env = "ANTHROPIC_BASE_URL"
    default_base_url = DEFAULT_BASE_URL
    known_models = ("claude-sonnet-4-6", "claude-haiku-4-5", "claude-opus-4-6")

    @classmethod
    def has_key(cls) -> bool:
        return bool(os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("ANTHROPIC_AUTH_TOKEN"))

    def _make_client(self) -> Any:
        import anthropic

        return anthropic.AsyncAnthropic(
            max_retries=0,  # the stream controller retries, visibly, for every provider alike
            timeout=anthropic.Timeout(None, connect=self.timeouts.connect),
        )

    def _params(self, request: ChatRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "messages": self.message_dicts(request, with_system=False),  # system is top-level
            "stream": True,
        }
        if request.system:
            params["system"] = request.system
        if request.temperature is not None:
            params["temperature"] = request.temperature
        return params

    async def open(self, request: ChatRequest) -> Opened:
        import anthropic

        client = self.client
        try:
            response = await client.post("/v1/messages", body=self._params(request), cast_to=object,
                                         stream=True, stream_cls=anthropic.AsyncStream[object])
        except Exception as exc:
            self.fail(exc, started=False)
        usage: dict[str, int] = {}

        def convert(event: Any) -> str | Chunk | None:
            etype = event.get("type")
            if etype == "content_block_delta":
                delta = event.get("delta") or {}
                return delta.get("text") if delta.get("type") == "text_delta" else None
            if etype == "message_start":
                counts = (event.get("message") or {}).get("usage")
                if counts and counts.get("input_tokens") is not None:
                    usage["input_tokens"] = counts["input_tokens"]
            elif etype == "message_delta":
                counts = event.get("usage")
                if counts and counts.get("output_tokens") is not None:
                    usage["output_tokens"] = counts["output_tokens"]
                return Chunk(usage=dict(usage) or None, finish_reason=(event.get("delta") or {}).get("stop_reason"))
            return None

        return Opened(response, convert, response.close)

    def translate(self, exc: BaseException, started: bool) -> StreamchatError | None:
        import anthropic

        endpoint = self.endpoint()
        if isinstance(exc, anthropic.APIStatusError):
            etype, message = _errors.body_error(exc.body)
            return _errors.from_status(
                self.name,
                exc.status_code,
                detail=exc.api_message or message,
                error_type=exc.type or etype,
                headers=exc.response.headers,
                model=self.model,
            )
        if isinstance(exc, anthropic.APIConnectionError):
            return _errors.connection_lost(self.name, exc.__cause__ or exc, endpoint, connecting=not started)
        if _errors.is_transport_error(exc):
            return _errors.connection_lost(self.name, exc, endpoint, connecting=not started)
        if isinstance(exc, anthropic.APIError):
            etype, message = _errors.body_error(exc.body)
            return _errors.from_status(self.name, 0, detail=message, error_type=etype)
        return None
