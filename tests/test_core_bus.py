"""The event bus: subscriptions, slow-subscriber policies, handlers and their isolation."""

import asyncio
import logging

import pytest

from streamchat.core.bus import EventBus
from streamchat.core.errors import ProviderError
from streamchat.core.events import Cancelled, Completed, Failed, StreamStarted, Token


def tokens(n, stream_id="s", start=0):
    return [Token(stream_id=stream_id, text=f"t{i} ", index=i, confidence=(i % 4) / 4) for i in range(start, start + n)]


async def test_subscription_sees_events_in_order_and_ends_after_its_stream():
    bus = EventBus()
    sub = bus.subscribe(stream_id="s")
    other = bus.subscribe(stream_id="other")
    events = [StreamStarted(stream_id="s", provider="p", model="m"), *tokens(5), Completed(stream_id="s", text="x")]
    for event in events:
        await bus.publish(event)
    await bus.publish(Token(stream_id="s", text="late", index=99))  # after the end: not delivered
    received = [e async for e in sub]
    assert received == events
    assert len(other) == 0 and bus.subscriber_count == 1  # the finished subscription left the bus


async def test_coalescing_subscriber_that_falls_behind_loses_no_text():
    bus = EventBus()
    slow = bus.subscribe(maxsize=4, policy="coalesce")
    sent = tokens(1000)
    for event in sent:  # nobody reads meanwhile: the publisher must never wait
        await asyncio.wait_for(bus.publish(event), 0.1)
    await bus.publish(Completed(stream_id="s", text=""))
    bus.close()
    got = [e async for e in slow]
    got_tokens = [e for e in got if isinstance(e, Token)]
    assert "".join(t.text for t in got_tokens) == "".join(t.text for t in sent)
    assert sum(t.count for t in got_tokens) == 1000
    assert len(got_tokens) <= 4 and slow.coalesced == 1000 - len(got_tokens)
    assert [t.index for t in got_tokens] == sorted(t.index for t in got_tokens)
    merged = got_tokens[-1]
    assert 0.0 <= merged.confidence <= 1.0
    assert isinstance(got[-1], Completed)  # control events are never merged away


async def test_coalescing_keeps_streams_and_stages_apart():
    bus = EventBus()
    sub = bus.subscribe(maxsize=1)
    await bus.publish(Token(stream_id="a", text="a1", index=0))
    await bus.publish(Token(stream_id="b", text="b1", index=0))
    await bus.publish(Token(stream_id="b", text="b2", index=1))
    await bus.publish(Token(stream_id="b", text="b3", index=2, stage="refine"))
    got = sub.drain()
    assert [(t.stream_id, t.stage, t.text) for t in got] == [("a", None, "a1"), ("b", None, "b1b2"), ("b", "refine", "b3")]


async def test_block_policy_applies_backpressure_without_losing_granularity():
    bus = EventBus()
    sub = bus.subscribe(maxsize=2, policy="block")
    publisher = asyncio.ensure_future(_publish_all(bus, tokens(5)))
    await asyncio.sleep(0.05)
    assert not publisher.done() and len(sub) == 2  # waiting for room
    received = []
    async for event in sub:
        received.append(event)
        if len(received) == 5:
            break
    await asyncio.wait_for(publisher, 1)
    assert [e.index for e in received] == [0, 1, 2, 3, 4]
    assert all(e.count == 1 for e in received)


async def _publish_all(bus, events):
    for event in events:
        await bus.publish(event)


async def test_closing_a_blocked_subscription_releases_the_publisher():
    bus = EventBus()
    sub = bus.subscribe(maxsize=1, policy="block")
    publisher = asyncio.ensure_future(_publish_all(bus, tokens(3)))
    await asyncio.sleep(0.02)
    assert not publisher.done()
    sub.close()
    await asyncio.wait_for(publisher, 1)


class Recorder:
    def __init__(self):
        self.calls = []

    def on_stream_start(self, metadata):
        self.calls.append(("start", metadata["provider"]))

    def on_token_received(self, token, index):
        self.calls.append(("token", token, index))

    def on_stream_complete(self, full_response):
        self.calls.append(("complete", full_response))

    def on_stream_error(self, error):
        self.calls.append(("error", str(error)))

    def on_stream_cancel(self, partial):
        self.calls.append(("cancel", partial))


class Exploding:
    def on_token_received(self, token, index):
        raise RuntimeError("boom")

    def on_stream_complete(self, full_response):
        raise ValueError("bang")


async def test_handlers_get_their_callbacks_and_a_failing_one_is_isolated(caplog):
    bus = EventBus()
    good, bad = Recorder(), Exploding()
    bus.register(bad)
    bus.register(good)
    sub = bus.subscribe()
    with caplog.at_level(logging.ERROR, logger="streamchat.bus"):
        await bus.publish(StreamStarted(stream_id="s", provider="openai", model="m"))
        for event in tokens(3):
            await bus.publish(event)
        await bus.publish(Completed(stream_id="s", text="t0 t1 t2 "))
    assert good.calls == [("start", "openai"), ("token", "t0 ", 0), ("token", "t1 ", 1), ("token", "t2 ", 2),
                          ("complete", "t0 t1 t2 ")]
    assert bus.handler_errors == 4
    assert "boom" in caplog.text and "bang" in caplog.text
    assert len(sub) == 5  # the subscription saw everything too


async def test_unregister_stops_delivery_and_error_and_cancel_hooks_fire():
    bus = EventBus()
    rec = Recorder()
    handle = bus.register(rec)
    await bus.publish(Failed(stream_id="s", error=ProviderError("it broke"), partial="p"))
    await bus.publish(Cancelled(stream_id="s", partial="p"))
    bus.unregister(handle)
    await bus.publish(Token(stream_id="s", text="x", index=0))
    assert rec.calls == [("error", "it broke"), ("cancel", "p")]


async def test_handler_filtered_by_stream_and_on_event_sees_everything():
    bus = EventBus()
    seen = []

    class All:
        def on_event(self, event):
            seen.append(event.stream_id)

    bus.register(All(), stream_id="mine")
    await bus.publish(Token(stream_id="mine", text="a", index=0))
    await bus.publish(Token(stream_id="yours", text="b", index=0))
    assert seen == ["mine"]


async def test_async_handler_failures_are_logged_not_raised(caplog):
    bus = EventBus()
    done = []

    class Async:
        async def on_token_received(self, token, index):
            await asyncio.sleep(0)
            if index == 1:
                raise RuntimeError("async boom")
            done.append(index)

    bus.register(Async())
    with caplog.at_level(logging.ERROR, logger="streamchat.bus"):
        for event in tokens(3):
            await bus.publish(event)
        await bus.drain_handlers()
    assert done == [0, 2] and bus.handler_errors == 1 and "async boom" in caplog.text


async def test_unknown_policy_is_refused():
    with pytest.raises(ValueError):
        EventBus().subscribe(policy="drop")
