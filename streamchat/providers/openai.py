"""OpenAI GPT through the official ``openai`` SDK (Chat Completions, ``stream=True``).

Usage is asked for with ``stream_options`` (a final chunk with ``choices: []``); compatible servers
that ignore it still work. With ``ChatRequest.confidence`` the request asks for ``logprobs`` and each
chunk's confidence is ``exp(mean logprob)`` of its tokens; a server that sends none gives None.
An error mid-stream arrives as a bare ``APIError`` (no status); a dropped connection as
``APIConnectionError``.

The stream is the SDK's own (``AsyncStream``: its SSE decoding, its error events, its clean-up), of
plain chunk dicts rather than ``ChatCompletionChunk`` models: ``client.post`` with
``stream_cls=AsyncStream[object]`` — the same request ``chat.completions.create`` sends. Building a
pydantic model per chunk was half of what the SDK cost: at 200 chunks/s, 18 % of a core with the
models, 10 % without (measured with a bare loop, no streamchat code). (The SDK's aiohttp transport
cut that to 6 %, but then a firehose arrived faster than the app can draw it, and the complete
answer was on screen only 1.1–1.2 s after its last token, against 0.6–0.7 s: not taken.)
"""

from __future__ import annotations

import math
import os
from typing import Any

from ..core.errors import StreamchatError
from ..core.request import ChatRequest, Chunk, Message
from . import _errors
from .base import Opened, Provider

DEFAULT_BASE_URL = "https://api.openai.com/v1"
CONTINUE_INSTRUCTION = (
    "Continue your previous answer exactly where it stopped, mid-word if need be. "
    "Do not repeat anything already written and do not add any preamble."
)


class OpenAIProvider(Provider):
    name = "openai"
    key_env = "OPENAI_API_KEY"
    base_url_env = "OPENAI_BASE_URL"
    default_base_url = DEFAULT_BASE_URL
    known_models = ("gpt-4.1-mini", "gpt-4.1", "gpt-4o-mini", "gpt-4o")
    supports_confidence = True

    def _make_client(self) -> Any:
        import openai

        try:  # The SDK looks at sys.modules["httpx"] on every request (for legacy httpx clients): a
            # half-imported httpx — another thread importing the ollama SDK just then — fails the
            # request ("partially initialized module 'httpx'"). Imported here, it is whole first.
            import httpx  # noqa: F401
        except ImportError:
            pass
        return openai.AsyncOpenAI(
            max_retries=0,  # the stream controller retries, visibly, for every provider alike
            timeout=openai.Timeout(None, connect=self.timeouts.connect),
        )

    def _params(self, request: ChatRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.model,
            "messages": self.message_dicts(request, with_system=True),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        # OpenAI's own API wants max_completion_tokens; many compatible servers only know max_tokens.
        key = "max_tokens" if os.environ.get("OPENAI_BASE_URL") else "max_completion_tokens"
        params[key] = request.max_tokens
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.confidence:
            params["logprobs"] = True
        return params

    def continuation(self, request: ChatRequest, partial: str) -> ChatRequest:
        """OpenAI has no prefill: send the partial as an assistant turn and ask to go on."""
        messages = request.messages
        if messages and messages[-1].role == "assistant":
            messages = messages[:-1]
        return request.with_messages(
            messages + (Message("assistant", partial.rstrip()), Message("user", CONTINUE_INSTRUCTION))
        )

    async def open(self, request: ChatRequest) -> Opened:
        import openai

        client = self.client
        try:
            response = await client.post("/chat/completions", body=self._params(request), cast_to=object,
                                         stream=True, stream_cls=openai.AsyncStream[object])
        except Exception as exc:
            self.fail(exc, started=False)
        return Opened(response, _convert, response.close)

    def translate(self, exc: BaseException, started: bool) -> StreamchatError | None:
        import openai

        endpoint = self.endpoint()
        if isinstance(exc, openai.APIStatusError):
            etype, message = _errors.body_error(exc.body)
            return _errors.from_status(self.name, exc.status_code, detail=message, error_type=etype,
                                       headers=exc.response.headers, model=self.model)
        if isinstance(exc, openai.APIConnectionError):
            return _errors.connection_lost(self.name, exc.__cause__ or exc, endpoint, connecting=not started)
        if isinstance(exc, openai.APIError):  # an error event inside a stream that had started well
            etype, message = _errors.body_error(exc.body)
            return _errors.from_status(self.name, 0, detail=message or exc.message, error_type=etype)
        if _errors.is_transport_error(exc):
            return _errors.connection_lost(self.name, exc, endpoint, connecting=not started)
        return None


def _convert(chunk: Any) -> str | Chunk | None:
    """One ``chat.completion.chunk`` (a dict, as sent): its text, or a Chunk when it carries more."""
    usage = None
    if (counts := chunk.get("usage")) is not None:
        usage = {"input_tokens": counts.get("prompt_tokens"), "output_tokens": counts.get("completion_tokens")}
    choices = chunk.get("choices")
    if not choices:
        return Chunk(usage=usage) if usage else None
    choice = choices[0]
    delta = choice.get("delta")
    text = delta.get("content") if delta else None
    logprobs = choice.get("logprobs")
    finish_reason = choice.get("finish_reason")
    if logprobs is None and usage is None and finish_reason is None:
        return text
    confidence = None
    if logprobs and (entries := logprobs.get("content")):
        values = [entry["logprob"] for entry in entries]
        confidence = min(1.0, math.exp(sum(values) / len(values)))
    if text or usage or finish_reason:
        return Chunk(text=text or "", confidence=confidence, usage=usage, finish_reason=finish_reason)
    return None
