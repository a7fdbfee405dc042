"""What a provider is asked (:class:`ChatRequest`) and what it streams back (:class:`Chunk`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

__all__ = ["Message", "ChatRequest", "Chunk", "join_continuation"]

Role = Literal["user", "assistant"]


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A provider-neutral chat request. ``system`` is separate (Anthropic wants it top-level).

    A final ``assistant`` message is a *prefill*: the model is asked to continue it.
    """

    messages: tuple[Message, ...]
    system: str | None = None
    max_tokens: int = 1024
    temperature: float | None = None
    #: ask for per-token probabilities where the provider can give them (OpenAI logprobs, local)
    confidence: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_prompt(cls, prompt: str, **kw: Any) -> "ChatRequest":
        return cls(messages=(Message("user", prompt),), **kw)

    @property
    def prefill(self) -> str | None:
        if self.messages and self.messages[-1].role == "assistant":
            return self.messages[-1].content
        return None

    def with_messages(self, messages: tuple[Message, ...]) -> "ChatRequest":
        return replace(self, messages=messages)


@dataclass(slots=True)
class Chunk:
    """One piece of a provider stream, already normalised by the adapter.

    ``text`` may be empty for chunks that only carry ``usage`` or ``finish_reason``. ``count`` is
    how many provider tokens (stream events) the text holds: adapters merge tokens that the SDK had
    already received into one chunk (see ``providers.base.merge_buffered``).
    """

    text: str = ""
    confidence: float | None = None
    usage: dict[str, int] | None = None
    finish_reason: str | None = None
    count: int = 1


def join_continuation(partial: str, continuation: str, *, min_overlap: int = 12) -> str:
    """Join a continuation to the partial answer it continues.

    Models asked to continue sometimes repeat the last words of the partial; when the continuation
    starts with a suffix of the partial at least ``min_overlap`` characters long, it is dropped once.
    """
    if not partial:
        return continuation
    if not continuation:
        return partial
    limit = min(len(partial), len(continuation), 400)
    for size in range(limit, min_overlap - 1, -1):
        if partial.endswith(continuation[:size]):
            return partial + continuation[size:]
    return partial + continuation
