"""Events and the pure accumulator."""

import json

from streamchat.core.errors import RateLimitedError
from streamchat.core.events import (
    Cancelled,
    Completed,
    Failed,
    Paused,
    Progress,
    Resumed,
    Retrying,
    StreamStarted,
    Token,
    accumulate,
    event_to_dict,
)


def fold(events, snapshot=None):
    for event in events:
        snapshot = accumulate(snapshot, event)
    return snapshot


def test_accumulate_builds_the_answer_and_state():
    events = [
        StreamStarted(stream_id="s", provider="openai", model="m"),
        Token(stream_id="s", text="Hel", index=0, confidence=0.5),
        Paused(stream_id="s"),
        Token(stream_id="s", text="lo", index=1),
        Resumed(stream_id="s"),
        Progress(stream_id="s", message="🔍 Analysing…"),
    ]
    snap = fold(events)
    assert snap.text == "Hello"
    assert snap.tokens == 2 and snap.chars == 5
    assert snap.state == "active" and snap.provider == "openai" and snap.progress == "🔍 Analysing…"
    done = accumulate(snap, Completed(stream_id="s", text="Hello"))
    assert done.state == "completed" and done.done and done.text == "Hello"


def test_snapshots_never_change_when_folded_further():
    base = fold([StreamStarted(stream_id="s", provider="p", model="m"), Token(stream_id="s", text="a", index=0)])
    left = accumulate(base, Token(stream_id="s", text="b", index=1))
    right = accumulate(base, Token(stream_id="s", text="c", index=1))  # branches off the same snapshot
    assert (base.text, left.text, right.text) == ("a", "ab", "ac")
    assert accumulate(left, Token(stream_id="s", text="d", index=2)).text == "abd"
    assert left.text == "ab" and base.tokens == 1


def test_terminal_events_carry_the_authoritative_text():
    snap = fold([StreamStarted(stream_id="s", provider="p", model="m"), Token(stream_id="s", text="par", index=0)])
    failed = accumulate(snap, Failed(stream_id="s", error=RateLimitedError("rate limited"), partial="par"))
    assert failed.state == "failed" and failed.text == "par" and isinstance(failed.error, RateLimitedError)
    cancelled = accumulate(snap, Cancelled(stream_id="s", partial="par"))
    assert cancelled.state == "cancelled" and cancelled.text == "par"


def test_a_continuation_starts_from_the_partial():
    snap = fold([
        StreamStarted(stream_id="c", provider="p", model="m", continues="The sky is"),
        Retrying(stream_id="c", attempt=1, delay=0.1, reason="x"),
        StreamStarted(stream_id="c", provider="p", model="m", attempt=2, continues="The sky is"),
        Token(stream_id="c", text=" blue.", index=0),
    ])
    assert snap.text == "The sky is blue." and snap.attempt == 2


def test_event_to_dict_is_json_with_type_first():
    event = Failed(stream_id="s", error=RateLimitedError("rate limited by openai", retry_after=2.0), partial="x")
    data = event_to_dict(event)
    assert list(data)[0] == "type" and data["type"] == "error"
    assert data["error"]["kind"] == "rate_limited" and data["error"]["retry_after"] == 2.0
    assert json.loads(json.dumps(data)) == data
    token = event_to_dict(Token(stream_id="s", text="hi", index=3, confidence=0.25, lane="L", stage="draft"))
    assert token["type"] == "token" and token["index"] == 3 and token["confidence"] == 0.25
    assert token["lane"] == "L" and token["stage"] == "draft" and isinstance(token["t"], float)
