"""The history recorder on a real bus, real streams (the official SDKs against the loopback wire
server) and a real SQLite file: every way an answer ends is recorded with its partial, the text is
written while the answer grows, a locked database never slows a stream, and an answer is resumed
from the store alone (as after a restart)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from streamchat.core.bus import EventBus
from streamchat.core.errors import ConnectionLostError, OverloadedError, ProviderError
from streamchat.core.events import Token
from streamchat.core.request import ChatRequest, Chunk, Message
from streamchat.core.stream import Stream, continue_stream
from streamchat.history import HistoryLockedError, HistoryRecorder, HistoryStore
from streamchat.providers import create_provider
from streamchat.providers.base import Provider, Timeouts
from streamchat.testing.wire import CUTOFF_CONTINUATION, CUTOFF_FIRST, NORMAL_TOKENS, WireServer

from test_history_store import hold_lock, release

PROVIDERS = ("anthropic", "openai", "ollama")
TIMEOUTS = Timeouts(connect=5, first_token=20, idle=20, total=30)
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def make_provider() -> AsyncIterator[Any]:
    made: list[Provider] = []

    def make(model_id: str) -> Provider:
        provider = create_provider(model_id, timeouts=TIMEOUTS)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()


@pytest.fixture
async def history(provider_env: dict, tmp_path: Path) -> AsyncIterator[tuple[HistoryStore, HistoryRecorder, EventBus]]:
    store = HistoryStore()  # in STREAMCHAT_HOME, which provider_env put in tmp_path
    assert store.path.parent == Path(provider_env["STREAMCHAT_HOME"])
    bus = EventBus()
    recorder = HistoryRecorder(store).attach(bus)
    yield store, recorder, bus
    await recorder.aclose()
    store.close()


def new_question(store: HistoryStore, prompt: str = "hi") -> int:
    cid = store.create_conversation(prompt)
    store.add_message(cid, "user", prompt)
    return cid


def answer_of(store: HistoryStore, cid: int):
    (answer,) = [m for m in store.messages(cid) if m.role == "assistant"]
    return answer


EXPECTED = {  # scenario -> (state, error kind by provider)
    "normal": ("complete", None),
    "error-mid": ("failed", {"anthropic": OverloadedError.kind, "openai": ProviderError.kind,
                             "ollama": ProviderError.kind}),
    "drop-mid": ("failed", ConnectionLostError.kind),
}


@pytest.mark.parametrize("scenario", list(EXPECTED))
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_every_ending_is_recorded_with_its_partial(history: Any, make_provider: Any, server: WireServer,
                                                         provider: str, scenario: str) -> None:
    store, recorder, bus = history
    cid = new_question(store)
    stream = Stream(make_provider(f"{provider}:{scenario}"), ChatRequest.from_prompt("hi"), bus=bus)
    message_id = recorder.track(stream, conversation_id=cid)
    await stream.run()
    await recorder.flush()

    state, kinds = EXPECTED[scenario]
    kind = kinds.get(provider) if isinstance(kinds, dict) else kinds
    answer = answer_of(store, cid)
    assert answer.id == message_id.result(0)
    assert answer.text == stream.text == "".join(server.tokens_for(scenario))
    assert (answer.state, answer.error_kind, answer.model_id) == (state, kind, f"{provider}:{scenario}")
    if state == "failed":
        assert answer.error_message == str(stream.error) and answer.resumable
    else:
        assert answer.finish_reason and answer.error_message is None
    (record,) = store.streams(message_id=answer.id)
    stats = stream.stats()
    assert (record.state, record.error_kind, record.tokens, record.chars) == (state, kind, stats.tokens, len(stream.text))
    assert record.ttft == stats.ttft and record.tokens_per_s == stats.tokens_per_s and record.ended_at
    assert store.conversation(cid).last_state == state


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_cancel_keeps_the_partial(history: Any, make_provider: Any, server: WireServer, provider: str) -> None:
    store, recorder, bus = history
    server.slow_tokens = 100  # 4 s at 25 tokens/s: cancelled long before the end
    cid = new_question(store)
    stream = Stream(make_provider(f"{provider}:slow"), ChatRequest.from_prompt("hi"), bus=bus)
    recorder.track(stream, conversation_id=cid)
    seen: list[int] = []

    class CancelAfterFive:
        def on_token_received(self, text: str, index: int) -> None:
            seen.append(index)
            if len(seen) == 5:
                stream.cancel()

    bus.register(CancelAfterFive(), stream_id=stream.id)
    await stream.run()
    await recorder.flush()
    answer = answer_of(store, cid)
    full = "".join(server.tokens_for("slow"))
    assert stream.state == "cancelled" and answer.state == "cancelled" and answer.resumable
    assert answer.text == stream.text and answer.text and full.startswith(answer.text) and answer.text != full
    assert store.streams(message_id=answer.id)[0].state == "cancelled"


async def test_the_text_is_written_while_the_answer_grows(history: Any, make_provider: Any,
                                                          server: WireServer) -> None:
    store, recorder, bus = history
    server.slow_tokens = 40  # 1.6 s
    cid = new_question(store)
    stream = Stream(make_provider("ollama:slow"), ChatRequest.from_prompt("hi"), bus=bus)
    recorder.track(stream, conversation_id=cid)
    said: list[tuple[float, int]] = []  # (when, length of the answer so far) at every token

    class Clock:
        def on_token_received(self, text: str, index: int) -> None:
            said.append((time.monotonic(), len(stream.text)))

    bus.register(Clock(), stream_id=stream.id)
    task = asyncio.ensure_future(stream.run())
    reader = HistoryStore(store.path)  # another connection, as another process would read
    seen: list[tuple[float, str]] = []
    try:
        while not task.done():
            await asyncio.sleep(0.05)
            answers = [m for m in await asyncio.to_thread(reader.messages, cid) if m.role == "assistant"]
            if answers:
                seen.append((time.monotonic(), answers[0].text))
                assert answers[0].state in ("streaming", "complete")
    finally:
        await task
        reader.close()
    full = "".join(server.tokens_for("slow"))
    growing = sorted({len(text) for _, text in seen if len(text) < len(full)})
    assert len(growing) >= 5, f"the stored answer grew in {len(growing)} steps: not as it streamed"
    for when, text in seen:
        assert full.startswith(text)
        # everything the stream had said a second earlier was already stored (flushes: every 0.1 s;
        # the bound is loose for a loaded machine)
        earlier = [n for t, n in said if t <= when - 1.0]
        assert len(text) >= (earlier[-1] if earlier else 0), (when, len(text), said)


async def test_a_locked_database_never_slows_the_stream(history: Any, make_provider: Any, server: WireServer) -> None:
    store, _, bus = history
    # Each write waits up to 1 s for the lock, then is retried: had a write ever been made on the
    # stream's side, the stream would take seconds longer for each of them.
    recorder = HistoryRecorder(store, timeout=1.0).attach(bus)
    server.slow_tokens = 25  # one second of streaming
    cid = new_question(store)
    holder = hold_lock(store.path, "write")  # another process holds the write lock all along
    try:
        stream = Stream(make_provider("ollama:slow"), ChatRequest.from_prompt("hi"), bus=bus)
        recorder.track(stream, conversation_id=cid)
        started = time.monotonic()
        await stream.run()
        took = time.monotonic() - started
        assert stream.state == "completed"
        assert took < 5, f"the stream took {took:.2f} s while the history was locked"
        deadline = time.monotonic() + 10
        while recorder.error is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert isinstance(recorder.error, HistoryLockedError)
        assert store.messages(cid)[-1].role == "user"  # nothing could be written yet
    finally:
        release(holder)
    await asyncio.wait_for(recorder.flush(), 20)  # once the lock is gone, everything is written
    await recorder.aclose()
    answer = answer_of(store, cid)
    assert (answer.state, answer.text) == ("complete", "".join(server.tokens_for("slow")))
    assert recorder.error is None


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_resume_from_the_store_alone(history: Any, make_provider: Any, server: WireServer,
                                           provider: str) -> None:
    """The cut-off answer is continued from what the store holds (as after a restart): the
    continuation request carries the partial, and the stored answer becomes the joined one."""
    store, recorder, bus = history
    model = f"{provider}:cutoff"
    cid = new_question(store, "Primary colours of light?")
    first = Stream(make_provider(model), ChatRequest.from_prompt("Primary colours of light?"), bus=bus)
    recorder.track(first, conversation_id=cid)
    await first.run()
    await recorder.flush()
    assert first.state == "failed"

    info = store.resume_info(cid)  # nothing from `first` is used from here on
    assert (info.partial, info.model_id, info.message.state) == (CUTOFF_FIRST, model, "failed")
    assert info.context == (Message("user", "Primary colours of light?"),)
    follow = continue_stream(make_provider(info.model_id), ChatRequest(messages=info.context), info.partial, bus=bus)
    recorder.track(follow, message_id=info.message.id)
    await follow.run()
    await recorder.flush()

    assert follow.state == "completed"
    answer = answer_of(store, cid)
    assert (answer.id, answer.state, answer.text) == (info.message.id, "complete", CUTOFF_FIRST + CUTOFF_CONTINUATION)
    assert answer.error_kind is None and answer.error_message is None
    records = store.streams(message_id=answer.id)
    assert [(r.continues, r.state) for r in records] == [(False, "failed"), (True, "complete")]
    requests = [r for r in server.requests if isinstance(r.body, dict) and r.body.get("model") == "cutoff"]
    assert len(requests) == 2
    assert any(m.get("role") == "assistant" and m.get("content") == CUTOFF_FIRST for m in requests[1].body["messages"])


class _Truncating(Provider):
    """Says its answer and then that it stopped at the token limit (as every provider can)."""

    name = "truncating"

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        for text in NORMAL_TOKENS[:4]:
            yield Chunk(text=text)
        yield Chunk(finish_reason="length")


async def test_an_answer_stopped_by_the_token_limit_is_cut_off(history: Any) -> None:
    store, recorder, bus = history
    cid = new_question(store)
    stream = Stream(_Truncating("x"), ChatRequest.from_prompt("hi"), bus=bus)
    recorder.track(stream, conversation_id=cid)
    await stream.run()
    await recorder.flush()
    answer = answer_of(store, cid)
    assert stream.state == "completed"
    assert (answer.state, answer.finish_reason, answer.text) == ("cut_off", "length", "".join(NORMAL_TOKENS[:4]))
    assert "token limit" in answer.error_message and store.resume_info(cid).message.id == answer.id


async def test_only_tracked_streams_are_recorded(history: Any) -> None:
    store, recorder, bus = history
    cid = new_question(store)
    tracked = Stream(_Truncating("x"), ChatRequest.from_prompt("hi"), bus=bus)
    other = Stream(_Truncating("x"), ChatRequest.from_prompt("hi"), bus=bus)
    recorder.track(tracked, conversation_id=cid)
    await asyncio.gather(tracked.run(), other.run())
    await recorder.flush()
    assert len(store.messages(cid)) == 2 and [s.stream_id for s in store.streams()] == [tracked.id]


async def test_recording_costs_the_publisher_next_to_nothing(history: Any) -> None:
    """The handler only queues: publishing a token with the recorder on the bus costs about what
    it costs without it (the database work happens in the writer thread), and nothing is lost."""
    store, recorder, bus = history
    cid = new_question(store)
    stream = Stream(_Truncating("x"), ChatRequest.from_prompt("hi"), bus=bus)
    recorder.track(stream, conversation_id=cid)
    n = 5_000

    async def per_token() -> float:
        tokens = [Token(stream_id=stream.id, text="x", index=i) for i in range(n)]
        started = time.perf_counter()
        for token in tokens:
            await bus.publish(token)
        return (time.perf_counter() - started) / n

    with_recorder = min([await per_token() for _ in range(3)])
    recorder.detach()
    without = min([await per_token() for _ in range(3)])
    assert with_recorder - without < 10e-6, (with_recorder, without)
    await recorder.flush()
    assert answer_of(store, cid).text == "x" * (3 * n)  # every token reached the database
    assert bus.handler_errors == 0


async def test_close_gives_up_on_a_history_that_stays_locked(history: Any) -> None:
    """Closing never hangs: what cannot be written in time is reported, not waited for forever."""
    store, _, bus = history
    cid = new_question(store)
    holder = hold_lock(store.path, "write")
    try:
        recorder = HistoryRecorder(store, timeout=0.1).attach(bus)
        message_id = recorder.track(Stream(_Truncating("x"), ChatRequest.from_prompt("hi"), bus=bus),
                                    conversation_id=cid)
        started = time.monotonic()
        await recorder.aclose(timeout=0.5)
        assert time.monotonic() - started < 5
    finally:
        release(holder)
    assert isinstance(recorder.error, HistoryLockedError)
    with pytest.raises(HistoryLockedError):
        message_id.result(0)
    late = recorder.track(Stream(_Truncating("x"), ChatRequest.from_prompt("hi"), bus=bus), conversation_id=cid)
    with pytest.raises(HistoryLockedError):  # a closed recorder refuses at once
        late.result(0)
    assert [m.role for m in store.messages(cid)] == ["user"]
