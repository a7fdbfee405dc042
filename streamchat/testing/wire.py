"""A loopback HTTP server that speaks the providers' real streaming wire formats.

It is "the far side of the wire" for tests and benchmarks: the official SDKs (anthropic, openai,
ollama) must parse what it sends exactly as they would parse the real service.  Pure standard
library: asyncio streams + json, HTTP/1.1 with keep-alive, chunked streamed bodies, TCP_NODELAY.

The server runs in a daemon thread with its own event loop, so in-process async tests and
subprocess tests (the CLI run with ``server.env()``) can both use it::

    with WireServer() as server:
        client = anthropic.AsyncAnthropic(base_url=server.url, api_key="x", max_retries=0)
        ...

The scenario is picked by the request's ``model`` field (``"slow"``, ``"drop-mid"``...; a
trailing ``:latest`` is ignored); unknown model names behave as ``"normal"``.  Each scenario
exists for every provider, in that provider's format:

=============== ===========================================================================
normal          ``NORMAL_TOKENS`` (15 tokens), complete stream
multibyte       ``MULTIBYTE_TOKENS``; the body is written a few bytes per HTTP chunk, so UTF-8
                sequences and SSE/NDJSON lines are split between writes
long            2,000 deterministic word tokens
slow            ``slow_tokens`` tokens at ``slow_rate`` tokens/s
error-mid       5 tokens, then the provider's in-stream error, then a properly ended body
drop-mid        5 tokens, then FIN without the terminating chunk (truncated body)
reset-mid       5 tokens, then RST (SO_LINGER 0)
stall           3 tokens, then silence until the client leaves or ``stall_seconds`` pass
stall-start     headers only, then silence (same bound)
429             first request per provider since ``reset()``: HTTP 429 + ``retry-after``;
                then like normal
overload-once   first request: Anthropic HTTP 529 overloaded_error, others HTTP 503; then normal
500 / 401       always that HTTP error with the provider's error body
empty           a well-formed answer without any text (Anthropic: no content block at all)
cutoff          ``CUTOFF_FIRST`` then a drop; ``CUTOFF_CONTINUATION`` and a normal end when the
                request continues the answer (Anthropic/Ollama: last message is the assistant's;
                OpenAI: any assistant message)
firehose        ``firehose_tokens`` short tokens, many events per write
big             ``big_tokens`` tokens of ``big_token_size`` chars; small socket buffers so
                that writes block in drain while the client does not read; ``Connection: close``
echo            the last user message, word by word
=============== ===========================================================================

``"stream": false`` gets the provider's non-streaming JSON (error-mid then becomes an HTTP
error, drop/reset a truncated Content-Length body, stall a response that never comes).
OpenAI ``logprobs``/``top_logprobs`` and Ollama ``logprobs``/``top_logprobs`` are honoured.
The server also checks what the real services check (Anthropic: ``max_tokens`` required, no
``system`` role in messages, no trailing whitespace in a final assistant message; an API key
header present for Anthropic/OpenAI) and answers HTTP 400/401 in the provider's format.

Beyond the brief's API: ``RecordedRequest.query`` (the query string), ``ResponseProgress.stream``
(False for a ``"stream": false`` answer) and ``WireServer.connections_accepted`` (to check
keep-alive reuse).

Run ``python -m streamchat.testing.wire [--port N]`` for a foreground server that prints
``export`` lines for ``env()``.

Progress semantics (``ResponseProgress``, one per model answer with HTTP 200, streamed or not):

* ``bytes_sent`` counts the response *body* bytes handed to the socket (for chunked bodies this
  includes the chunk framing; status line and headers are not counted).
* ``finished`` is True once the server has carried out the whole plan of the scenario (a complete
  body, a body ending with a provider error, or a deliberate drop/reset/stall give-up).
* ``client_gone`` is True when the client went away before that.
* ``writing_blocked`` is True while the server waits in ``drain()`` because the client is not
  reading.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import json
import logging
import re
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Iterable

__all__ = [
    "CUTOFF_CONTINUATION",
    "CUTOFF_FIRST",
    "MULTIBYTE_TOKENS",
    "NORMAL_TOKENS",
    "SCENARIOS",
    "RecordedRequest",
    "ResponseProgress",
    "WireServer",
]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Fixed texts
# --------------------------------------------------------------------------------------------

#: The 15 tokens of the "normal" answer.
NORMAL_TOKENS: tuple[str, ...] = (
    "Hello!", " This", " is", " the", " loopback", " wire", " server", " speaking,",
    " with", " a", " short", " and", " perfectly", " normal", " answer.",
)

#: The "multibyte" answer.  Deliberately nasty: accents (precomposed and combining), CJK, emoji
#: with skin tones, ZWJ sequences, flags, and one ZWJ sequence and one combining mark split
#: across two tokens (real tokenizers do that).  Only the concatenation is meaningful.
MULTIBYTE_TOKENS: tuple[str, ...] = (
    "Unicode", " check:", " héllo", " naïve", " café", " —", " déjà", " vu", ".\n",
    "日本語", "の", "テキスト", "と", "中文", "字符", "。", "\n",
    "👋", " 👨\u200d👩\u200d👧\u200d👦", " family,", " 🏳\ufe0f\u200d🌈", " flag,",
    " 👩🏽\u200d💻", " coder,", " 🇯🇵", " 🇫🇷", " flags,", " e", "\u0301", " n", "\u0303",
    " (combining),", " 👨\u200d👩", "\u200d👧", " (split", " ZWJ).", "\n",
    "Ελληνικά", " и", " русский", " и", " 한국어", " ✓", " ½", " €", " 𝄞", ".",
)

#: The "cutoff" scenario streams this and then drops the connection (first attempt) ...
CUTOFF_FIRST = "The three primary colours of light are red, green"
#: ... and streams this when the request continues the answer (a trailing assistant message).
CUTOFF_CONTINUATION = " and blue. Mixed at full strength they make white light."

NORMAL_TEXT = "".join(NORMAL_TOKENS)

#: All scenario names (the ``model`` values the server understands; also /api/tags and /v1/models).
SCENARIOS: tuple[str, ...] = (
    "normal", "multibyte", "long", "slow", "error-mid", "drop-mid", "reset-mid", "stall",
    "stall-start", "429", "overload-once", "500", "401", "empty", "cutoff", "firehose",
    "big", "echo",
)

_WORDS = (
    "the", "stream", "of", "tokens", "arrives", "at", "a", "steady", "pace", "and", "each",
    "one", "is", "rendered", "as", "soon", "it", "lands", "on", "screen", "while", "model",
    "keeps", "thinking", "about", "what", "to", "say", "next", "terminal", "buffer", "line",
    "word", "river", "quietly", "bright", "small", "careful", "reader", "writer", "answer",
    "question", "light", "data", "wire", "socket", "packet", "byte", "chunk", "event", "slowly",
    "quickly", "never", "always", "every", "little", "long", "short", "green", "blue", "red",
    "simple", "clear", "test",
)

_TOKEN_RE = re.compile(r"\s*\S+|\s+")


def _tokenize(text: str) -> list[str]:
    """Word-ish tokens (leading whitespace attached); their concatenation is ``text``."""
    return _TOKEN_RE.findall(text)


@lru_cache(maxsize=16)
def _words(n: int) -> tuple[str, ...]:
    """``n`` deterministic word tokens with sentences and paragraphs (prefix-stable)."""
    out: list[str] = []
    state = 0x2545F491
    sentence_left = 0
    sentences = 0
    new_sentence = True
    while len(out) < n:
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        if sentence_left == 0:
            sentence_left = 8 + (state >> 8) % 10
        word = _WORDS[(state >> 4) % len(_WORDS)]
        if new_sentence:
            word = word.capitalize()
        sentence_left -= 1
        if sentence_left == 0:
            word += "."
        lead = "" if (not out or out[-1] == "\n\n") else " "
        out.append(lead + word)
        new_sentence = sentence_left == 0
        if new_sentence:
            sentences += 1
            if sentences % 5 == 0 and len(out) < n:
                out.append("\n\n")
    return tuple(out[:n])


@lru_cache(maxsize=4)
def _big(n: int, size: int) -> tuple[str, ...]:
    filler = "abcdefghijklmnopqrstuvwxyz0123456789 " * (size // 37 + 2)
    toks = []
    for i in range(n):
        head = f"[big {i:05d}] "
        toks.append((head + filler)[:size])
    return tuple(toks)


def _logprob(i: int) -> float:
    """Deterministic, varying log-probabilities in [-2.5, -0.01]."""
    frac = (i * 0.6180339887498949 + 0.137) % 1.0
    return -round(0.01 + 2.49 * frac, 4)


def _top_alternatives(i: int, tok: str, lp: float, k: int) -> list[tuple[str, float]]:
    """``k`` entries: the chosen token first, then less likely alternatives."""
    out = [(tok, lp)]
    for j in range(1, k):
        word = _WORDS[(i * 7 + j * 13) % len(_WORDS)]
        alt = (" " if tok.startswith(" ") else "") + word
        if alt == tok:
            alt += "s"
        out.append((alt, round(lp - 0.35 - 0.6 * j, 4)))
    return out


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _go_json(s: str) -> str:
    """Like Go's encoding/json (what Ollama uses): U+2028/U+2029 escaped, other text raw."""
    return s.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


