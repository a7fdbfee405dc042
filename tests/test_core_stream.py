"""The stream controller over real loopback HTTP, parsed by the official SDKs.

Pause must really stop the wire, cancel must keep the partial and close the response, continue must
send the partial back, timeouts and retries must behave — for every provider.
"""

import asyncio
import time

import pytest

from streamchat.core.bus import EventBus
from streamchat.core.errors import ConnectionLostError, ProviderError, StreamTimeoutError
from streamchat.core.events import Cancelled, Completed, Failed, Paused, Resumed, Retrying, StreamStarted, Token
from streamchat.core.request import ChatRequest
from streamchat.core.stream import BufferPolicy, RetryPolicy, Stream, continue_stream
from streamchat.providers import create_provider
from streamchat.providers.base import Timeouts
from streamchat.providers.openai import CONTINUE_INSTRUCTION
from streamchat.testing.wire import CUTOFF_CONTINUATION, CUTOFF_FIRST

PROVIDERS = ["anthropic", "openai", "ollama"]


@pytest.fixture(params=PROVIDERS)
def provider_name(request, provider_env):
    return request.param


def make(provider_name, scenario, *, timeouts=None, **kw):
    provider = create_provider(f"{provider_name}:{scenario}", timeouts=timeouts)
    provider.prepare()  # import the SDK now (seconds, cold), so waits below time only the stream
    bus = kw.pop("bus", EventBus())
    request = kw.pop("request", ChatRequest.from_prompt("hi"))
    return Stream(provider, request, bus=bus, timeouts=timeouts, **kw), bus


async def wait_for(predicate, timeout=5.0, interval=0.01):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)


async def test_pause_stops_reading_the_wire_and_resume_finishes(server, provider_name):
    # 16 MB: far more than socket buffers (the client's grows while it reads fast — Linux tunes it up
    # to tcp_rmem's maximum — and held 2.3 MB of a 6.5 MB answer on a loaded CI machine)
    server.big_tokens, server.big_token_size = 1000, 16384
    total = 1000 * 16384
    stream, bus = make(provider_name, "big")
    sub = bus.subscribe(stream_id=stream.id)
    task = stream.start()
    await wait_for(lambda: stream.stats().tokens >= 3)
    assert stream.pause()
    assert stream.state == "paused"
    paused_tokens = stream.stats().tokens
    # The kernel's socket buffers fill up, then the server's writes block for good: the client has
    # stopped reading the HTTP body.
    sent = await settled(lambda: server.responses()[-1].bytes_sent, quiet=0.3)
    progress = server.responses()[-1]
    assert progress.writing_blocked and not progress.finished
    await asyncio.sleep(0.4)
    assert server.responses()[-1].bytes_sent == sent
    assert stream.stats().tokens == paused_tokens  # nothing moves while paused
    assert sent < total / 3
    assert stream.resume()
    await asyncio.wait_for(task, 30)
    assert stream.state == "completed"
    assert len(stream.text) == total
    kinds = [type(e) for e in sub.drain()]
    assert kinds.index(Paused) < kinds.index(Resumed) and kinds[-1] is Completed
    tokens_between = kinds[kinds.index(Paused):kinds.index(Resumed)].count(Token)
    assert tokens_between == 0
    assert stream.stats().paused_s >= 0.7


async def settled(read, quiet, timeout=10.0):
    """Wait until ``read()`` has not changed for ``quiet`` seconds; return its value."""
    deadline = time.monotonic() + timeout
    value, since = read(), time.monotonic()
    while time.monotonic() - since < quiet:
        if time.monotonic() > deadline:
            raise AssertionError("value never settled")
        await asyncio.sleep(0.02)
        now = read()
        if now != value:
            value, since = now, time.monotonic()
    return value


async def test_cancel_keeps_the_partial_and_closes_the_response(server, provider_name):
    stream, bus = make(provider_name, "slow")
    sub = bus.subscribe(stream_id=stream.id)
    task = stream.start()
    await wait_for(lambda: stream.stats().tokens >= 5)
    assert stream.cancel()
    snapshot = await asyncio.wait_for(task, 5)
    events = [e async for e in sub]
    end = events[-1]
    assert isinstance(end, Cancelled) and stream.state == "cancelled" == snapshot.state
    streamed = "".join(e.text for e in events if isinstance(e, Token))
    assert end.partial == streamed == stream.text and len(streamed) > 0
    assert server.tokens_for("slow")[0] in streamed
    await wait_for(lambda: server.responses()[-1].client_gone or server.responses()[-1].finished)
    assert not stream.cancel()  # nothing left to cancel


