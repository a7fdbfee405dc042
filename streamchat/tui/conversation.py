"""What the chat view shows, as plain data (no Textual): turns of one prompt and one answer per lane.

Each lane talks to one model and keeps its own history: the context of a lane's next request is
every earlier prompt with *that lane's* answer (a cut-off or failed answer counts with whatever
arrived of it; a turn whose answer is empty is left out, so roles keep alternating).
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..core.request import ChatRequest, Message

if TYPE_CHECKING:
    from ..core.errors import StreamchatError
    from ..core.stream import Stream

__all__ = ["CUT_STATES", "LIMIT_REASONS", "LIVE_STATES", "Answer", "Conversation", "Turn"]

#: a stream in one of these is still running
LIVE_STATES = frozenset({"pending", "active", "paused"})
#: an answer in one of these can be continued (``c``)
CUT_STATES = frozenset({"cancelled", "failed"})
#: finish reasons that mean "stopped at the token limit" (Anthropic, OpenAI/Ollama/local)
LIMIT_REASONS = frozenset({"max_tokens", "length"})


@dataclass(eq=False)
class Answer:
    """One lane's answer to one prompt. ``stream`` is the latest stream that wrote to it (the first
    one, a continuation of it, or a regeneration); ``text`` is the answer as it stands."""

    lane: int
    request: ChatRequest
    stream: "Stream | None" = None
    text: str = ""
    state: str = "pending"  # pending | active | paused | completed | cancelled | failed | skipped
    error: "StreamchatError | None" = None
    finish_reason: str | None = None
    #: the answer's message in the history: its id, or a future of it while the recorder starts it
    message: "int | concurrent.futures.Future[int] | None" = None

    @property
    def live(self) -> bool:
        return self.stream is not None and not self.stream.done

    @property
    def at_limit(self) -> bool:
        """Completed, but only because it reached the token limit."""
        return self.state == "completed" and self.finish_reason in LIMIT_REASONS

    @property
    def cut_off(self) -> bool:
        """Stopped, failed or cut at the token limit: ``c`` can continue it."""
        return not self.live and (self.state in CUT_STATES or self.at_limit)


@dataclass(eq=False)
class Turn:
    prompt: str
    answers: list[Answer] = field(default_factory=list)

    @property
    def live(self) -> bool:
        return any(a.live for a in self.answers)


class Conversation:
    """The turns so far, and the request each lane sends next."""

    def __init__(self, lanes: int) -> None:
        self.lanes = lanes
        self.turns: list[Turn] = []
        #: its id in the history (None until its first prompt is recorded, or without history)
        self.id: int | None = None
        #: its own system prompt (a conversation reopened from the history); None: the app's
        self.system: str | None = None

    @property
    def last(self) -> Turn | None:
        return self.turns[-1] if self.turns else None

    def context(self, lane: int, upto: int | None = None) -> tuple[Message, ...]:
        """The earlier turns (before index ``upto``) as messages for ``lane``."""
        messages: list[Message] = []
        for turn in self.turns[:upto]:
            answer = turn.answers[lane]
            text = answer.text.rstrip()
            if text:
                messages.append(Message("user", turn.prompt))
                messages.append(Message("assistant", text))
        return tuple(messages)

    def best_context(self, upto: int | None = None) -> tuple[Message, ...]:
        """The earlier turns (before index ``upto``) with one answer each — the last lane's that
        completed, else the longest — as a pipeline's stages answer one question together."""
        messages: list[Message] = []
        for turn in self.turns[:upto]:
            done = [a for a in turn.answers if a.state == "completed" and a.text.strip()]
            texts = [a.text for a in done] or sorted((a.text for a in turn.answers), key=len)
            text = texts[-1].rstrip() if texts else ""
            if text:
                messages.append(Message("user", turn.prompt))
                messages.append(Message("assistant", text))
        return tuple(messages)

    def request(self, lane: int, prompt: str, base: ChatRequest) -> ChatRequest:
        """The request for ``prompt`` in ``lane``: the lane's context, then the prompt. ``base``
        gives everything else (system prompt, max tokens, confidence)."""
        return base.with_messages(self.context(lane) + (Message("user", prompt),))

    def clear(self) -> None:
        self.turns.clear()
        self.id = None
        self.system = None