_ts_cache: list[Any] = [-1, ""]


def _now_iso_ns() -> str:
    """Ollama's ``created_at``: RFC 3339 with nanoseconds."""
    sec, ns = divmod(time.time_ns(), 1_000_000_000)
    if sec != _ts_cache[0]:
        _ts_cache[1] = datetime.fromtimestamp(sec, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        _ts_cache[0] = sec
    return f"{_ts_cache[1]}.{ns:09d}Z"


# --------------------------------------------------------------------------------------------
# Public records
# --------------------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    method: str
    path: str  # without the query string
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON, or None
    provider: str  # "anthropic" | "openai" | "ollama" | "other"
    scenario: str | None
    query: str = ""


@dataclass
class ResponseProgress:
    provider: str
    scenario: str
    bytes_sent: int = 0
    finished: bool = False
    client_gone: bool = False
    last_write: float = field(default_factory=time.monotonic)
    writing_blocked: bool = False
    stream: bool = True


# --------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------

_MAX_LINE = 64 * 1024
_MAX_HEADERS = 256 * 1024
_MAX_BODY = 64 * 1024 * 1024
_TERMINATOR = b"0\r\n\r\n"
_PIECE_SIZES = (3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4, 6, 2, 6, 4, 3, 3)

_REASONS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
    405: "Method Not Allowed", 413: "Payload Too Large", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
    503: "Service Unavailable", 529: "Site is overloaded",
}


class _ClientGone(Exception):
    pass


class _GiveUp(Exception):
    """The server abandons the response (write or stall timeout)."""

    def __init__(self, message: str, planned: bool) -> None:
        super().__init__(message)
        self.planned = planned  # True: the scenario meant it (a stall running out)


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Conn:
    """A connection with our own read buffer (so the disconnect watcher can stash early bytes)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.transport = writer.transport
        self.buf = bytearray()
        self.eof = False

    async def _fill(self) -> bool:
        if self.eof:
            return False
        data = await self.reader.read(65536)
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    async def readline(self) -> bytes:
        """A line including its newline; b"" at EOF with nothing buffered."""
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[: i + 1])
                del self.buf[: i + 1]
                return line
            if len(self.buf) > _MAX_LINE:
                raise _BadRequest(431, "header line too long")
            if not await self._fill():
                if self.buf:
                    raise ConnectionError("connection closed mid-line")
                return b""

    async def readexactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not await self._fill():
                raise ConnectionError("connection closed mid-body")
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def set_linger_zero(self) -> None:
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@dataclass
class _Request:
    method: str
    target: str
    path: str
    query: str
    version: str
    headers: dict[str, str]
    raw_body: bytes


class _Out:
    """Writes one response; every body byte goes through ``progress``."""

    def __init__(self, server: "WireServer", conn: _Conn, progress: ResponseProgress | None,
                 gone: asyncio.Event) -> None:
        self.server = server
        self.conn = conn
        self.transport = conn.transport
        self.progress = progress
        self.gone = gone

    def _check(self) -> None:
        if self.gone.is_set() or self.transport.is_closing():
            raise _ClientGone()

    def write_head(self, status: int, headers: list[tuple[str, str]]) -> None:
        self._check()
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
        lines += [f"{k}: {v}" for k, v in headers]
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    async def raw(self, data: bytes, final: bool = False) -> None:
        """Write body bytes as they are (already framed, or a Content-Length body).

        ``final``: these are the last bytes of the body; the response counts as finished once
        they are handed to the transport.
        """
        self._check()
        if self.progress is not None:  # before the write: the client may be quicker than us
            self.progress.bytes_sent += len(data)
            self.progress.last_write = time.monotonic()
            if final:
                self.progress.finished = True
        self.transport.write(data)
        await self.drain()

    async def chunk(self, data: bytes, final: bool = False) -> None:
        framed = b"%x\r\n%b\r\n" % (len(data), data) if data else b""
        if final:
            framed += _TERMINATOR
        if framed:
            await self.raw(framed, final)

    async def drain(self) -> None:
        t = self.transport
        if t.is_closing():
            raise _ClientGone()
        if t.get_write_buffer_size() <= t.get_write_buffer_limits()[1]:
            await asyncio.sleep(0)
            return
        if self.progress is not None:
            self.progress.writing_blocked = True
        drain = asyncio.ensure_future(self.conn.writer.drain())
        gone = asyncio.ensure_future(self.gone.wait())
        try:
            done, _ = await asyncio.wait(
                {drain, gone}, timeout=self.server.write_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for f in (drain, gone):
                if not f.done():
                    f.cancel()
            if self.progress is not None:
                self.progress.writing_blocked = False
        if drain in done and not drain.cancelled() and drain.exception() is None:
            return
        if drain in done and not drain.cancelled():
            raise _ClientGone() from drain.exception()
        if gone in done:
            raise _ClientGone()
        raise _GiveUp("client did not read for write_timeout seconds", planned=False)

    async def sleep(self, seconds: float) -> None:
        """Sleep, but notice the client leaving."""
        if seconds <= 0:
            await asyncio.sleep(0)
            self._check()
            return
        try:
            await asyncio.wait_for(self.gone.wait(), seconds)
        except asyncio.TimeoutError:
            self._check()
            return
        raise _ClientGone()

    async def hold(self, seconds: float) -> None:
        """Keep the connection open without writing until the client leaves or time runs out."""
        try:
            await asyncio.wait_for(self.gone.wait(), max(0.0, seconds))
        except asyncio.TimeoutError:
            raise _GiveUp("stall timed out", planned=True) from None
        raise _ClientGone()

    async def flush_out(self, limit: float = 2.0) -> None:
        """Wait (bounded) until asyncio's buffer is empty."""
        deadline = time.monotonic() + limit
        while self.transport.get_write_buffer_size() and time.monotonic() < deadline:
            self._check()
            await asyncio.sleep(0.005)


