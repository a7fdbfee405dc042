"""The loopback wire server speaks each provider's format: proven by the official SDKs.

Exceptions the SDKs raised against this server (anthropic 2.12.0, openai 3.54.0, ollama 0.6.3;
``max_retries=0``; "<-" is ``__cause__``).  anthropic/openai use their own HTTP stack ``httpx2``
(+ ``httpcore2``); ollama uses ``httpx``.  The ``httpx2`` errors are NOT ``httpx.HTTPError``
subclasses.

| scenario (streaming)      | anthropic                                   | openai                                      | ollama                              |
|---------------------------|---------------------------------------------|---------------------------------------------|-------------------------------------|
| error-mid (after 5 toks)  | anthropic.APIStatusError (exact class, not  | openai.APIError (base class; no             | ollama.ResponseError,               |
|                           | OverloadedError), status_code=200,          | status_code; .type="server_error",          | status_code=-1                      |
|                           | .type="overloaded_error"                    | .body = the error object)                   |                                     |
| drop-mid (FIN, truncated  | httpx2.RemoteProtocolError (raw, NOT        | openai.APIConnectionError                   | httpx.RemoteProtocolError (raw)     |
|   chunked body)           | wrapped) "incomplete chunked read"          |   <- httpx2.RemoteProtocolError             |                                     |
| reset-mid (RST)           | httpx2.ReadError (raw)                      | openai.APIConnectionError                   | httpx.ReadError (raw)               |
|                           |   <- httpcore2.ReadError <- ConnectionReset |   <- httpx2.ReadError                       |   <- ... <- ConnectionResetError    |
| cutoff (first attempt)    | same as drop-mid                            | same as drop-mid                            | same as drop-mid                    |
| 401                       | anthropic.AuthenticationError (401)         | openai.AuthenticationError (401)            | ollama.ResponseError (401)          |
|                           |                                             |   <- httpx2.HTTPStatusError                 |   (no response/headers attached)    |
| 429                       | anthropic.RateLimitError (429), .response   | openai.RateLimitError (429), .response      | ollama.ResponseError (429); the     |
|                           | has retry-after                             | has retry-after                             | headers are not reachable from it   |
| 500                       | anthropic.InternalServerError (500)         | openai.InternalServerError (500)            | ollama.ResponseError (500)          |
| overload-once (1st call)  | anthropic.OverloadedError (529)             | openai.InternalServerError (503)            | ollama.ResponseError (503)          |
| stall / stall-start with  | httpx2.ReadTimeout (raw)                    | openai.APITimeoutError <- httpx2.ReadTimeout| httpx.ReadTimeout (raw)             |
|   a client read timeout   |                                             |                                             |                                     |

Non-streaming (``stream: false``) differs for anthropic: a transport failure while the response
is read is wrapped (drop-mid -> anthropic.APIConnectionError <- httpx2.RemoteProtocolError;
a stall -> anthropic.APITimeoutError <- httpx2.ReadTimeout); openai likewise wraps; ollama still
raises raw httpx errors.  With the default max_retries=2, anthropic and openai silently retry
429 (honouring retry-after) and 529/503, so "429" and "overload-once" then just succeed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import ollama
import openai
import pytest

from streamchat.testing.wire import (
    CUTOFF_CONTINUATION,
    CUTOFF_FIRST,
    MULTIBYTE_TOKENS,
    NORMAL_TOKENS,
    SCENARIOS,
    WireServer,
)

PROVIDERS = ["anthropic", "openai", "ollama"]
USER = [{"role": "user", "content": "Say something."}]
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(60)


# --------------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wire() -> Any:
    with WireServer() as server:
        yield server


@pytest.fixture
def server(wire: WireServer) -> WireServer:
    wire.reset()
    return wire


def make_client(server: WireServer, provider: str, **kw: Any) -> Any:
    env = server.env()
    if provider == "anthropic":
        return anthropic.AsyncAnthropic(
            base_url=server.url, api_key=env["ANTHROPIC_API_KEY"], max_retries=kw.pop("max_retries", 0), **kw
        )
    if provider == "openai":
        return openai.AsyncOpenAI(
            base_url=server.url + "/v1", api_key=env["OPENAI_API_KEY"], max_retries=kw.pop("max_retries", 0), **kw
        )
    return ollama.AsyncClient(host=server.url, **kw)


async def close_client(client: Any) -> None:
    await client.close()


async def consume(
    server: WireServer,
    provider: str,
    model: str,
    messages: list[dict[str, Any]] | None = None,
    **client_kw: Any,
) -> tuple[str, BaseException | None, list[Any]]:
    """Stream one answer with the official SDK: (text, exception or None, raw items)."""
    messages = messages or USER
    client = make_client(server, provider, **client_kw)
    parts: list[str] = []
    items: list[Any] = []
    exc: BaseException | None = None
    try:
        if provider == "anthropic":
            stream = await client.messages.create(model=model, max_tokens=256, messages=messages, stream=True)
            async for ev in stream:
                items.append(ev)
                if ev.type == "content_block_delta" and ev.delta.type == "text_delta":
                    parts.append(ev.delta.text)
        elif provider == "openai":
            stream = await client.chat.completions.create(model=model, messages=messages, stream=True)
            async for chunk in stream:
                items.append(chunk)
                if chunk.choices and chunk.choices[0].delta.content:
                    parts.append(chunk.choices[0].delta.content)
        else:
            async for part in await client.chat(model=model, messages=messages, stream=True):
                items.append(part)
                parts.append(part.message.content or "")
    except Exception as e:  # noqa: BLE001 - the point is to look at it
        exc = e
    finally:
        await close_client(client)
    return "".join(parts), exc, items


async def wait_for(predicate: Any, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


# --------------------------------------------------------------------------------------------
# formats
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_normal_text_arrives_intact(server: WireServer, provider: str) -> None:
    text, exc, items = await consume(server, provider, "normal")
    assert exc is None
    assert text == "".join(NORMAL_TOKENS) == "".join(server.tokens_for("normal"))
    assert len(server.tokens_for("normal")) == 15

    if provider == "anthropic":
        types = [ev.type for ev in items]
        assert types[:2] == ["message_start", "content_block_start"]
        assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"]
        assert items[0].message.usage.input_tokens > 0
        assert items[-2].delta.stop_reason == "end_turn"
        assert items[-2].usage.output_tokens == 15
    elif provider == "openai":
        assert items[0].choices[0].delta.role == "assistant"
        assert items[-1].choices[0].finish_reason == "stop"
        assert items[-1].choices[0].delta.content == NORMAL_TOKENS[-1]
        assert all(c.usage is None for c in items)  # include_usage not requested
    else:
        last = items[-1]
        assert last.done and last.done_reason == "stop"
        assert last.eval_count == 15 and last.prompt_eval_count
        assert last.total_duration >= last.eval_duration > 0 and last.load_duration > 0
        assert all(not p.done for p in items[:-1])

    (req,) = server.requests
    assert req.provider == provider and req.scenario == "normal" and req.method == "POST"
    assert req.body["model"] == "normal"
    (progress,) = server.responses()
    assert progress.provider == provider and progress.scenario == "normal"
    assert progress.finished and not progress.client_gone and progress.bytes_sent > 0


async def test_anthropic_message_stream_helper_and_headers(server: WireServer) -> None:
    client = make_client(server, "anthropic")
    try:
        async with client.messages.stream(model="normal", max_tokens=64, messages=USER) as stream:
            text = await stream.get_final_text()
            message = await stream.get_final_message()
    finally:
        await client.close()
    assert text == "".join(NORMAL_TOKENS)
    assert message.stop_reason == "end_turn" and message.usage.output_tokens == 15
    (req,) = server.requests
    assert req.path == "/v1/messages"  # any ?beta=true would be in req.query
    assert req.headers["content-type"].startswith("application/json")
    assert "anthropic-version" in req.headers


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_multibyte_text_arrives_intact(server: WireServer, provider: str) -> None:
    text, exc, _ = await consume(server, provider, "multibyte")
    assert exc is None
    assert text == "".join(MULTIBYTE_TOKENS)
    assert "👨\u200d👩\u200d👧\u200d👦" in text and "日本語" in text and "e\u0301" in text
    # the body really went out in tiny pieces
    (progress,) = server.responses()
    assert progress.finished and progress.bytes_sent > len(text.encode())


async def test_openai_usage_chunk_and_logprobs(server: WireServer) -> None:
    client = make_client(server, "openai")
    try:
        stream = await client.chat.completions.create(
            model="normal", messages=USER, stream=True,
            stream_options={"include_usage": True}, logprobs=True, top_logprobs=3,
        )
        chunks = [c async for c in stream]
        plain = await client.chat.completions.create(model="normal", messages=USER, stream=True)
        plain_chunks = [c async for c in plain]
    finally:
        await client.close()

    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == 15
    assert usage_chunk.usage.total_tokens == usage_chunk.usage.prompt_tokens + 15
    assert chunks[-2].choices[0].finish_reason == "stop"

    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(c.choices[0].delta.content for c in content) == "".join(NORMAL_TOKENS)
    lps = []
    for c in content:
        (entry,) = c.choices[0].logprobs.content
        assert entry.token == c.choices[0].delta.content
        assert bytes(entry.bytes) == entry.token.encode()
        assert -2.5 <= entry.logprob <= -0.01
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[1].logprob < entry.logprob
        lps.append(entry.logprob)
    assert len(set(lps)) > 10  # they vary

    assert all(c.choices[0].logprobs is None for c in plain_chunks if c.choices)
    assert all(c.usage is None for c in plain_chunks)


async def test_ollama_logprobs(server: WireServer) -> None:
    client = make_client(server, "ollama")
    try:
        parts = [p async for p in await client.chat(
            model="normal", messages=USER, stream=True, logprobs=True, top_logprobs=2)]
    finally:
        await client.close()
    content = [p for p in parts if not p.done]
    assert "".join(p.message.content for p in content) == "".join(NORMAL_TOKENS)
    for p in content:
        (lp,) = p.logprobs
        assert lp.token == p.message.content and -2.5 <= lp.logprob <= -0.01
        assert len(lp.top_logprobs) == 2
    assert len({p.logprobs[0].logprob for p in content}) > 10


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_non_streaming_answers(server: WireServer, provider: str) -> None:
    client = make_client(server, provider)
    try:
        if provider == "anthropic":
            msg = await client.messages.create(model="multibyte", max_tokens=64, messages=USER)
            text = msg.content[0].text
            assert msg.stop_reason == "end_turn"
        elif provider == "openai":
            resp = await client.chat.completions.create(model="multibyte", messages=USER)
            text = resp.choices[0].message.content
            assert resp.choices[0].finish_reason == "stop" and resp.usage.completion_tokens
        else:
            resp = await client.chat(model="multibyte", messages=USER, stream=False)
            text = resp.message.content
            assert resp.done and resp.done_reason == "stop"
    finally:
        await client.close()
    assert text == "".join(MULTIBYTE_TOKENS)
    (progress,) = server.responses()
    assert not progress.stream and progress.finished


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_empty_and_echo(server: WireServer, provider: str) -> None:
    text, exc, _ = await consume(server, provider, "empty")
    assert exc is None and text == ""
    said = "Echo me, please: ünïcödé 👍 ok"
    text, exc, _ = await consume(server, provider, "echo", [{"role": "user", "content": said}])
    assert exc is None and text == said


# --------------------------------------------------------------------------------------------
# failures, as each SDK reports them
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_error_mid_stream(server: WireServer, provider: str) -> None:
    text, exc, _ = await consume(server, provider, "error-mid")
    assert text == "".join(NORMAL_TOKENS[:5]) == "".join(server.tokens_for("error-mid"))
    if provider == "anthropic":
        assert type(exc) is anthropic.APIStatusError  # not OverloadedError (that is HTTP 529)
        assert exc.status_code == 200 and exc.type == "overloaded_error"
    elif provider == "openai":
        assert type(exc) is openai.APIError and not hasattr(exc, "status_code")
        assert exc.type == "server_error"
    else:
        assert type(exc) is ollama.ResponseError and exc.status_code == -1
    assert server.responses()[0].finished  # the body was ended properly


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("scenario", ["drop-mid", "reset-mid"])
async def test_connection_lost_mid_stream(server: WireServer, provider: str, scenario: str) -> None:
    text, exc, _ = await consume(server, provider, scenario)
    assert text == "".join(NORMAL_TOKENS[:5])
    raw = {
        ("anthropic", "drop-mid"): httpx2.RemoteProtocolError,
        ("anthropic", "reset-mid"): httpx2.ReadError,
        ("ollama", "drop-mid"): httpx.RemoteProtocolError,
        ("ollama", "reset-mid"): httpx.ReadError,
    }
    if provider == "openai":
        assert type(exc) is openai.APIConnectionError
        cause = {"drop-mid": httpx2.RemoteProtocolError, "reset-mid": httpx2.ReadError}[scenario]
        assert isinstance(exc.__cause__, cause)
    elif provider == "anthropic" and type(exc) is anthropic.APIConnectionError:
        # anthropic 2.17 wraps it as openai does (2.12 raised the transport error itself)
        assert isinstance(exc.__cause__, raw[(provider, scenario)])
    else:
        assert type(exc) is raw[(provider, scenario)]
        assert not isinstance(exc, httpx.HTTPError) or provider == "ollama"
    progress = server.responses()[0]
    assert progress.finished and not progress.client_gone


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("scenario", ["401", "429", "500"])
async def test_http_errors(server: WireServer, provider: str, scenario: str) -> None:
    text, exc, _ = await consume(server, provider, scenario)
    status = int(scenario)
    assert text == ""
    expected = {
        "anthropic": {401: anthropic.AuthenticationError, 429: anthropic.RateLimitError,
                      500: anthropic.InternalServerError},
        "openai": {401: openai.AuthenticationError, 429: openai.RateLimitError,
                   500: openai.InternalServerError},
        "ollama": {401: ollama.ResponseError, 429: ollama.ResponseError, 500: ollama.ResponseError},
    }[provider][status]
    assert type(exc) is expected
    assert exc.status_code == status
    if provider == "ollama":
        if status == 401:
            assert exc.error == "unauthorized"
    else:
        assert exc.response.headers.get("retry-after") == ("1" if status == 429 else None)
        if provider == "anthropic":
            assert exc.body["type"] == "error"
            assert exc.type == {401: "authentication_error", 429: "rate_limit_error",
                                500: "api_error"}[status]
        else:
            assert exc.code == {401: "invalid_api_key", 429: "rate_limit_exceeded",
                                500: None}[status]
            if status == 401:
                assert "sk-test-0123456789abcdef" in str(exc)  # echoed on purpose
    assert server.responses() == []  # no answer was streamed


async def test_ollama_429_has_retry_after_header(server: WireServer) -> None:
    # ollama's ResponseError carries no headers, so look at the wire directly.
    async with httpx.AsyncClient(base_url=server.url) as client:
        first = await client.post("/api/chat", json={"model": "429", "messages": USER})
        second = await client.post("/api/chat", json={"model": "429", "messages": USER, "stream": False})
    assert first.status_code == 429 and first.headers["retry-after"] == "1"
    assert "error" in first.json()
    assert second.status_code == 200 and second.json()["message"]["content"] == "".join(NORMAL_TOKENS)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_once_scenarios_then_succeed(server: WireServer, provider: str) -> None:
    _, exc, _ = await consume(server, provider, "overload-once")
    assert exc is not None and exc.status_code == (529 if provider == "anthropic" else 503)
    if provider == "anthropic":
        assert type(exc) is anthropic.OverloadedError
    text, exc, _ = await consume(server, provider, "overload-once")
    assert exc is None and text == "".join(NORMAL_TOKENS)

    _, exc, _ = await consume(server, provider, "429")
    assert exc is not None and exc.status_code == 429
    text, exc, _ = await consume(server, provider, "429")
    assert exc is None and text == "".join(NORMAL_TOKENS)

    server.reset()  # resets the "once" counters
    _, exc, _ = await consume(server, provider, "429")
    assert exc is not None and exc.status_code == 429


async def test_sdk_retries_honour_retry_after(server: WireServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "retry_after", "0.2")
    t0 = time.monotonic()
    text, exc, _ = await consume(server, "openai", "429", max_retries=2)
    assert exc is None and text == "".join(NORMAL_TOKENS)
    assert time.monotonic() - t0 >= 0.2
    assert [r.scenario for r in server.requests] == ["429", "429"]


# --------------------------------------------------------------------------------------------
# cutoff / continuation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_cutoff_then_continue(server: WireServer, provider: str) -> None:
    text, exc, _ = await consume(server, provider, "cutoff")
    assert text == CUTOFF_FIRST == "".join(server.tokens_for("cutoff"))
    assert exc is not None  # the connection was dropped mid-stream

    continued = USER + [{"role": "assistant", "content": text}]
    text2, exc2, _ = await consume(server, provider, "cutoff", continued)
    assert exc2 is None and text2 == CUTOFF_CONTINUATION
    assert [p.finished for p in server.responses()] == [True, True]


async def test_cutoff_openai_any_assistant_message_continues(server: WireServer) -> None:
    msgs = USER + [{"role": "assistant", "content": CUTOFF_FIRST}, {"role": "user", "content": "go on"}]
    text, exc, _ = await consume(server, "openai", "cutoff", msgs)
    assert exc is None and text == CUTOFF_CONTINUATION
    # ...while for Anthropic only a trailing assistant message is a continuation
    text, exc, _ = await consume(server, "anthropic", "cutoff", msgs)
    assert exc is not None and text == CUTOFF_FIRST


# --------------------------------------------------------------------------------------------
# stalls, pacing, backpressure, shutdown
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_stall_ends_when_client_closes(server: WireServer, provider: str) -> None:
    client = make_client(server, provider)
    try:
        got = 0
        if provider == "anthropic":
            stream = await client.messages.create(model="stall", max_tokens=64, messages=USER, stream=True)
            async for ev in stream:
                got += ev.type == "content_block_delta"
                if got == 3:
                    break
            await stream.close()
        elif provider == "openai":
            stream = await client.chat.completions.create(model="stall", messages=USER, stream=True)
            async for chunk in stream:
                got += bool(chunk.choices and chunk.choices[0].delta.content)
                if got == 3:
                    break
            await stream.close()
        else:
            gen = await client.chat(model="stall", messages=USER, stream=True)
            async for _ in gen:
                got += 1
                if got == 3:
                    break
            await gen.aclose()
    finally:
        await client.close()
    assert got == 3
    progress = server.responses()[0]
    assert await wait_for(lambda: progress.client_gone)
    assert not progress.finished


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_stall_start_read_timeout_and_close(server: WireServer, provider: str) -> None:
    t0 = time.monotonic()
    text, exc, items = await consume(server, provider, "stall-start", timeout=0.3)
    assert time.monotonic() - t0 < 3
    assert text == "" and items == []
    expected = {"anthropic": httpx2.ReadTimeout, "openai": openai.APITimeoutError,
                "ollama": httpx.ReadTimeout}[provider]
    if provider == "anthropic" and type(exc) is anthropic.APITimeoutError:
        expected = anthropic.APITimeoutError  # anthropic 2.17 wraps it (2.12 raised ReadTimeout)
        assert isinstance(exc.__cause__, httpx2.ReadTimeout)
    assert type(exc) is expected
    progress = server.responses()[0]
    assert progress.bytes_sent == 0  # headers only
    assert await wait_for(lambda: progress.client_gone)


async def test_slow_is_paced(server: WireServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "slow_rate", 100.0)
    monkeypatch.setattr(server, "slow_tokens", 20)
    assert len(server.tokens_for("slow")) == 20
    t0 = time.monotonic()
    text, exc, _ = await consume(server, "ollama", "slow")
    elapsed = time.monotonic() - t0
    assert exc is None and text == "".join(server.tokens_for("slow"))
    assert 0.18 <= elapsed < 2.0


async def test_long_and_firehose_are_deterministic(server: WireServer, monkeypatch: pytest.MonkeyPatch) -> None:
    long = server.tokens_for("long")
    assert len(long) == 2000 and long == server.tokens_for("long")
    monkeypatch.setattr(server, "firehose_tokens", 3000)
    text, exc, items = await consume(server, "anthropic", "firehose")
    assert exc is None and text == "".join(server.tokens_for("firehose"))
    assert sum(ev.type == "content_block_delta" for ev in items) == 3000


@pytest.mark.parametrize("provider", ["anthropic", "ollama"])
async def test_big_blocks_while_client_pauses(server: WireServer, provider: str) -> None:
    client = make_client(server, provider)
    expected = "".join(server.tokens_for("big"))
    parts: list[str] = []
    try:
        if provider == "anthropic":
            stream = await client.messages.create(model="big", max_tokens=64, messages=USER, stream=True)
            it = stream.__aiter__()

            async def next_text() -> str:
                ev = await it.__anext__()
                return ev.delta.text if ev.type == "content_block_delta" else ""
        else:
            it = (await client.chat(model="big", messages=USER, stream=True)).__aiter__()

            async def next_text() -> str:
                part = await it.__anext__()
                return part.message.content or ""

        while len(parts) < 3 or not parts[-1]:
            parts.append(await next_text())
        progress = server.responses()[0]

        # The client stops reading: the server ends up blocked in drain, bytes_sent stops growing.
        async def stable() -> bool:
            before = progress.bytes_sent
            await asyncio.sleep(0.15)
            return progress.writing_blocked and progress.bytes_sent == before

        deadline = time.monotonic() + 5
        while not await stable():
            assert time.monotonic() < deadline, progress
        assert progress.bytes_sent < len(expected) // 2
        assert not progress.finished

        # It reads again: everything arrives.
        with pytest.raises(StopAsyncIteration):
            while True:
                parts.append(await next_text())
    finally:
        await client.close()
    assert "".join(parts) == expected
    assert progress.finished and not progress.writing_blocked and not progress.client_gone


async def test_stop_is_quick_during_a_stall() -> None:
    srv = WireServer().start()
    client = make_client(srv, "openai")
    try:
        stream = await client.chat.completions.create(model="stall", messages=USER, stream=True)
        it = stream.__aiter__()
        await it.__anext__()
        t0 = time.monotonic()
        await asyncio.get_running_loop().run_in_executor(None, srv.stop)
        assert time.monotonic() - t0 < 1.0
        with pytest.raises(openai.APIConnectionError):
            async for _ in it:
                pass
        srv.stop()  # idempotent
    finally:
        srv.stop()
        await client.close()


# --------------------------------------------------------------------------------------------
# plumbing: routes, chunked request bodies, records, env, the CLI entry point
# --------------------------------------------------------------------------------------------


async def test_routes_and_plumbing(server: WireServer) -> None:
    client = make_client(server, "ollama")
    try:
        models = await client.list()
    finally:
        await client.close()
    assert [m.model for m in models.models] == list(SCENARIOS)

    oai = make_client(server, "openai")
    try:
        listed = [m.id async for m in oai.models.list()]
    finally:
        await oai.close()
    assert listed == list(SCENARIOS)

    async def chunked_body() -> Any:
        yield b'{"model": "echo", "stream": true, "messages": [{"role": "user", '
        yield b'"content": "chunked request body"}]}'

    async with httpx.AsyncClient(base_url=server.url) as http:
        version = await http.get("/api/version")
        missing = await http.get("/nope")
        echoed = await http.post("/api/chat", content=chunked_body())
        beta = await http.post("/v1/messages?beta=true", headers={"x-api-key": "k"},
                               json={"model": "normal", "max_tokens": 5, "messages": USER})
        bad = await http.post("/v1/messages", headers={"x-api-key": "k"},
                              json={"model": "normal", "messages": USER})
    assert version.status_code == 200 and "version" in version.json()
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    assert echoed.headers["content-type"] == "application/x-ndjson"
    assert echoed.headers["transfer-encoding"] == "chunked"
    lines = [json.loads(line) for line in echoed.text.splitlines()]
    assert "".join(line["message"]["content"] for line in lines) == "chunked request body"
    assert lines[-1]["done"] is True
    assert beta.status_code == 200 and beta.json()["content"][0]["text"] == "".join(NORMAL_TOKENS)
    assert beta.headers["request-id"].startswith("req_")
    assert bad.status_code == 400 and "max_tokens" in bad.json()["error"]["message"]

    paths = [(r.method, r.path, r.provider, r.scenario) for r in server.requests]
    assert ("POST", "/api/chat", "ollama", "echo") in paths
    assert ("POST", "/v1/messages", "anthropic", "normal") in paths
    assert ("GET", "/nope", "other", None) in paths
    assert next(r for r in server.requests if r.query == "beta=true").path == "/v1/messages"
    echo_req = next(r for r in server.requests if r.scenario == "echo")
    assert echo_req.body["messages"][0]["content"] == "chunked request body"
    assert echo_req.headers["transfer-encoding"] == "chunked"


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_sdk_reuses_the_connection(server: WireServer, provider: str) -> None:
    client = make_client(server, provider)
    try:
        for _ in range(3):
            if provider == "anthropic":
                stream = await client.messages.create(model="normal", max_tokens=64, messages=USER, stream=True)
            elif provider == "openai":
                stream = await client.chat.completions.create(model="normal", messages=USER, stream=True)
            else:
                stream = await client.chat(model="normal", messages=USER, stream=True)
            async for _ in stream:
                pass
        # an error response (Content-Length body) keeps the connection open too
        with pytest.raises(Exception):
            if provider == "ollama":
                await client.chat(model="500", messages=USER, stream=False)
            elif provider == "anthropic":
                await client.messages.create(model="500", max_tokens=64, messages=USER)
            else:
                await client.chat.completions.create(model="500", messages=USER)
        await (client.messages.create(model="normal", max_tokens=64, messages=USER) if provider == "anthropic"
               else client.chat.completions.create(model="normal", messages=USER) if provider == "openai"
               else client.chat(model="normal", messages=USER, stream=False))
    finally:
        await client.close()
    assert len(server.requests) == 5
    assert server.connections_accepted == 1


def test_env(server: WireServer) -> None:
    env = server.env()
    assert env["ANTHROPIC_BASE_URL"] == server.url == env["OLLAMA_HOST"]
    assert env["OPENAI_BASE_URL"] == server.url + "/v1"
    assert env["ANTHROPIC_API_KEY"] == "sk-ant-test-0123456789"
    assert env["OPENAI_API_KEY"] == "sk-test-0123456789abcdef"
    assert server.url.startswith("http://127.0.0.1:")


def test_module_runs_in_foreground_and_stops_on_ctrl_c() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamchat.testing.wire", "--port", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        exports = {}
        while len(exports) < 5:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            if line.startswith("export "):
                key, _, value = line[len("export "):].strip().partition("=")
                exports[key] = value
        r = httpx.post(exports["OLLAMA_HOST"] + "/api/chat", timeout=5,
                       json={"model": "normal", "messages": USER, "stream": False})
        assert r.json()["message"]["content"] == "".join(NORMAL_TOKENS)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert "Traceback" not in err
