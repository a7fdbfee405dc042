"""Local or remote Ollama through the official ``ollama`` SDK (``/api/chat``, NDJSON).

The ``ollama`` SDK never retries and has no timeout by default: the stream controller retries,
and the connect timeout is set here. A mid-stream ``{"error": …}`` line arrives as
``ResponseError`` with status -1; dropped connections and stalls raise raw ``httpx`` errors.
A final assistant message is continued by the model (continue). ``ollama:llama3.2:1b`` is the
model ``llama3.2:1b`` (ids split on the first colon).
"""

from __future__ import annotations

import math
import os
from typing import Any

from ..core.errors import StreamchatError
from ..core.request import ChatRequest, Chunk
from . import _errors
from .base import Opened, Provider, ProviderStatus

DEFAULT_HOST = "http://127.0.0.1:11434"


def ollama_host() -> str:
    host = os.environ.get("OLLAMA_HOST") or DEFAULT_HOST
    return host if "://" in host else f"http://{host}"


class OllamaProvider(Provider):
    name = "ollama"
    key_env = None
    known_models = ("llama3.2:1b", "llama3.2", "qwen2.5:0.5b", "gemma3:1b")
    supports_confidence = True

    def _make_client(self) -> Any:
        import httpx
        import ollama

        return ollama.AsyncClient(
            host=ollama_host(),
            timeout=httpx.Timeout(None, connect=self.timeouts.connect),
            # the SDK's ResponseError carries no headers: keep them for retry-after
            event_hooks={"response": [self._remember_error_headers]},
        )

    _error_headers: Any = None

    async def _remember_error_headers(self, response: Any) -> None:
        if response.status_code >= 400:
            self._error_headers = response.headers

    def _params(self, request: ChatRequest) -> dict[str, Any]:
        messages = self.message_dicts(request, with_system=True)
        options: dict[str, Any] = {"num_predict": request.max_tokens}
        if request.temperature is not None:
            options["temperature"] = request.temperature
        params: dict[str, Any] = {"model": self.model, "messages": messages, "stream": True, "options": options}
        if request.confidence:
            params["logprobs"] = True
        return params

    async def open(self, request: ChatRequest) -> Opened:
        client = self.client
        try:
            parts = await client.chat(**self._params(request))  # sent on the first read
        except Exception as exc:
            self.fail(exc, started=False)
        return Opened(parts, _convert, parts.aclose)

    def translate(self, exc: BaseException, started: bool) -> StreamchatError | None:
        import ollama

        if isinstance(exc, ollama.ResponseError):
            headers = self._error_headers if exc.status_code >= 400 else None
            self._error_headers = None
            return _errors.from_status(self.name, exc.status_code, detail=exc.error, model=self.model,
                                       headers=headers)
        if _errors.is_transport_error(exc):
            return _errors.connection_lost(self.name, exc, ollama_host(), connecting=not started)
        return None

    @classmethod
    def endpoint(cls) -> str:
        return ollama_host()

    @classmethod
    async def status(cls, timeout: float = 0.5) -> ProviderStatus:
        """Reachable when ``GET /api/tags`` answers within ``timeout``; lists the pulled models."""
        import httpx

        host = ollama_host()
        try:
            async with httpx.AsyncClient(timeout=timeout) as client:
                response = await client.get(f"{host}/api/tags")
                response.raise_for_status()
                models = [m.get("name") or m.get("model") for m in response.json().get("models", [])]
        except Exception as exc:  # any failure means: not usable right now
            reason = "no answer" if "Timeout" in type(exc).__name__ else "not reachable"
            return ProviderStatus(cls.name, False, f"server {reason} at {host} (ollama serve; OLLAMA_HOST)",
                                  list(cls.known_models), host)
        pulled = [m for m in models if m]
        if not pulled:
            return ProviderStatus(cls.name, True, f"server up at {host}, no model pulled (ollama pull llama3.2:1b)", [], host)
        detail = f"server up at {host}, {len(pulled)} model{'s' if len(pulled) != 1 else ''} pulled"
        return ProviderStatus(cls.name, True, detail, pulled, host)


def _convert(part: Any) -> str | Chunk | None:
    """One NDJSON line (``ChatResponse``): its text, or a Chunk when it carries more."""
    text = part.message.content if part.message is not None else None
    if not part.logprobs and not part.done:
        return text
    confidence = None
    if part.logprobs:
        values = [lp.logprob for lp in part.logprobs]
        confidence = min(1.0, math.exp(sum(values) / len(values)))
    if part.done:
        usage = None
        if part.prompt_eval_count is not None or part.eval_count is not None:
            usage = {"input_tokens": part.prompt_eval_count or 0, "output_tokens": part.eval_count or 0}
        return Chunk(text=text or "", confidence=confidence, usage=usage, finish_reason=part.done_reason or "stop")
    return Chunk(text=text, confidence=confidence) if text else None