# --------------------------------------------------------------------------------------------
# Scenario plans and provider encoders
# --------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    tokens: list[str]
    end: str  # "finish" | "error" | "drop" | "reset" | "stall" | "stall-start"
    delay: float = 0.0  # seconds before each token
    pieces: bool = False  # body written a few bytes at a time
    pack: bool = False  # many events per write
    big: bool = False  # small buffers so that writes block


class _Enc:
    """Base of the provider encoders."""

    provider = "other"
    stream_content_type = "text/event-stream; charset=utf-8"

    def __init__(self, server: "WireServer", seq: int, body: dict[str, Any], plan: _Plan) -> None:
        self.server = server
        self.seq = seq
        self.body = body
        self.plan = plan
        self.model = str(body.get("model") or "normal")
        self.has_text = bool(plan.tokens)
        self.n_out = len(plan.tokens)
        self.n_in = max(1, len(_dumps(body.get("messages", ""))) // 4)
        self.created = int(time.time())
        self.t0 = time.monotonic()

    def headers(self, stream: bool) -> list[tuple[str, str]]:
        return []

    def start(self) -> bytes:
        return b""

    def token(self, i: int, tok: str, last: bool) -> bytes:
        raise NotImplementedError

    def finish(self) -> bytes:
        return b""

    def error(self) -> bytes:
        raise NotImplementedError

    def complete(self, text: str, tokens: list[str]) -> dict[str, Any]:
        raise NotImplementedError

    def error_status(self, kind: str, message: str | None = None) -> tuple[int, Any]:
        raise NotImplementedError


class _AnthropicEnc(_Enc):
    provider = "anthropic"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.msg_id = f"msg_01Wire{self.seq:018d}"
        self.req_id = f"req_011Wire{self.seq:016d}"
        self._delta_prefix = (
            'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
            '"delta":{"type":"text_delta","text":'
        )

    def headers(self, stream: bool) -> list[tuple[str, str]]:
        return [
            ("request-id", self.req_id),
            ("anthropic-organization-id", "1d6e0f0c-0000-4000-8000-00000000a11e"),
            ("x-robots-tag", "none"),
        ]

    @staticmethod
    def _event(name: str, data: Any) -> str:
        return f"event: {name}\ndata: {_dumps(data)}\n\n"

    def _usage(self, output_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": self.n_in,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }

    def start(self) -> bytes:
        msg = {
            "id": self.msg_id, "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": None, "stop_sequence": None, "usage": self._usage(1),
        }
        out = self._event("message_start", {"type": "message_start", "message": msg})
        if self.has_text:
            out += self._event("content_block_start", {
                "type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""},
            })
        out += 'event: ping\ndata: {"type": "ping"}\n\n'
        return out.encode()

    def token(self, i: int, tok: str, last: bool) -> bytes:
        return (self._delta_prefix + json.dumps(tok, ensure_ascii=False) + "}}\n\n").encode()

    def finish(self) -> bytes:
        out = ""
        if self.has_text:
            out += self._event("content_block_stop", {"type": "content_block_stop", "index": 0})
        out += self._event("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {
                "input_tokens": self.n_in, "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0, "output_tokens": self.n_out,
            },
        })
        out += self._event("message_stop", {"type": "message_stop"})
        return out.encode()

    def error(self) -> bytes:
        return self._event("error", {
            "type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"},
        }).encode()

    def complete(self, text: str, tokens: list[str]) -> dict[str, Any]:
        return {
            "id": self.msg_id, "type": "message", "role": "assistant", "model": self.model,
            "content": [{"type": "text", "text": text}] if text else [],
            "stop_reason": "end_turn", "stop_sequence": None, "usage": self._usage(len(tokens)),
        }

    def error_status(self, kind: str, message: str | None = None) -> tuple[int, Any]:
        status, etype, msg = {
            "rate_limit": (429, "rate_limit_error",
                           "This request would exceed the rate limit for your organization of "
                           "50 requests per minute. For details, refer to: "
                           "https://docs.claude.com/en/api/rate-limits."),
            "overloaded": (529, "overloaded_error", "Overloaded"),
            "server": (500, "api_error", "Internal server error"),
            "auth": (401, "authentication_error", "invalid x-api-key"),
            "bad_request": (400, "invalid_request_error", "invalid request"),
        }[kind]
        return status, {
            "type": "error", "error": {"type": etype, "message": message or msg},
            "request_id": self.req_id,
        }