async def test_cancel_while_paused_ends_at_once(server, provider_name):
    stream, _ = make(provider_name, "slow")
    task = stream.start()
    await wait_for(lambda: stream.stats().tokens >= 2)
    stream.pause()
    stream.cancel()
    await asyncio.wait_for(task, 2)
    assert stream.state == "cancelled" and stream.text


async def test_cancel_from_outside_still_keeps_the_partial(server, provider_name):
    stream, bus = make(provider_name, "slow")
    sub = bus.subscribe(stream_id=stream.id)
    task = asyncio.ensure_future(stream.run())
    await wait_for(lambda: stream.stats().tokens >= 3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    events = [e async for e in sub]
    assert isinstance(events[-1], Cancelled) and events[-1].partial == stream.text != ""


async def test_continue_sends_the_partial_back_and_joins_the_answer(server, provider_name):
    first, bus = make(provider_name, "cutoff")
    await first.run()
    assert first.state == "failed" and isinstance(first.error, ConnectionLostError)
    assert first.text == CUTOFF_FIRST

    second = first.continuation()
    sub = bus.subscribe(stream_id=second.id)
    await second.run()
    assert second.state == "completed"
    assert second.text == CUTOFF_FIRST + CUTOFF_CONTINUATION
    events = [e async for e in sub]
    assert events[0].continues == CUTOFF_FIRST and events[-1].text == CUTOFF_FIRST + CUTOFF_CONTINUATION

    body = server.requests[-1].body
    messages = body["messages"]
    if provider_name == "openai":
        assert messages[-2] == {"role": "assistant", "content": CUTOFF_FIRST}
        assert messages[-1] == {"role": "user", "content": CONTINUE_INSTRUCTION}
    else:  # prefill: the model continues the final assistant message
        assert messages[-1] == {"role": "assistant", "content": CUTOFF_FIRST.rstrip()}
        assert messages[-2]["role"] == "user"


async def test_continue_strips_trailing_whitespace_from_the_prefill(server, provider_env):
    provider = create_provider("anthropic:cutoff")
    stream = continue_stream(provider, ChatRequest.from_prompt("hi"), CUTOFF_FIRST + " \n")
    await stream.run()
    assert server.requests[-1].body["messages"][-1]["content"] == CUTOFF_FIRST
    assert stream.text == CUTOFF_FIRST + CUTOFF_CONTINUATION


async def test_handler_that_raises_does_not_break_the_stream(server, provider_name):
    class Bad:
        def on_token_received(self, token, index):
            raise RuntimeError("handler bug")

    class Good:
        def __init__(self):
            self.text = []
            self.done = None

        def on_token_received(self, token, index):
            self.text.append(token)

        def on_stream_complete(self, full):
            self.done = full

    stream, bus = make(provider_name, "normal")
    good = Good()
    bus.register(Bad())
    bus.register(good)
    await stream.run()
    expected = "".join(server.tokens_for("normal"))
    assert stream.state == "completed" and good.done == expected == "".join(good.text)
    assert bus.handler_errors == len(good.text)


async def test_buffering_by_count(server, provider_name):
    stream, bus = make(provider_name, "long", buffer=BufferPolicy(max_tokens=50, max_ms=60_000))
    sub = bus.subscribe(stream_id=stream.id, policy="block")
    task = stream.start()
    tokens = [e async for e in sub if isinstance(e, Token)]
    await task
    assert "".join(t.text for t in tokens) == "".join(server.tokens_for("long"))
    # adapters hand over bursts already merged, so a group can pass 50 — but never falls short
    assert all(t.count >= 50 for t in tokens[:-1]) and len(tokens) <= 2000 // 50 + 1
    assert [t.index for t in tokens] == [sum(t.count for t in tokens[:i]) for i in range(len(tokens))]
    assert sum(t.count for t in tokens) == 2000


async def test_a_long_burst_yields_to_the_event_loop(server, provider_env, monkeypatch):
    """A firehose arrives in big socket reads whose events the SDK hands over without waiting; the
    read loop must still let other tasks (a key press, a frame) run every YIELD_EVERY_S. With the
    slice at 0 every buffered event yields, so a ticker task runs between any two tokens."""
    from streamchat.core import stream as stream_module

    monkeypatch.setattr(stream_module, "YIELD_EVERY_S", 0.0)
    server.firehose_tokens = 3000
    stream, bus = make("openai", "firehose", buffer=BufferPolicy(merge=False))
    ticks = 0
    seen: list[int] = []

    class Note:
        def on_event(self, event):
            if isinstance(event, Token):
                seen.append(ticks)

    bus.register(Note())

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    tick_task = asyncio.ensure_future(ticker())
    try:
        await stream.run()
    finally:
        tick_task.cancel()
    assert stream.state == "completed" and len(seen) == 3000
    assert all(b > a for a, b in zip(seen, seen[1:]))  # the loop turned between every two tokens


async def test_the_sdk_is_prepared_off_the_event_loop_and_a_cancel_then_sends_nothing(server, provider_env):
    """An unprepared provider (its SDK maybe not imported yet: seconds, cold) is prepared in a thread,
    so other tasks run meanwhile; a cancel in that time ends the stream at once, with nothing sent."""
    provider = create_provider("anthropic:normal")
    assert not provider.prepared
    stream = Stream(provider, ChatRequest.from_prompt("hi"))
    sub = stream.bus.subscribe(stream_id=stream.id)
    task = stream.start()
    await asyncio.sleep(0)  # the stream task is now waiting for prepare() in its thread
    assert stream.state == "pending" and not task.done()
    assert stream.cancel()
    await asyncio.wait_for(task, 30)
    assert stream.state == "cancelled"  # (the import thread itself finishes in the background)
    assert [type(e) for e in sub.drain()] == [Cancelled]
    assert server.requests == []


async def test_buffering_by_time_flushes_a_slow_stream(server, provider_env):
    server.slow_rate, server.slow_tokens = 40, 30
    stream, bus = make("openai", "slow", buffer=BufferPolicy(max_tokens=1000, max_ms=100))
    sub = bus.subscribe(stream_id=stream.id, policy="block")
    task = stream.start()
    tokens = [e async for e in sub if isinstance(e, Token)]
    await task
    assert "".join(t.text for t in tokens) == "".join(server.tokens_for("slow"))
    # 30 tokens over ~0.75 s in groups of ~100 ms: several groups, each of several tokens
    assert 3 <= len(tokens) <= 15 and max(t.count for t in tokens) >= 3


async def test_first_token_timeout(server, provider_name):
    stream, _ = make(provider_name, "stall-start", timeouts=Timeouts(first_token=0.5, idle=5))
    started = time.monotonic()
    await stream.run()
    assert time.monotonic() - started < 2.5
    assert isinstance(stream.error, StreamTimeoutError) and stream.error.which == "first_token"
    assert stream.text == ""


async def test_idle_timeout_keeps_the_partial(server, provider_name):
    stream, bus = make(provider_name, "stall", timeouts=Timeouts(first_token=5, idle=0.5))
    sub = bus.subscribe(stream_id=stream.id)
    started = time.monotonic()
    await stream.run()
    assert time.monotonic() - started < 2.0  # the idle limit, not the longer first-token one
    events = [e async for e in sub]
    assert isinstance(stream.error, StreamTimeoutError) and stream.error.which == "idle"
    assert isinstance(events[-1], Failed) and events[-1].partial == stream.text
    assert stream.text == "".join(server.tokens_for("stall"))


async def test_total_timeout_and_paused_time_does_not_count(server, provider_env):
    server.slow_rate, server.slow_tokens = 20, 200  # 10 s of answer
    stream, _ = make("ollama", "slow", timeouts=Timeouts(total=1.0))
    task = stream.start()
    await wait_for(lambda: stream.stats().tokens >= 2)
    stream.pause()
    await asyncio.sleep(1.2)  # longer than the total: but paused time is not counted
    assert stream.state == "paused"
    stream.resume()
    await asyncio.wait_for(task, 3)
    assert isinstance(stream.error, StreamTimeoutError) and stream.error.which == "total"
    assert stream.stats().elapsed == pytest.approx(1.0, abs=0.25)
    assert stream.text  # partial kept


async def test_rate_limit_is_retried_after_retry_after(server, provider_name):
    server.retry_after = "0.3"
    stream, bus = make(provider_name, "429")
    sub = bus.subscribe(stream_id=stream.id)
    await stream.run()
    events = [e async for e in sub]
    retries = [e for e in events if isinstance(e, Retrying)]
    assert stream.state == "completed" and stream.text == "".join(server.tokens_for("normal"))
    if provider_name == "ollama":  # the ollama SDK hides response headers: our own backoff applies
        assert len(retries) == 1 and 0.3 <= retries[0].delay <= 0.5
    else:
        assert [r.delay for r in retries] == [pytest.approx(0.3)]
    starts = [e for e in events if isinstance(e, StreamStarted)]
    assert [s.attempt for s in starts] == [1, 2]
    assert starts[1].t - retries[0].t >= retries[0].delay * 0.95
    assert len([r for r in server.requests if r.scenario == "429"]) == 2
    assert stream.stats().retries == 1


async def test_overload_is_retried_with_backoff(server, provider_name):
    stream, bus = make(provider_name, "overload-once", retry=RetryPolicy(base_delay=0.05))
    sub = bus.subscribe(stream_id=stream.id)
    await stream.run()
    retries = [e for e in [e async for e in sub] if isinstance(e, Retrying)]
    assert stream.state == "completed" and len(retries) == 1
    assert "overloaded" in retries[0].reason


async def test_no_retry_after_the_first_token(server, provider_name):
    stream, bus = make(provider_name, "error-mid", retry=RetryPolicy(base_delay=0.01))
    sub = bus.subscribe(stream_id=stream.id)
    await stream.run()
    events = [e async for e in sub]
    assert not any(isinstance(e, Retrying) for e in events)
    assert isinstance(stream.error, ProviderError) and stream.text
    assert len([r for r in server.requests if r.scenario == "error-mid"]) == 1


async def test_retries_give_up_after_max_attempts(server, provider_env, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:9")  # nothing listens there
    stream, bus = make("ollama", "normal", retry=RetryPolicy(max_attempts=3, base_delay=0.01))
    sub = bus.subscribe(stream_id=stream.id)
    await stream.run()
    events = [e async for e in sub]
    assert isinstance(stream.error, ConnectionLostError)
    assert len([e for e in events if isinstance(e, Retrying)]) == 2
    assert "could not connect to ollama" in str(stream.error)


async def test_time_to_first_token_counts_the_wait_for_the_response(server, provider_name):
    """The first token often arrives in the same read as the response head, while the SDK opens
    the response: its time is still when it arrived, not when the request was sent."""
    server.head_delay = 0.3
    stream, _ = make(provider_name, "normal")
    await stream.run()
    assert stream.state == "completed"
    assert 0.3 <= stream.stats().ttft < 5


async def test_status_reports_live_figures(server, provider_name):
    stream, _ = make(provider_name, "slow")
    assert stream.status().state == "pending"
    task = stream.start()
    await wait_for(lambda: stream.stats().tokens >= 5)
    status = stream.status()
    assert status.state == "active" and status.provider == provider_name and status.model == "slow"
    assert status.stats.ttft is not None and status.stats.ttft > 0
    assert status.stats.tokens_per_s and 5 < status.stats.tokens_per_s < 200
    assert status.stats.chars == len(stream.text)
    stream.pause()
    assert stream.status().state == "paused"
    stream.cancel()
    await task
    assert stream.status().state == "cancelled"


async def test_missing_key_fails_clearly_without_a_request(server, provider_env, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    stream = Stream(create_provider("openai:normal"), ChatRequest.from_prompt("hi"))
    await stream.run()
    assert stream.state == "failed" and "OPENAI_API_KEY" in str(stream.error)
    assert not server.requests


async def test_snapshot_agrees_with_folding_the_events(server, provider_name):
    from streamchat.core.events import accumulate

    stream, bus = make(provider_name, "error-mid")
    sub = bus.subscribe(stream_id=stream.id, policy="block")
    task = stream.start()
    folded = None
    async for event in sub:
        folded = accumulate(folded, event)
    await task
    live = stream.snapshot
    assert (folded.text, folded.state, folded.tokens, folded.provider, folded.model) == (
        live.text, live.state, live.tokens, live.provider, live.model)
    assert type(folded.error) is type(live.error) and folded.state == "failed"


async def test_a_steady_stream_gives_one_event_per_token(server, provider_name):
    server.slow_rate, server.slow_tokens = 50, 20
    stream, bus = make(provider_name, "slow")
    sub = bus.subscribe(stream_id=stream.id, policy="block")
    task = stream.start()
    tokens = [e async for e in sub if isinstance(e, Token)]
    await task
    assert [t.count for t in tokens] == [1] * 20
    assert [t.text for t in tokens] == server.tokens_for("slow")


async def test_a_read_pace_reads_a_steady_stream_in_groups_and_loses_nothing(server, provider_name):
    """With a read pace (the app's: see BufferPolicy.read_pace_ms) a steady stream is read a few
    times a second, what arrived meanwhile in one go — so it is published in groups, each event
    holding the tokens of one read — and the first token still goes out as soon as it comes."""
    server.slow_rate, server.slow_tokens = 200, 120
    stream, bus = make(provider_name, "slow", buffer=BufferPolicy(read_pace_ms=50))
    sub = bus.subscribe(stream_id=stream.id, policy="block")
    task = stream.start()
    tokens = [e async for e in sub if isinstance(e, Token)]
    await task
    assert stream.state == "completed"
    assert "".join(t.text for t in tokens) == "".join(server.tokens_for("slow"))
    assert sum(t.count for t in tokens) == stream.stats().tokens == 120
    assert tokens[0].count == 1  # (the first read is not held back)
    # 0.6 s of tokens read about every 50 ms: a dozen reads, two events each at most
    assert len(tokens) <= 40 and max(t.count for t in tokens) >= 5
    # a firehose is read as fast as it comes: no slower than without a pace
    server.firehose_tokens = 20_000
    took = []
    for buffer in (BufferPolicy(read_pace_ms=50), BufferPolicy(), BufferPolicy(read_pace_ms=50)):
        stream, _ = make(provider_name, "firehose", buffer=buffer)
        started = time.monotonic()
        await stream.start()
        took.append(time.monotonic() - started)
        assert stream.state == "completed" and stream.stats().tokens == 20_000
    assert min(took[0], took[2]) < 1.5 * took[1] + 0.1, took


async def test_a_burst_is_published_in_few_events_with_nothing_lost(server, provider_name):
    server.firehose_tokens = 5000
    stream, bus = make(provider_name, "firehose")
    sub = bus.subscribe(stream_id=stream.id, policy="block")
    task = stream.start()
    tokens = [e async for e in sub if isinstance(e, Token)]
    await task
    assert "".join(t.text for t in tokens) == "".join(server.tokens_for("firehose"))
    assert sum(t.count for t in tokens) == stream.stats().tokens == 5000
    assert [t.index for t in tokens] == sorted({t.index for t in tokens})
    assert len(tokens) < 5000 / 2 and max(t.count for t in tokens) <= 256


async def test_confidence_tokens_are_never_merged(server, provider_env):
    server.firehose_tokens = 500
    provider = create_provider("openai:firehose")
    stream = Stream(provider, ChatRequest.from_prompt("hi", confidence=True))
    sub = stream.bus.subscribe(stream_id=stream.id, policy="block")
    task = stream.start()
    tokens = [e async for e in sub if isinstance(e, Token)]
    await task
    assert len(tokens) == 500 and all(t.count == 1 for t in tokens)
    assert all(0 < t.confidence <= 1 for t in tokens) and len({t.confidence for t in tokens}) > 3


async def test_exact_mode_publishes_every_token(server, provider_env):
    server.firehose_tokens = 500
    stream, bus = make("ollama", "firehose", buffer=BufferPolicy(merge=False))
    sub = bus.subscribe(stream_id=stream.id, policy="block")
    task = stream.start()
    tokens = [e async for e in sub if isinstance(e, Token)]
    await task
    assert [t.index for t in tokens] == list(range(500)) and all(t.count == 1 for t in tokens)