class _OpenAIEnc(_Enc):
    provider = "openai"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.cid = f"chatcmpl-Wire{self.seq:020d}"
        self.req_id = f"req_{uuid.UUID(int=self.seq).hex}"
        so = self.body.get("stream_options")
        self.include_usage = bool(isinstance(so, dict) and so.get("include_usage"))
        self.logprobs = bool(self.body.get("logprobs"))
        top = self.body.get("top_logprobs")
        self.top = top if isinstance(top, int) and top > 0 else 0
        self._finish_sent = False
        head = {
            "id": self.cid, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "service_tier": "default", "system_fingerprint": "fp_w1re5e7e",
        }
        self._prefix = "data: " + _dumps(head)[:-1] + ',"choices":[{"index":0,"delta":{"content":'
        self._usage_null = ',"usage":null' if self.include_usage else ""

    def headers(self, stream: bool) -> list[tuple[str, str]]:
        return [
            ("x-request-id", self.req_id),
            ("openai-organization", "org-wireserver"),
            ("openai-processing-ms", "7"),
            ("openai-project", "proj_wireserver"),
            ("openai-version", "2020-10-01"),
            ("x-ratelimit-limit-requests", "10000"),
            ("x-ratelimit-remaining-requests", "9999"),
            ("x-ratelimit-reset-requests", "6ms"),
        ]

    def _token_logprobs(self, i: int, tok: str) -> dict[str, Any]:
        lp = _logprob(i)
        return {
            "token": tok, "logprob": lp, "bytes": list(tok.encode()),
            "top_logprobs": [
                {"token": t, "logprob": l, "bytes": list(t.encode())}
                for t, l in _top_alternatives(i, tok, lp, self.top)
            ] if self.top else [],
        }

    def _chunk(self, delta: dict[str, Any], finish: str | None, logprobs: Any) -> str:
        head = {
            "id": self.cid, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "service_tier": "default", "system_fingerprint": "fp_w1re5e7e",
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
        }
        if self.include_usage:
            head["usage"] = None
        return f"data: {_dumps(head)}\n\n"

    def start(self) -> bytes:
        lp = {"content": [], "refusal": None} if self.logprobs else None
        return self._chunk({"role": "assistant", "content": "", "refusal": None}, None, lp).encode()

    def token(self, i: int, tok: str, last: bool) -> bytes:
        if self.logprobs:
            lp = _dumps({"content": [self._token_logprobs(i, tok)], "refusal": None})
        else:
            lp = "null"
        fr = "null"
        if last:
            fr = '"stop"'
            self._finish_sent = True
        return (
            self._prefix + json.dumps(tok, ensure_ascii=False)
            + '},"logprobs":' + lp + ',"finish_reason":' + fr + "}]" + self._usage_null + "}\n\n"
        ).encode()

    def _usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.n_in, "completion_tokens": self.n_out,
            "total_tokens": self.n_in + self.n_out,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0,
            },
        }

    def finish(self) -> bytes:
        out = ""
        if not self._finish_sent:
            out += self._chunk({}, "stop", None)
        if self.include_usage:
            out += "data: " + _dumps({
                "id": self.cid, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "service_tier": "default",
                "system_fingerprint": "fp_w1re5e7e", "choices": [], "usage": self._usage(),
            }) + "\n\n"
        out += "data: [DONE]\n\n"
        return out.encode()

    def error(self) -> bytes:
        return ("data: " + _dumps({"error": {
            "message": "The server had an error while processing your request. Sorry about that!",
            "type": "server_error", "param": None, "code": None,
        }}) + "\n\n").encode()

    def complete(self, text: str, tokens: list[str]) -> dict[str, Any]:
        lp = None
        if self.logprobs:
            lp = {"content": [self._token_logprobs(i, t) for i, t in enumerate(tokens)],
                  "refusal": None}
        return {
            "id": self.cid, "object": "chat.completion", "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None,
                            "annotations": []},
                "logprobs": lp, "finish_reason": "stop",
            }],
            "usage": self._usage(), "service_tier": "default",
            "system_fingerprint": "fp_w1re5e7e",
        }

    def error_status(self, kind: str, message: str | None = None) -> tuple[int, Any]:
        if kind == "rate_limit":
            status, err = 429, {
                "message": f"Rate limit reached for {self.model} in organization org-wireserver "
                           "on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try "
                           f"again in {self.server.retry_after}s. Visit "
                           "https://platform.openai.com/account/rate-limits to learn more.",
                "type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded",
            }
        elif kind == "overloaded":
            status, err = 503, {
                "message": "The server is overloaded or not ready yet.",
                "type": "server_error", "param": None, "code": None,
            }
        elif kind == "server":
            status, err = 500, {
                "message": "The server had an error while processing your request. "
                           "Sorry about that!",
                "type": "server_error", "param": None, "code": None,
            }
        elif kind == "auth":
            status, err = 401, {
                "message": "Incorrect API key provided: sk-test-0123456789abcdef. You can find "
                           "your API key at https://platform.openai.com/account/api-keys.",
                "type": "invalid_request_error", "param": None, "code": "invalid_api_key",
            }
        else:
            status, err = 400, {
                "message": message or "invalid request", "type": "invalid_request_error",
                "param": None, "code": None,
            }
        if message and kind != "bad_request":
            err["message"] = message
        return status, {"error": err}


class _OllamaEnc(_Enc):
    provider = "ollama"
    stream_content_type = "application/x-ndjson"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.logprobs = bool(self.body.get("logprobs"))
        top = self.body.get("top_logprobs")
        self.top = top if isinstance(top, int) and top > 0 else 0
        self._model_json = json.dumps(self.model, ensure_ascii=False)

    def _token_logprobs(self, i: int, tok: str) -> dict[str, Any]:
        lp = _logprob(i)
        d: dict[str, Any] = {"token": tok, "logprob": lp}
        if self.top:
            d["top_logprobs"] = [
                {"token": t, "logprob": l} for t, l in _top_alternatives(i, tok, lp, self.top)
            ]
        return d

    def token(self, i: int, tok: str, last: bool) -> bytes:
        extra = ""
        if self.logprobs:
            extra = ',"logprobs":' + _dumps([self._token_logprobs(i, tok)])
        return (
            '{"model":' + self._model_json + ',"created_at":"' + _now_iso_ns()
            + '","message":{"role":"assistant","content":'
            + _go_json(json.dumps(tok, ensure_ascii=False)) + "}" + _go_json(extra)
            + ',"done":false}\n'
        ).encode()

    def _stats(self) -> dict[str, Any]:
        total = max(3_000_000, int((time.monotonic() - self.t0) * 1e9))
        load, prompt = 1_000_000, 2_000_000
        return {
            "total_duration": total, "load_duration": load,
            "prompt_eval_count": self.n_in, "prompt_eval_duration": prompt,
            "eval_count": self.n_out, "eval_duration": max(1, total - load - prompt),
        }

    def finish(self) -> bytes:
        d = {
            "model": self.model, "created_at": _now_iso_ns(),
            "message": {"role": "assistant", "content": ""},
            "done": True, "done_reason": "stop", **self._stats(),
        }
        return (_dumps(d) + "\n").encode()

    def error(self) -> bytes:
        return (_dumps({"error": "an error was encountered while running the model: "
                                 "unexpected EOF"}) + "\n").encode()

    def complete(self, text: str, tokens: list[str]) -> dict[str, Any]:
        d: dict[str, Any] = {
            "model": self.model, "created_at": _now_iso_ns(),
            "message": {"role": "assistant", "content": text},
            "done": True, "done_reason": "stop", **self._stats(),
        }
        if self.logprobs:
            d["logprobs"] = [self._token_logprobs(i, t) for i, t in enumerate(tokens)]
        return d

    def error_status(self, kind: str, message: str | None = None) -> tuple[int, Any]:
        status, msg = {
            "rate_limit": (429, "too many requests, please try again later"),
            "overloaded": (503, "server busy, please try again.  maximum pending requests exceeded"),
            "server": (500, "llama runner process has terminated: exit status 2"),
            "auth": (401, "unauthorized"),
            "bad_request": (400, "invalid request"),
        }[kind]
        return status, {"error": message or msg}


_ENCODERS: dict[str, type[_Enc]] = {
    "anthropic": _AnthropicEnc, "openai": _OpenAIEnc, "ollama": _OllamaEnc,
}


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") in ("text", "input_text"):
                parts.append(str(part.get("text", "")))
            elif isinstance(part, str):
                parts.append(part)
        return "".join(parts)
    return ""


def _messages(body: Any) -> list[dict[str, Any]]:
    if isinstance(body, dict) and isinstance(body.get("messages"), list):
        return [m for m in body["messages"] if isinstance(m, dict)]
    return []


def _last_user_text(body: Any) -> str:
    for m in reversed(_messages(body)):
        if m.get("role") == "user":
            return _text_of(m.get("content"))
    return ""


def _continues(provider: str, body: Any) -> bool:
    msgs = _messages(body)
    if provider == "openai":
        return any(m.get("role") == "assistant" for m in msgs)
    return bool(msgs) and msgs[-1].get("role") == "assistant"


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class WireServer:
    """Loopback server speaking the Anthropic, OpenAI and Ollama streaming wire formats."""

    # Tunables: plain attributes, read when a request arrives.
    slow_rate: float = 25.0  # tokens/s for "slow"
    slow_tokens: int = 100
    stall_seconds: float = 120.0  # a stall ends after this long at the latest
    firehose_tokens: int = 20000
    retry_after: str = "1"  # retry-after header of the 429 scenario
    big_tokens: int = 400
    big_token_size: int = 16384
    piece_delay: float = 0.001  # "multibyte": a real sleep every `piece_sleep_every` writes
    piece_sleep_every: int = 4  # (at most ~150 real sleeps per body; other writes just yield)
    write_timeout: float = 120.0  # give up on a client that does not read for this long
    idle_timeout: float = 300.0  # close idle keep-alive connections after this long
    head_delay: float = 0.0  # seconds before a streamed answer's response head (a slow service)

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.url = ""
        self.requests: list[RecordedRequest] = []
        self._progress: list[ResponseProgress] = []
        self._once: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[_Conn] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._seq = 0
        self._accepted = 0
        self._start_error: BaseException | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "WireServer":
        with self._state_lock:
            if self._thread is not None:
                return self
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            sock = socket.create_server((self.host, self.port), family=family, backlog=128)
            sock.setblocking(False)
            port = sock.getsockname()[1]
            host = f"[{self.host}]" if ":" in self.host else self.host
            self.port = port
            self.url = f"http://{host}:{port}"
            ready = threading.Event()
            self._start_error = None
            thread = threading.Thread(
                target=self._run, args=(sock, ready), name=f"wire-server-{port}", daemon=True
            )
            self._thread = thread
            thread.start()
            if not ready.wait(10.0) or self._start_error is not None:
                err = self._start_error
                self._thread = None
                sock.close()
                raise RuntimeError(f"wire server failed to start: {err!r}")
            return self

    def _run(self, sock: socket.socket, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, sock=sock, limit=_MAX_LINE)
            )
        except BaseException as e:  # pragma: no cover - startup failure
            self._start_error = e
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            with contextlib.suppress(BaseException):
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for t in pending:
                    t.cancel()
                if pending:
                    loop.run_until_complete(asyncio.wait(pending, timeout=1.0))
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            with contextlib.suppress(Exception):
                conn.transport.abort()
        tasks = [t for t in self._tasks if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)

    def stop(self) -> None:
        with self._state_lock:
            thread, loop = self._thread, self._loop
            self._thread = None
            if thread is None:
                return
        if loop is not None and not loop.is_closed():
            try:
                fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
                with contextlib.suppress(Exception):
                    fut.result(2.0)
                loop.call_soon_threadsafe(loop.stop)
            except RuntimeError:  # loop already closed
                pass
        thread.join(5.0)
        self._loop = None
        self._server = None

    def __enter__(self) -> "WireServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---- public helpers ----------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        return {
            "ANTHROPIC_BASE_URL": self.url,
            "ANTHROPIC_API_KEY": "sk-ant-test-0123456789",
            "OPENAI_BASE_URL": self.url + "/v1",
            "OPENAI_API_KEY": "sk-test-0123456789abcdef",
            "OLLAMA_HOST": self.url,
        }

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._progress.clear()
            self._once.clear()
            self._accepted = 0

    def responses(self) -> list[ResponseProgress]:
        with self._lock:
            return list(self._progress)

    @property
    def connections_accepted(self) -> int:
        """TCP connections accepted since start/reset (to check keep-alive reuse)."""
        return self._accepted

    def tokens_for(self, scenario: str) -> list[str]:
        return list(self._tokens(self._resolve(scenario), "other", None))

    # ---- scenarios ---------------------------------------------------------------------------

    @staticmethod
    def _resolve(model: Any) -> str:
        name = str(model) if model is not None else ""
        if name.endswith(":latest"):
            name = name[: -len(":latest")]
        return name if name in SCENARIOS else "normal"

    def _tokens(self, scenario: str, provider: str, body: Any) -> list[str]:
        if scenario in ("normal", "429", "overload-once"):
            return list(NORMAL_TOKENS)
        if scenario == "multibyte":
            return list(MULTIBYTE_TOKENS)
        if scenario == "long":
            return list(_words(2000))
        if scenario == "slow":
            return list(_words(max(0, int(self.slow_tokens))))
        if scenario == "firehose":
            return list(_words(max(0, int(self.firehose_tokens))))
        if scenario in ("error-mid", "drop-mid", "reset-mid"):
            return list(NORMAL_TOKENS[:5])
        if scenario == "stall":
            return list(NORMAL_TOKENS[:3])
        if scenario == "cutoff":
            if body is not None and _continues(provider, body):
                return _tokenize(CUTOFF_CONTINUATION)
            return _tokenize(CUTOFF_FIRST)
        if scenario == "big":
            return list(_big(max(0, int(self.big_tokens)), max(1, int(self.big_token_size))))
        if scenario == "echo":
            return _tokenize(_last_user_text(body)) if body is not None else []
        return []  # empty, stall-start, 500, 401

    def _plan(self, scenario: str, provider: str, body: Any) -> _Plan:
        tokens = self._tokens(scenario, provider, body)
        end = {
            "error-mid": "error", "drop-mid": "drop", "reset-mid": "reset", "stall": "stall",
            "stall-start": "stall-start",
        }.get(scenario, "finish")
        if scenario == "cutoff" and not _continues(provider, body):
            end = "drop"
        plan = _Plan(tokens=tokens, end=end)
        if scenario == "slow":
            plan.delay = 1.0 / self.slow_rate if self.slow_rate > 0 else 0.0
        elif scenario == "multibyte":
            plan.pieces = True
        elif scenario == "firehose":
            plan.pack = True
        elif scenario == "big":
            plan.big = True
        return plan

    def _once_first(self, provider: str, scenario: str) -> bool:
        with self._lock:
            key = (provider, scenario)
            if key in self._once:
                return False
            self._once.add(key)
            return True

    # ---- connection handling -----------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        conn = _Conn(reader, writer)
        self._conns.add(conn)
        with self._lock:
            self._accepted += 1
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while not conn.transport.is_closing():
                try:
                    req = await asyncio.wait_for(self._read_request(conn), self.idle_timeout)
                except asyncio.TimeoutError:
                    break
                except _BadRequest as e:
                    out = _Out(self, conn, None, asyncio.Event())
                    await self._send_json(out, e.status, {"error": {"message": e.message,
                                                                    "type": "invalid_request_error"}},
                                          [], keep=False)
                    break
                if req is None:
                    break
                if not await self._dispatch(conn, req):
                    break
        except (ConnectionError, OSError, _ClientGone, _GiveUp):
            pass
        except asyncio.CancelledError:
            # stop(): end quietly (asyncio's stream callback calls task.exception(), which
            # would log a traceback for a cancelled handler task).
            pass
        except Exception:  # pragma: no cover - a bug in this module
            log.exception("wire server: connection handler failed")
        finally:
            self._conns.discard(conn)
            if task is not None:
                self._tasks.discard(task)
            if not conn.transport.is_closing():
                conn.transport.close()

    async def _read_request(self, conn: _Conn) -> _Request | None:
        line = await conn.readline()
        while line in (b"\r\n", b"\n"):
            line = await conn.readline()
        if not line:
            return None
        try:
            method, target, version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        except ValueError:
            raise _BadRequest(400, "malformed request line") from None
        headers: dict[str, str] = {}
        total = 0
        while True:
            h = await conn.readline()
            if not h:
                raise ConnectionError("connection closed in headers")
            total += len(h)
            if total > _MAX_HEADERS:
                raise _BadRequest(431, "headers too large")
            if h in (b"\r\n", b"\n"):
                break
            name, sep, value = h.decode("latin-1").partition(":")
            if not sep:
                raise _BadRequest(400, "malformed header line")
            name, value = name.strip().lower(), value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if headers.get("expect", "").lower() == "100-continue":
            conn.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await self._read_chunked(conn)
        elif "content-length" in headers:
            try:
                n = int(headers["content-length"])
            except ValueError:
                raise _BadRequest(400, "bad content-length") from None
            if n < 0 or n > _MAX_BODY:
                raise _BadRequest(413, "body too large")
            body = await conn.readexactly(n)
        else:
            body = b""
        path, _, query = target.partition("?")
        return _Request(method.upper(), target, path, query, version.strip(), headers, body)

    async def _read_chunked(self, conn: _Conn) -> bytes:
        body = bytearray()
        while True:
            size_line = (await conn.readline()).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise _BadRequest(400, "bad chunk size") from None
            if size == 0:
                while (await conn.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(body)
            if len(body) + size > _MAX_BODY:
                raise _BadRequest(413, "body too large")
            body += await conn.readexactly(size)
            await conn.readexactly(2)  # CRLF after the chunk

    @staticmethod
    def _provider_of(req: _Request) -> str:
        p = req.path.rstrip("/") or "/"
        if p.startswith("/v1/messages"):
            return "anthropic"
        if p in ("/v1/chat/completions", "/chat/completions"):
            return "openai"
        if p.startswith("/v1/models"):
            return "anthropic" if "anthropic-version" in req.headers else "openai"
        if p.startswith("/api/") or p == "/":
            return "ollama"
        return "other"

    async def _dispatch(self, conn: _Conn, req: _Request) -> bool:
        """Serve one request; return whether the connection stays open."""
        provider = self._provider_of(req)
        body: Any = None
        bad_json = False
        if req.raw_body:
            try:
                body = json.loads(req.raw_body)
            except ValueError:
                bad_json = True
        path = req.path.rstrip("/") or "/"
        chat_routes = {
            "/v1/messages": "anthropic", "/v1/chat/completions": "openai",
            "/chat/completions": "openai", "/api/chat": "ollama",
        }
        is_chat = path in chat_routes
        scenario = None
        if is_chat:
            scenario = self._resolve(body.get("model") if isinstance(body, dict) else None)
        with self._lock:
            self._seq += 1
            seq = self._seq
            self.requests.append(RecordedRequest(
                method=req.method, path=req.path, headers=dict(req.headers), body=body,
                provider=provider, scenario=scenario, query=req.query,
            ))
        keep = not (
            "close" in req.headers.get("connection", "").lower()
            or (req.version == "HTTP/1.0"
                and "keep-alive" not in req.headers.get("connection", "").lower())
        )
        out = _Out(self, conn, None, asyncio.Event())

        if is_chat:
            if req.method != "POST":
                await self._send_json(out, 405, {"error": {"message": "method not allowed",
                                                           "type": "invalid_request_error"}},
                                      [], keep)
                return keep
            enc = _ENCODERS[provider](self, seq, body if isinstance(body, dict) else {},
                                      _Plan([], "finish"))
            return await self._chat(conn, req, enc, provider, scenario or "normal", body,
                                    bad_json, keep)

        if req.method == "GET" and path == "/api/tags":
            now = datetime.now(timezone.utc).isoformat()
            models = [{
                "name": s, "model": s, "modified_at": now, "size": 1_000_000 + i,
                "digest": f"{i:064x}",
                "details": {"parent_model": "", "format": "gguf", "family": "wire",
                            "families": ["wire"], "parameter_size": "1M",
                            "quantization_level": "Q4_K_M"},
            } for i, s in enumerate(SCENARIOS)]
            await self._send_json(out, 200, {"models": models}, [], keep)
        elif req.method == "GET" and path == "/api/version":
            await self._send_json(out, 200, {"version": "0.12.6"}, [], keep)
        elif req.method in ("GET", "HEAD") and path == "/":
            await self._send_bytes(out, 200, b"Ollama is running",
                                   [("Content-Type", "text/plain; charset=utf-8")], keep,
                                   head_only=req.method == "HEAD")
        elif req.method == "GET" and path == "/v1/models":
            if provider == "anthropic":
                data = [{"type": "model", "id": s, "display_name": s.title(),
                         "created_at": "2025-01-01T00:00:00Z"} for s in SCENARIOS]
                payload: Any = {"data": data, "has_more": False, "first_id": data[0]["id"],
                                "last_id": data[-1]["id"]}
            else:
                payload = {"object": "list", "data": [
                    {"id": s, "object": "model", "created": 1_735_689_600,
                     "owned_by": "wire-server"} for s in SCENARIOS]}
            await self._send_json(out, 200, payload, [], keep)
        elif req.method == "POST" and path == "/v1/messages/count_tokens":
            n = max(1, len(_dumps(body.get("messages", "") if isinstance(body, dict) else "")) // 4)
            await self._send_json(out, 200, {"input_tokens": n}, [], keep)
        else:
            await self._send_json(out, 404, {
                "type": "error",
                "error": {"type": "not_found_error", "message": f"Not Found: {req.path}"},
            }, [], keep)
        return keep

    # ---- responses ---------------------------------------------------------------------------

    def _common_headers(self) -> list[tuple[str, str]]:
        return [("Date", email.utils.formatdate(usegmt=True))]

    async def _send_bytes(self, out: _Out, status: int, data: bytes,
                          headers: list[tuple[str, str]], keep: bool,
                          head_only: bool = False) -> None:
        hdrs = self._common_headers() + headers + [("Content-Length", str(len(data)))]
        if not keep:
            hdrs.append(("Connection", "close"))
        out.write_head(status, hdrs)
        if not head_only:
            await out.raw(data)

    async def _send_json(self, out: _Out, status: int, obj: Any,
                         headers: list[tuple[str, str]], keep: bool) -> None:
        await self._send_bytes(out, status, _dumps(obj).encode(),
                               [("Content-Type", "application/json")] + headers, keep)

    def _validate(self, provider: str, body: Any) -> str | None:
        """A message for an HTTP 400, like the real service would send, or None."""
        if not isinstance(body, dict):
            return "request body must be a JSON object"
        if provider == "anthropic":
            if "max_tokens" not in body:
                return "max_tokens: Field required"
            msgs = body.get("messages")
            if not isinstance(msgs, list) or not msgs:
                return "messages: at least one message is required"
            for i, m in enumerate(msgs):
                role = m.get("role") if isinstance(m, dict) else None
                if role not in ("user", "assistant"):
                    return (f'messages.{i}.role: Input should be \'user\' or \'assistant\'. The '
                            "Messages API accepts a top-level `system` parameter, not "
                            f'"{role}" as an input message role.')
            last = msgs[-1]
            if last.get("role") == "assistant":
                text = _text_of(last.get("content"))
                if text and text != text.rstrip():
                    return "messages: final assistant content cannot end with trailing whitespace"
        elif provider == "openai":
            if not body.get("model"):
                return "you must provide a model parameter"
            if not isinstance(body.get("messages"), list):
                return "Missing required parameter: 'messages'."
        elif provider == "ollama":
            if not body.get("model"):
                return "model is required"
        return None

    async def _chat(self, conn: _Conn, req: _Request, enc: _Enc, provider: str, scenario: str,
                    body: Any, bad_json: bool, keep: bool) -> bool:
        out = _Out(self, conn, None, asyncio.Event())
        base = self._common_headers() + enc.headers(False)

        async def http_error(kind: str, message: str | None = None,
                             extra: list[tuple[str, str]] | None = None) -> bool:
            status, payload = enc.error_status(kind, message)
            ctype = "application/json; charset=utf-8" if provider == "ollama" else "application/json"
            data = _dumps(payload).encode()
            hdrs = base + (extra or []) + [("Content-Type", ctype),
                                           ("Content-Length", str(len(data)))]
            if not keep:
                hdrs.append(("Connection", "close"))
            out.write_head(status, hdrs)
            await out.raw(data)
            return keep

        # Authentication (presence only), then validation, then the scenario's HTTP errors.
        if provider == "anthropic" and not (req.headers.get("x-api-key")
                                            or req.headers.get("authorization")):
            return await http_error("auth", "x-api-key header is required")
        if provider == "openai" and not req.headers.get("authorization"):
            return await http_error("auth", "You didn't provide an API key.")
        if bad_json:
            return await http_error("bad_request", "There was an error parsing the body")
        problem = self._validate(provider, body)
        if problem:
            return await http_error("bad_request", problem)
        if scenario == "429" and self._once_first(provider, "429"):
            return await http_error("rate_limit", extra=[("retry-after", str(self.retry_after))])
        if scenario == "overload-once" and self._once_first(provider, "overload-once"):
            return await http_error("overloaded")
        if scenario == "500":
            return await http_error("server")
        if scenario == "401":
            return await http_error("auth")

        plan = self._plan(scenario, provider, body)
        enc = _ENCODERS[provider](self, enc.seq, body, plan)
        stream = bool(body.get("stream", provider == "ollama"))
        if not stream and plan.end == "error":
            return await http_error("overloaded" if provider == "anthropic" else "server")

        progress = ResponseProgress(provider=provider, scenario=scenario, stream=stream)
        with self._lock:
            self._progress.append(progress)
        gone = asyncio.Event()
        out = _Out(self, conn, progress, gone)
        watcher = asyncio.ensure_future(self._watch(conn, gone))
        try:
            if stream:
                keep = await self._stream(out, conn, enc, plan, base, keep)
            else:
                keep = await self._complete(out, conn, enc, plan, base, keep)
            if not progress.client_gone:
                progress.finished = True
            return keep
        except _ClientGone:
            if not progress.finished:
                progress.client_gone = True
            conn.transport.abort()
            return False
        except _GiveUp as e:
            if e.planned:
                progress.finished = True
            conn.transport.abort()
            return False
        finally:
            watcher.cancel()
            with contextlib.suppress(Exception):  # _watch swallows its own cancellation
                await watcher

    async def _watch(self, conn: _Conn, gone: asyncio.Event) -> None:
        """Notice the client going away while we are writing or waiting."""
        try:
            while True:
                data = await conn.reader.read(65536)
                if not data:
                    conn.eof = True
                    break
                conn.buf += data  # pipelined bytes: keep them for the next request
        except asyncio.CancelledError:
            return
        except Exception:
            pass
        gone.set()

    async def _end_badly(self, out: _Out, conn: _Conn, how: str) -> None:
        """Drop ("drop": FIN, no terminating chunk) or reset ("reset": RST) the connection."""
        await out.flush_out()
        if how == "reset":
            await out.sleep(0.05)  # let the client read what was sent before the RST
        if out.progress is not None:
            out.progress.finished = True
        if how == "reset":
            conn.set_linger_zero()
            conn.transport.abort()
        else:
            conn.transport.close()

    async def _stream(self, out: _Out, conn: _Conn, enc: _Enc, plan: _Plan,
                      base: list[tuple[str, str]], keep: bool) -> bool:
        if plan.big:
            keep = False
            sock = conn.writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
            conn.transport.set_write_buffer_limits(high=16384, low=4096)
        hdrs = base + [
            ("Content-Type", enc.stream_content_type),
            ("Cache-Control", "no-cache"),
            ("Transfer-Encoding", "chunked"),
        ]
        if not keep:
            hdrs.append(("Connection", "close"))
        if self.head_delay:
            await asyncio.sleep(self.head_delay)
        out.write_head(200, hdrs)

        if plan.end == "stall-start":
            await out.drain()
            await out.hold(self.stall_seconds)
            return False  # not reached

        pieces: list[bytes] = [enc.start()]
        n = len(plan.tokens)

        async def emit(data: bytes) -> None:
            if plan.pieces:
                pieces.append(data)
            elif data:
                await out.chunk(data)

        if plan.pack:
            buf = bytearray(enc.start())
            for i, tok in enumerate(plan.tokens):
                buf += enc.token(i, tok, i == n - 1 and plan.end == "finish")
                if len(buf) >= 32768:
                    await out.chunk(bytes(buf))
                    buf.clear()
            if buf:
                await out.chunk(bytes(buf))
        else:
            if not plan.pieces:
                await out.chunk(pieces.pop())
            for i, tok in enumerate(plan.tokens):
                if plan.delay:
                    await out.sleep(plan.delay)
                await emit(enc.token(i, tok, i == n - 1 and plan.end == "finish"))

        tail = b""
        if plan.end == "finish":
            tail = enc.finish()
        elif plan.end == "error":
            tail = enc.error()

        if plan.pieces:
            data = b"".join(pieces) + tail
            every = self._sleep_every(len(data))
            k = 0
            pos = 0
            while pos < len(data):
                size = _PIECE_SIZES[k % len(_PIECE_SIZES)]
                k += 1
                piece = data[pos:pos + size]
                pos += size
                if pos >= len(data) and plan.end in ("finish", "error"):
                    await out.chunk(piece, final=True)
                    break
                await out.chunk(piece)
                await out.sleep(self.piece_delay if k % every == 0 else 0)
            if plan.end in ("finish", "error"):
                return keep
        elif plan.end in ("finish", "error"):
            await out.chunk(tail, final=True)
            return keep

        if plan.end == "stall":
            await out.hold(self.stall_seconds)
        await self._end_badly(out, conn, plan.end)
        return False

    def _sleep_every(self, nbytes: int) -> int:
        n_pieces = nbytes * len(_PIECE_SIZES) // sum(_PIECE_SIZES) + 1
        return max(1, int(self.piece_sleep_every), n_pieces // 150)

    async def _complete(self, out: _Out, conn: _Conn, enc: _Enc, plan: _Plan,
                        base: list[tuple[str, str]], keep: bool) -> bool:
        """A non-streaming answer (``"stream": false``)."""
        if plan.end in ("stall", "stall-start"):
            await out.hold(self.stall_seconds)
        if plan.delay:
            await out.sleep(plan.delay * len(plan.tokens))
        data = _dumps(enc.complete("".join(plan.tokens), plan.tokens)).encode()
        if plan.big:
            keep = False
        hdrs = base + [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        if not keep:
            hdrs.append(("Connection", "close"))
        out.write_head(200, hdrs)
        if plan.end in ("drop", "reset"):
            await out.raw(data[: len(data) // 2])
            await self._end_badly(out, conn, plan.end)
            return False
        if plan.pieces:
            every = self._sleep_every(len(data))
            pos = k = 0
            while pos < len(data):
                size = _PIECE_SIZES[k % len(_PIECE_SIZES)]
                k += 1
                last = pos + size >= len(data)
                await out.raw(data[pos:pos + size], final=last)
                pos += size
                if not last:
                    await out.sleep(self.piece_delay if k % every == 0 else 0)
        else:
            step = 65536
            for pos in range(0, len(data), step):
                await out.raw(data[pos:pos + step], final=pos + step >= len(data))
        return keep


# --------------------------------------------------------------------------------------------
# python -m streamchat.testing.wire
# --------------------------------------------------------------------------------------------


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m streamchat.testing.wire",
        description="Loopback server speaking the Anthropic, OpenAI and Ollama wire formats.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="port (default: any free port)")
    args = parser.parse_args(list(argv) if argv is not None else None)

    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    server = WireServer(args.host, args.port).start()
    # Explicit handlers: a shell starts background jobs with SIGINT ignored, and Ctrl+C should
    # never print a traceback.
    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for k, v in server.env().items():
            print(f"export {k}={v}")
        print(f"# wire server listening on {server.url}; models (scenarios): {' '.join(SCENARIOS)}")
        print("# Ctrl+C to stop")
        sys.stdout.flush()
        while not stop.is_set():
            stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        for sig, handler in old.items():
            signal.signal(sig, handler)
    print("# wire server stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
