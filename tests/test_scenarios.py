"""Every wire scenario for every provider, through the Python API and through ``streamchat ask``.

Two halves:

* **API** — ``create_provider("openai:normal")`` + :class:`~streamchat.core.stream.Stream` against the
  session's wire server (``server`` / ``provider_env`` fixtures); every event is read from a lossless
  bus subscription and checked together with ``stream.state``, ``stream.text`` and ``stream.error``.
* **CLI** — ``python -m streamchat ask …`` in subprocesses. Start-up costs 1–3 s of CPU per process
  (the anthropic SDK alone imports in ~2 s), so the runs are not started test by test: the
  module-scoped ``batch`` fixture looks at which CLI tests were selected, starts all their runs at
  once on a small thread pool (runs that mostly wait — slow streams, stalls, retries — first) while
  the API tests are still running, and each CLI test then only collects its result. The batch has a
  wire server of its own, which nobody resets while runs are in flight; a run is found by its key
  (the ``run`` parameter of the test, e.g. ``"openai:stall"``), see ``RUNS``.

Expected outcomes come from the wire server (``tokens_for``) and from the error tree (exit codes are
the error classes' ``exit_code``), not from copies of them.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any, AsyncIterator, Iterator

import pytest

from conftest import cli_env
from streamchat.core.bus import EventBus, collect
from streamchat.core.errors import (
    AuthenticationError,
    ConfigError,
    ConnectionLostError,
    OverloadedError,
    ProviderError,
    StreamchatError,
    StreamTimeoutError,
)
from streamchat.core.events import (
    TERMINAL_EVENTS,
    Completed,
    Event,
    Failed,
    Retrying,
    StreamStarted,
    Token,
    event_to_dict,
)
from streamchat.core.request import ChatRequest, Chunk
from streamchat.core.stream import RetryPolicy, Stream
from streamchat.providers import create_provider, provider_names
from streamchat.providers.base import Provider, Timeouts
from streamchat.testing.wire import (
    CUTOFF_CONTINUATION,
    CUTOFF_FIRST,
    NORMAL_TOKENS,
    SCENARIOS,
    WireServer,
    _logprob,
)

PROVIDERS = ("anthropic", "openai", "ollama")
#: The scenarios every provider is run through (SCENARIOS minus the load/echo ones, see
#: test_matrix_covers_every_behaviour_scenario).
MATRIX = (
    "normal", "multibyte", "long", "slow", "error-mid", "drop-mid", "reset-mid", "stall",
    "stall-start", "429", "overload-once", "500", "401", "empty", "cutoff",
)
NORMAL_TEXT = "".join(NORMAL_TOKENS)
KEY_VAR = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY", "ollama": "OLLAMA_API_KEY"}
#: What the OpenAI 401 body echoes (and the key the wire server hands out): must never be shown.
ECHOED_KEY = "sk-test-0123456789abcdef"

pytestmark = pytest.mark.timeout(150)


# ================================================================================================
# Expectations
# ================================================================================================


@dataclass(frozen=True)
class Expect:
    text: str  # the whole answer (success) or the partial answer that must be kept (failure)
    error: type[StreamchatError] | None
    requests: int  # chat requests the server gets
    retries: int


def expected_error(provider: str, scenario: str) -> type[StreamchatError] | None:
    if scenario == "error-mid":
        # Anthropic's in-stream error is an ``overloaded_error``; the others are plain errors.
        return OverloadedError if provider == "anthropic" else ProviderError
    return {
        "drop-mid": ConnectionLostError,
        "reset-mid": ConnectionLostError,
        "cutoff": ConnectionLostError,
        "stall": StreamTimeoutError,
        "stall-start": StreamTimeoutError,
        "500": ProviderError,
        "401": AuthenticationError,
    }.get(scenario)


def expect(provider: str, scenario: str, server: WireServer) -> Expect:
    retried = scenario in ("429", "overload-once")
    return Expect(
        text="".join(server.tokens_for(scenario)),  # failures: exactly the tokens sent before it
        error=expected_error(provider, scenario),
        requests=2 if retried else 1,
        retries=1 if retried else 0,
    )


def with_final_newline(text: str) -> str:
    """What ``ask`` prints for ``text``: the text, ending with exactly one newline (none if empty)."""
    return text if not text or text.endswith("\n") else text + "\n"


def chat_requests(server: WireServer, provider: str, model: str) -> list[Any]:
    return [
        r for r in list(server.requests)
        if r.provider == provider and r.method == "POST" and isinstance(r.body, dict)
        and r.body.get("model") == model
    ]


def check_error_message(message: str) -> None:
    """One line a person can read: no SDK dump, no traceback."""
    assert message and "\n" not in message
    assert "Traceback" not in message
    assert "Error code" not in message, f"raw SDK error string shown: {message!r}"
    assert "{" not in message, f"raw error body shown: {message!r}"


def test_matrix_covers_every_behaviour_scenario() -> None:
    """A scenario added to the wire server must be added here (or deliberately left out)."""
    assert set(MATRIX) <= set(SCENARIOS)
    # firehose/big are load scenarios (benchmarks); echo is used by the prompt/terminal tests below.
    assert set(SCENARIOS) - set(MATRIX) == {"firehose", "big", "echo"}


# ================================================================================================
# API: Stream + provider adapters against the session's wire server
# ================================================================================================

API_TIMEOUTS = Timeouts(connect=5, first_token=20, idle=20, total=30)
SCENARIO_TIMEOUTS = {
    "stall": Timeouts(connect=5, first_token=20, idle=1, total=30),
    "stall-start": Timeouts(connect=5, first_token=1, idle=20, total=30),
}
API_SLOW_TOKENS = 25  # "slow" is 25 tokens/s: one second of streaming


@pytest.fixture
async def make_provider() -> AsyncIterator[Any]:
    """Make providers for this test; their SDK clients are closed afterwards."""
    made: list[Provider] = []

    def make(model_id: str, timeouts: Timeouts | None = None) -> Provider:
        provider = create_provider(model_id, timeouts=timeouts or API_TIMEOUTS)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()


async def drive(stream: Stream, limit: float = 40.0) -> list[Event]:
    """Run ``stream`` to its end; every event it published, read from a lossless subscription."""
    sub = stream.bus.subscribe(stream_id=stream.id, policy="block", maxsize=256)
    reader = asyncio.ensure_future(collect(sub))
    try:
        snapshot = await asyncio.wait_for(stream.run(), limit)
        events = await asyncio.wait_for(reader, 5)
    finally:
        if not reader.done():
            reader.cancel()
    assert snapshot.state == stream.state and snapshot.text == stream.text
    return events


def first_indexes(counts: list[int]) -> list[int]:
    """The ``index`` each Token event must have: the index of the first provider token it holds
    (an event holds ``count`` tokens when the SDK had several buffered — see BufferPolicy)."""
    out, n = [], 0
    for count in counts:
        out.append(n)
        n += count
    return out


def check_event_sequence(stream: Stream, events: list[Event], provider: str, model: str) -> None:
    """The shape every stream's events have, whatever happened."""
    assert events, "no events"
    assert all(e.stream_id == stream.id for e in events)
    terminal = [e for e in events if isinstance(e, TERMINAL_EVENTS)]
    assert len(terminal) == 1 and events[-1] is terminal[0], [e.type for e in events]
    starts = [e for e in events if isinstance(e, StreamStarted)]
    assert isinstance(events[0], StreamStarted)
    assert [s.attempt for s in starts] == list(range(1, len(starts) + 1))
    assert all(s.provider == provider and s.model == model for s in starts)
    retries = [e for e in events if isinstance(e, Retrying)]
    assert len(retries) == len(starts) - 1
    tokens = [e for e in events if isinstance(e, Token)]
    assert all(t.count >= 1 for t in tokens)
    assert [t.index for t in tokens] == first_indexes([t.count for t in tokens])
    if tokens:  # no token before the last attempt started (retries happen before the first token)
        assert events.index(tokens[0]) > events.index(starts[-1])
    times = [e.t for e in events]
    assert times == sorted(times)


@pytest.mark.parametrize("scenario", MATRIX)
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_api_scenario(server: WireServer, provider_env: dict, make_provider: Any,
                            provider: str, scenario: str) -> None:
    server.slow_tokens = API_SLOW_TOKENS
    exp = expect(provider, scenario, server)
    timeouts = SCENARIO_TIMEOUTS.get(scenario, API_TIMEOUTS)
    stream = Stream(make_provider(f"{provider}:{scenario}", timeouts), ChatRequest.from_prompt("hi"),
                    bus=EventBus())
    events = await drive(stream)

    check_event_sequence(stream, events, provider, scenario)
    tokens = [e for e in events if isinstance(e, Token)]
    retries = [e for e in events if isinstance(e, Retrying)]
    terminal = events[-1]
    assert "".join(t.text for t in tokens) == stream.text == exp.text
    assert all(t.confidence is None for t in tokens)  # not asked for
    assert len(retries) == exp.retries
    assert len(chat_requests(server, provider, scenario)) == exp.requests
    assert stream.stats().tokens == sum(t.count for t in tokens)

    if exp.error is None:
        assert stream.state == "completed" and stream.error is None
        assert isinstance(terminal, Completed)
        assert terminal.text == exp.text
        assert terminal.finish_reason
        assert terminal.usage is not None
        assert terminal.usage["output_tokens"] == len(server.tokens_for(scenario))
    else:
        assert stream.state == "failed"
        assert type(stream.error) is exp.error, repr(stream.error)
        assert isinstance(terminal, Failed)
        assert terminal.error is stream.error and terminal.partial == exp.text
        assert stream.error.provider == provider
        check_error_message(str(stream.error))
        assert stream.stats().retries == 0  # nothing after the first token or non-retryable

    if scenario == "long":  # all 2000, in order (however the SDK's bursts grouped them)
        assert sum(t.count for t in tokens) == len(server.tokens_for("long")) == 2000
    elif scenario == "multibyte":
        assert "\ufffd" not in stream.text
    elif scenario == "slow":  # published as they arrive, spread over ~1 s
        n = len(server.tokens_for("slow"))
        gaps = [b.t - a.t for a, b in zip(tokens, tokens[1:])]
        assert len(tokens) >= n // 4, f"{len(tokens)} events for {n} tokens: not streamed"
        assert tokens[-1].t - tokens[0].t >= 0.6 * (n - 1) / server.slow_rate
        assert median(gaps) >= 0.5 / server.slow_rate, "tokens came in a burst, not spread in time"
    elif scenario == "stall":
        assert stream.error.which == "idle"
        # The idle clock starts when the last data arrived from the network, which is a little
        # before its (merged) token event is published — under load, up to ~0.1 s before.
        waited = terminal.t - tokens[-1].t
        assert 0.75 <= waited <= 3.0, waited
    elif scenario == "stall-start":
        assert stream.error.which == "first_token"
        waited = terminal.t - events[0].t
        assert 0.9 <= waited <= 3.0, waited
    elif scenario in ("429", "overload-once"):
        (retry,) = retries
        second = [e for e in events if isinstance(e, StreamStarted)][1]
        assert retry.attempt == 1 and retry.delay > 0
        assert second.t - retry.t >= retry.delay - 0.02  # it really waited
        assert ("rate limited" if scenario == "429" else "overloaded") in retry.reason
        check_error_message(retry.reason)
        if scenario == "429" and provider != "ollama":  # ollama: test_api_ollama_429_honours_retry_after
            assert retry.delay == pytest.approx(float(server.retry_after), abs=0.05)
        if scenario == "overload-once":  # no retry-after: the policy's first backoff step
            assert retry.delay <= RetryPolicy().base_delay
    elif scenario == "401":
        assert KEY_VAR[provider] in str(stream.error)
        dumped = json.dumps([event_to_dict(e) for e in events], default=str)
        assert ECHOED_KEY not in dumped and ECHOED_KEY not in repr(stream.error)


async def test_api_ollama_429_honours_retry_after(server: WireServer, provider_env: dict,
                                                  make_provider: Any) -> None:
    stream = Stream(make_provider("ollama:429"), ChatRequest.from_prompt("hi"), bus=EventBus())
    events = await drive(stream)
    assert stream.state == "completed"
    (retry,) = [e for e in events if isinstance(e, Retrying)]
    assert retry.delay == pytest.approx(float(server.retry_after), abs=0.05)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_api_cutoff_then_continue(server: WireServer, provider_env: dict, make_provider: Any,
                                        provider: str) -> None:
    stream = Stream(make_provider(f"{provider}:cutoff"), ChatRequest.from_prompt("hi"), bus=EventBus())
    await drive(stream)
    assert stream.state == "failed" and isinstance(stream.error, ConnectionLostError)
    assert stream.text == CUTOFF_FIRST

    follow = stream.continuation()
    events = await drive(follow)
    assert follow.state == "completed", follow.error
    assert isinstance(events[-1], Completed)
    assert events[-1].text == CUTOFF_FIRST + CUTOFF_CONTINUATION
    first, second = chat_requests(server, provider, "cutoff")
    assert second.body["messages"] != first.body["messages"]  # the partial went back to the model
    assert any(m.get("role") == "assistant" and m.get("content") == CUTOFF_FIRST.rstrip()
               for m in second.body["messages"])


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_api_confidence(server: WireServer, provider_env: dict, make_provider: Any,
                              provider: str) -> None:
    """OpenAI and Ollama turn the server's logprobs into confidence; Anthropic has none to give."""
    stream = Stream(make_provider(f"{provider}:normal"), ChatRequest.from_prompt("hi", confidence=True),
                    bus=EventBus())
    events = await drive(stream)
    assert stream.state == "completed"
    tokens = [e for e in events if isinstance(e, Token)]
    assert "".join(t.text for t in tokens) == NORMAL_TEXT
    if provider == "anthropic":
        assert all(t.confidence is None for t in tokens)
        return
    (request,) = chat_requests(server, provider, "normal")
    assert request.body.get("logprobs") is True
    assert all(t.count == 1 for t in tokens)  # tokens with a confidence are never merged
    expected = [math.exp(_logprob(i)) for i in range(len(tokens))]
    assert [t.confidence for t in tokens] == pytest.approx(expected, rel=1e-6)
    assert all(0.0 < t.confidence <= 1.0 for t in tokens)


class _BufferedProvider(Provider):
    """Yields its whole answer without ever suspending, like an SDK whose response is already in
    its read buffer (what the OpenAI SDK does with a short answer from a fast server)."""

    name = "buffered"

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        for text in NORMAL_TOKENS:
            yield Chunk(text=text)
        yield Chunk(finish_reason="stop")


async def test_api_cancel_from_an_inline_handler() -> None:
    stream = Stream(_BufferedProvider("x"), ChatRequest.from_prompt("hi"), bus=EventBus())
    answers: list[bool] = []

    class CancelOnFirstToken:  # what the CLI's printers do when the reader goes away
        def on_token_received(self, text: str, index: int) -> None:
            if index == 0:
                answers.append(stream.cancel())

    stream.bus.register(CancelOnFirstToken())

    async def caller() -> tuple[str, bool]:
        await stream.run()
        try:
            await asyncio.sleep(0)  # the caller's own next await must not be cancelled
        except asyncio.CancelledError:
            return stream.state, True
        return stream.state, False

    state, leaked = await asyncio.wait_for(asyncio.ensure_future(caller()), 5)
    assert answers, "the handler never saw a token"
    assert not leaked, "a CancelledError leaked out of Stream.run() into its caller"
    # cancel() said yes, so the stream must end cancelled (with whatever text it had)
    assert state == ("cancelled" if answers[0] else "completed")
    assert NORMAL_TEXT.startswith(stream.text)


# ================================================================================================
# CLI: ``python -m streamchat`` in subprocesses, run as one concurrent batch
# ================================================================================================

EVIL_PROMPT = "safe \x1b]0;pwned\x07\x1b[2J\rgone\x9b31m end"  # OSC title, BEL, clear, CR, C1 CSI
WORKERS = max(4, min(6, 2 * (os.cpu_count() or 2)))
RUN_LIMIT = 60.0  # a run that takes longer is killed (and its test fails)
STALL_TIMEOUT = 2.0
STALL_MARGIN = 1.5  # timeout fired -> error line written, on a loaded 2-core machine
CLI_SLOW_TOKENS = 200  # at 25 tokens/s
STOP_WITHIN = 4.0  # Ctrl+C / closed pipe -> process gone (the rest of "slow" would take ~8 s)


@dataclass(frozen=True)
class CliRun:
    args: tuple[str, ...]  # after ``python -m streamchat``
    stdin: bytes | None = None  # piped in; None: /dev/null
    stdin_tty: bool = False  # stdin is a terminal (a pty) with nothing typed
    stdout_tty: bool = False  # stdout is a terminal (a pty)
    env: tuple[tuple[str, str | None], ...] = ()  # overrides; None removes; "{closed}" is replaced
    sigint_after: int | None = None  # Ctrl+C once this many stdout bytes arrived
    close_after: int | None = None  # close stdout (like ``| head -c``) once this many bytes arrived
    waits: bool = False  # mostly waits (slow stream, stall, retries): start it early
    solo: bool = False  # has a short time budget of its own: run first, while nothing else runs

    @property
    def model(self) -> str | None:
        if "-m" in self.args:
            return self.args[self.args.index("-m") + 1]
        return None


def _ask(model: str, *extra: str, prompt: str = "hi", **kw: Any) -> CliRun:
    return CliRun(("ask", prompt, "-m", model, *extra), **kw)


WAITING = {"slow", "stall", "stall-start", "429", "overload-once"}
RUNS: dict[str, CliRun] = {}
for _p in PROVIDERS:
    for _s in MATRIX:
        _extra = ("--timeout", f"{STALL_TIMEOUT:g}") if _s in ("stall", "stall-start") else ()
        RUNS[f"{_p}:{_s}"] = _ask(f"{_p}:{_s}", *_extra, waits=_s in WAITING)
    RUNS[f"{_p} ctrl-c"] = _ask(f"{_p}:slow", sigint_after=1, waits=True)
RUNS.update({
    "openai --json": _ask("openai:json-normal", "--json"),
    "ollama:error-mid --json": _ask("ollama:error-mid:latest", "--json"),  # ":latest": same scenario
    "openai:401 --json": _ask("openai:401", "--json"),
    "openai --confidence": _ask("openai:confidence", "--json", "--confidence"),
    "prompt from stdin": CliRun(("ask", "-m", "ollama:echo"), stdin=b"hello from stdin\n"),
    "prompt from stdin with -": CliRun(("ask", "-", "-m", "ollama:echo"), stdin=b"dash means stdin"),
    "no prompt, tty stdin": CliRun(("ask", "-m", "ollama:normal"), stdin_tty=True),
    "empty prompt": _ask("ollama:normal", prompt=""),
    "blank prompt": _ask("ollama:normal", prompt=" \t "),
    "blank stdin": CliRun(("ask", "-m", "ollama:normal"), stdin=b"\n"),
    "model nonsense": _ask("nonsense"),
    "model foo:bar": _ask("foo:bar"),
    "no OPENAI_API_KEY": _ask("openai:normal", env=(("OPENAI_API_KEY", None),)),
    "no ANTHROPIC_API_KEY": _ask("anthropic:normal", env=(("ANTHROPIC_API_KEY", None),)),
    "ollama not there": _ask("ollama:normal", env=(("OLLAMA_HOST", "{closed}"),), waits=True),
    "head ollama:slow": _ask("ollama:slow", close_after=1, waits=True),
    "head openai:slow": _ask("openai:slow", close_after=1, waits=True),
    # NDJSON writes the start line before the request: the pipe is closed before the answer comes
    "head openai:normal --json": _ask("openai:normal", "--json", close_after=1),
    "escapes to a terminal": _ask("ollama:echo", prompt=EVIL_PROMPT, stdout_tty=True),
    "escapes to a pipe": _ask("ollama:echo:latest", prompt=EVIL_PROMPT),
    # ``models`` gives each provider's status check 0.5 s (+0.5 s grace) including imports
    "models": CliRun(("models",), env=(("COLUMNS", "250"),), solo=True),
    "models --json": CliRun(("models", "--json"), solo=True),
    "--version": CliRun(("--version",)),
})
#: How many runs send each model id (request counts are only checked for a model used once).
MODEL_USES = Counter(run.model for run in RUNS.values() if run.model)


@dataclass(repr=False)
class CliResult:
    key: str
    run: CliRun
    argv: list[str]
    rc: int
    out: bytes
    err: bytes
    chunks: list[tuple[float, int]]  # (arrival time, bytes) of each stdout read
    started: float
    ended: float
    acted_at: float | None = None  # when Ctrl+C was sent or stdout closed
    error_at: float | None = None  # when the first stderr output arrived

    @property
    def stdout(self) -> str:
        return self.out.decode("utf-8")

    @property
    def stderr(self) -> str:
        return self.err.decode("utf-8", "replace")

    @property
    def first_output(self) -> float:
        assert self.chunks, f"no output at all\n{self}"
        return self.chunks[0][0]

    def error_line(self) -> str:
        """The single ``error: …`` line on stderr (asserted to be exactly one line)."""
        text = self.stderr
        assert "Traceback" not in text, f"traceback on stderr\n{self}"
        assert text.endswith("\n") and text.count("\n") == 1, f"not exactly one line on stderr\n{self}"
        assert text.startswith("error: "), self
        message = text[len("error: "):-1]
        check_error_message(message)
        return message

    def __repr__(self) -> str:  # what an assertion shows
        return (f"[{self.key}] {' '.join(self.argv[1:])!r} -> rc={self.rc} "
                f"({self.ended - self.started:.2f} s)\nstdout: {self.out[:600]!r}\nstderr: {self.err[:3000]!r}")


class CliBatch:
    """Runs CLI invocations concurrently against a wire server of its own."""

    def __init__(self, base: Path, workers: int) -> None:
        self.base = base
        self.server = WireServer().start()
        # "slow" streams for 8 s here, so that a Ctrl+C or a closed pipe that did not stop the
        # answer is told apart from one that did, even on a loaded machine.
        self.server.slow_tokens = CLI_SLOW_TOKENS
        # A bound socket that never listens: connecting to it is refused, and nothing else can
        # take the port while the batch runs.
        self._closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._closed.bind(("127.0.0.1", 0))
        self.closed_url = f"http://127.0.0.1:{self._closed.getsockname()[1]}"
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="streamchat-cli")
        self._futures: dict[str, Future] = {}
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._coordinator: threading.Thread | None = None
        self._closing = False

    def start(self, keys: list[str]) -> None:
        """Run ``keys``: the solo ones one after the other first, then the rest on the pool (the
        ones that mostly wait first)."""
        keys = list(dict.fromkeys(keys))
        for key in keys:
            self._futures[key] = Future()
        solo = [k for k in keys if RUNS[k].solo]
        rest = sorted((k for k in keys if not RUNS[k].solo), key=lambda k: not RUNS[k].waits)

        def coordinate() -> None:
            for key in solo:
                self._settle(key)
            for key in rest:
                if self._closing:
                    return
                self._pool.submit(self._settle, key)

        self._coordinator = threading.Thread(target=coordinate, name="streamchat-cli-batch", daemon=True)
        self._coordinator.start()

    def _settle(self, key: str) -> None:
        future = self._futures[key]
        if self._closing or not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(self._run(key))
        except BaseException as exc:  # noqa: BLE001 - handed to the test that reads it
            future.set_exception(exc)

    def result(self, key: str) -> CliResult:
        future = self._futures.get(key)
        if future is None:
            pytest.fail(f"CLI run {key!r} was not scheduled")
        return future.result(timeout=RUN_LIMIT * 3)

    def close(self) -> None:
        self._closing = True
        for future in self._futures.values():
            future.cancel()
        with self._lock:
            for proc in self._procs:
                if proc.poll() is None:
                    proc.kill()
        if self._coordinator is not None:
            self._coordinator.join(RUN_LIMIT)
        self._pool.shutdown(wait=True)
        self.server.stop()
        self._closed.close()

    def _env(self, key: str, run: CliRun) -> dict[str, str]:
        home = self.base / re.sub(r"[^A-Za-z0-9_.-]+", "_", key)
        overrides = {k: (v.replace("{closed}", self.closed_url) if v else v) for k, v in run.env}
        return cli_env(self.server, home, overrides)

    def _run(self, key: str) -> CliResult:
        run = RUNS[key]
        argv = [sys.executable, "-m", "streamchat", *run.args]
        env = self._env(key, run)
        fds: list[int] = []  # pty ends to close at the end
        stdin: Any = subprocess.DEVNULL
        if run.stdin_tty:
            tty_master, tty_in = pty.openpty()
            stdin = tty_in
            fds += [tty_master, tty_in]
        elif run.stdin is not None:
            stdin = subprocess.PIPE
        stdout: Any = subprocess.PIPE
        master = tty_out = None
        if run.stdout_tty:
            master, tty_out = pty.openpty()
            stdout = tty_out
            fds.append(master)
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, env=env)
        with self._lock:
            self._procs.add(proc)
        killer = threading.Timer(RUN_LIMIT, proc.kill)
        killer.start()
        err_chunks: list[tuple[float, bytes]] = []
        err_reader = threading.Thread(target=_read_all, args=(proc.stderr.fileno(), err_chunks), daemon=True)
        err_reader.start()
        out = bytearray()
        chunks: list[tuple[float, int]] = []
        acted_at = None
        try:
            if tty_out is not None:
                os.close(tty_out)  # the child has it; EOF (EIO) on the master when it exits
            if run.stdin is not None:
                proc.stdin.write(run.stdin)
                proc.stdin.close()
            fd = master if master is not None else proc.stdout.fileno()
            while True:
                try:
                    data = os.read(fd, 65536)
                except OSError:  # EIO: the terminal's other side closed
                    break
                if not data:
                    break
                chunks.append((time.monotonic(), len(data)))
                out += data
                if run.sigint_after is not None and acted_at is None and len(out) >= run.sigint_after:
                    proc.send_signal(signal.SIGINT)
                    acted_at = time.monotonic()
                if run.close_after is not None and len(out) >= run.close_after:
                    proc.stdout.close()  # the reader goes away, like ``head -c`` does
                    acted_at = time.monotonic()
                    break
            rc = proc.wait()
            ended = time.monotonic()
            err_reader.join(5)
        finally:
            killer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for fd_ in fds:
                os.close(fd_)
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None and not pipe.closed:
                    pipe.close()
        err = b"".join(data for _, data in err_chunks)
        error_at = err_chunks[0][0] if err_chunks else None
        return CliResult(key, run, argv, rc, bytes(out), err, chunks, started, ended, acted_at, error_at)


def _read_all(fd: int, into: list[tuple[float, bytes]]) -> None:
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            return
        if not data:
            return
        into.append((time.monotonic(), data))


@pytest.fixture(scope="module", autouse=True)
def batch(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliBatch]:
    """Starts every CLI run the selected tests of this module need, at once, in the background."""
    keys = []
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if getattr(item, "module", None) is request.module and callspec and "run" in callspec.params:
            keys.append(callspec.params["run"])
    runner = CliBatch(tmp_path_factory.mktemp("cli"), WORKERS)
    try:
        runner.start(keys)
        yield runner
    finally:
        runner.close()


def parse_ndjson(result: CliResult) -> list[dict[str, Any]]:
    text = result.stdout
    assert text.endswith("\n"), result
    events = [json.loads(line) for line in text.split("\n")[:-1]]
    assert events, result
    for event in events:
        assert isinstance(event, dict) and isinstance(event.get("type"), str), event
    assert len({e["stream_id"] for e in events}) == 1
    return events


# ------------------------------------------------------------------------------------------------
# the scenario matrix
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("run", [f"{p}:{s}" for p in PROVIDERS for s in MATRIX])
def test_cli_scenario(batch: CliBatch, run: str) -> None:
    provider, scenario = run.split(":")
    res = batch.result(run)
    exp = expect(provider, scenario, batch.server)
    assert "Traceback" not in res.stderr, res

    if exp.error is None:
        assert res.rc == 0, res
        assert res.stderr == "", res  # with --model, stderr is for errors only
        assert res.stdout == with_final_newline(exp.text), res
    else:
        assert res.rc == exp.error.exit_code, res
        message = res.error_line()
        assert res.stdout == with_final_newline(exp.text), res  # the partial answer is kept
        assert provider in message

    if MODEL_USES[run] == 1:
        assert len(chat_requests(batch.server, provider, scenario)) == exp.requests, res

    if scenario == "empty":
        # Nothing was said, so nothing is printed: not even a newline (``$(streamchat ask …)`` and
        # ``> file`` get an empty answer, and no blank line appears in a terminal).
        assert res.out == b""
    elif scenario == "slow":
        spread = res.chunks[-1][0] - res.chunks[0][0]
        n = len(batch.server.tokens_for("slow"))
        assert spread >= 0.5 * (n - 1) / batch.server.slow_rate, res
        assert len(res.chunks) >= n // 4, f"{len(res.chunks)} reads: the answer was not streamed"
    elif scenario == "stall":
        # the total timeout runs from just before the request; the stall itself would last 120 s
        after_first = res.error_at - res.first_output
        assert STALL_TIMEOUT / 2 <= after_first <= STALL_TIMEOUT + STALL_MARGIN, (after_first, str(res))
        assert "timed out" in message
    elif scenario == "stall-start":
        assert "timed out" in message
    elif scenario == "401":
        assert KEY_VAR[provider] in message
        assert ECHOED_KEY not in res.stdout + res.stderr


# ------------------------------------------------------------------------------------------------
# NDJSON and confidence
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("run", ["openai --json"])
def test_cli_json(batch: CliBatch, run: str) -> None:
    res = batch.result(run)
    assert res.rc == 0 and res.stderr == "", res
    events = parse_ndjson(res)
    assert events[0]["type"] == "start" and events[0]["provider"] == run.split()[0]
    assert events[-1]["type"] == "complete"
    tokens = [e for e in events if e["type"] == "token"]
    assert "".join(t["text"] for t in tokens) == NORMAL_TEXT == events[-1]["text"]
    assert [t["index"] for t in tokens] == first_indexes([t["count"] for t in tokens])
    assert sum(t["count"] for t in tokens) == len(NORMAL_TOKENS)
    assert all(t["confidence"] is None for t in tokens)  # --confidence not given


@pytest.mark.parametrize("run", ["ollama:error-mid --json"])
def test_cli_json_error(batch: CliBatch, run: str) -> None:
    res = batch.result(run)
    assert res.rc == ProviderError.exit_code, res
    res.error_line()
    events = parse_ndjson(res)
    assert events[-1]["type"] == "error"
    partial = "".join(batch.server.tokens_for("error-mid"))
    assert "".join(e["text"] for e in events if e["type"] == "token") == partial
    assert events[-1]["partial"] == partial
    assert events[-1]["error"]["kind"] == ProviderError.kind


@pytest.mark.parametrize("run", ["openai:401 --json"])
def test_cli_json_401_does_not_leak_the_key(batch: CliBatch, run: str) -> None:
    res = batch.result(run)
    assert res.rc == AuthenticationError.exit_code, res
    assert "OPENAI_API_KEY" in res.error_line()
    events = parse_ndjson(res)
    assert events[-1]["type"] == "error" and events[-1]["error"]["kind"] == AuthenticationError.kind
    assert ECHOED_KEY not in res.stdout and ECHOED_KEY not in res.stderr


@pytest.mark.parametrize("run", ["openai --confidence"])  # ollama's: test_api_confidence
def test_cli_confidence(batch: CliBatch, run: str) -> None:
    res = batch.result(run)
    assert res.rc == 0 and res.stderr == "", res
    tokens = [e for e in parse_ndjson(res) if e["type"] == "token"]
    assert "".join(t["text"] for t in tokens) == NORMAL_TEXT
    assert all(t["count"] == 1 for t in tokens)  # tokens with a confidence are never merged
    confidences = [t["confidence"] for t in tokens]
    assert all(isinstance(c, float) and 0.0 < c <= 1.0 for c in confidences), confidences
    assert confidences == pytest.approx([math.exp(_logprob(i)) for i in range(len(tokens))], rel=1e-6)
    provider = run.split()[0]
    (request,) = chat_requests(batch.server, provider, "confidence")
    assert request.body["logprobs"] is True


# ------------------------------------------------------------------------------------------------
# prompts, model ids, keys, endpoints
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("run, prompt", [
    ("prompt from stdin", "hello from stdin\n"),
    ("prompt from stdin with -", "dash means stdin"),
])
def test_cli_prompt_from_stdin(batch: CliBatch, run: str, prompt: str) -> None:
    res = batch.result(run)
    assert res.rc == 0 and res.stderr == "", res
    assert res.stdout == with_final_newline(prompt)  # "echo" answers with the prompt it got


@pytest.mark.parametrize("run, words", [
    ("no prompt, tty stdin", "no prompt"),
    ("empty prompt", "empty"),
    ("blank prompt", "empty"),
    ("blank stdin", "empty"),
])
def test_cli_bad_prompt(batch: CliBatch, run: str, words: str) -> None:
    res = batch.result(run)
    assert res.rc == 2, res
    assert words in res.error_line()
    assert res.out == b""


@pytest.mark.parametrize("run, named", [
    ("model nonsense", "'nonsense'"), ("model foo:bar", "'foo'"),
])
def test_cli_bad_model_id(batch: CliBatch, run: str, named: str) -> None:
    res = batch.result(run)
    assert res.rc == ConfigError.exit_code == 2, res
    assert named in res.error_line()  # names what was wrong
    assert res.out == b""


@pytest.mark.parametrize("run", ["no OPENAI_API_KEY", "no ANTHROPIC_API_KEY"])
def test_cli_missing_key(batch: CliBatch, run: str) -> None:
    res = batch.result(run)
    var = run.split()[1]
    assert res.rc == AuthenticationError.exit_code == 3, res
    assert f"set {var}" in res.error_line()
    assert res.out == b""


@pytest.mark.parametrize("run", ["ollama not there"])
def test_cli_server_not_there(batch: CliBatch, run: str) -> None:
    res = batch.result(run)
    assert res.rc == ConnectionLostError.exit_code == 6, res
    message = res.error_line()
    assert batch.closed_url in message and "ollama" in message.lower()
    assert res.out == b""


# ------------------------------------------------------------------------------------------------
# Ctrl+C, a reader that goes away, terminals
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("run", [f"{p} ctrl-c" for p in PROVIDERS])
def test_cli_ctrl_c_keeps_the_partial(batch: CliBatch, run: str) -> None:
    res = batch.result(run)
    full = "".join(batch.server.tokens_for("slow"))
    assert res.rc == 130, res
    assert "Traceback" not in res.stderr
    assert res.stderr.count("\n") == 1 and "cancelled" in res.stderr and "kept" in res.stderr, res
    answer = res.stdout
    assert answer.endswith("\n")
    assert answer[:-1] and full.startswith(answer[:-1]) and answer[:-1] != full, res
    assert res.ended - res.acted_at < STOP_WITHIN, "Ctrl+C did not stop the answer promptly"


@pytest.mark.parametrize("run", ["head ollama:slow", "head openai:slow"])
def test_cli_reader_goes_away(batch: CliBatch, run: str) -> None:
    """``streamchat ask … | head -c 1``: no traceback, no noise; the answer stops being fetched."""
    res = batch.result(run)
    assert res.stderr == "", res
    assert res.rc == 141, res  # what a shell reports for a writer ended by SIGPIPE, like cat
    assert res.ended - res.acted_at < STOP_WITHIN, "the stream went on after the reader left"


@pytest.mark.parametrize("run", ["head openai:normal --json"])
def test_cli_reader_goes_away_from_a_buffered_answer(batch: CliBatch, run: str) -> None:
    res = batch.result(run)
    assert "Traceback" not in res.stderr, res
    assert res.stderr == "" and res.rc in (0, 141), res


@pytest.mark.parametrize("run", ["escapes to a terminal"])
def test_cli_escape_sequences_are_neutralised_on_a_terminal(batch: CliBatch, run: str) -> None:
    res = batch.result(run)
    assert res.rc == 0 and res.stderr == "", res
    shown = res.out
    assert b"\x1b" not in shown and b"\x07" not in shown, shown  # no ESC, no BEL reaches the terminal
    assert "\x9b" not in shown.decode("utf-8"), shown  # nor a C1 CSI
    assert shown.endswith(b"\r\n") and b"\r" not in shown[:-2], shown  # the terminal's own CR only
    visible = shown.decode("utf-8")
    for word in ("safe", "]0;pwned", "[2J", "gone", "31m end"):
        assert word in visible, visible


@pytest.mark.parametrize("run", ["escapes to a pipe"])
def test_cli_text_to_a_pipe_is_unchanged(batch: CliBatch, run: str) -> None:
    res = batch.result(run)
    assert res.rc == 0 and res.stderr == "", res
    assert res.stdout == EVIL_PROMPT + "\n"


# ------------------------------------------------------------------------------------------------
# models, python -m streamchat
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("run", ["models"])
def test_cli_models(batch: CliBatch, run: str) -> None:
    res = batch.result(run)
    assert res.rc == 0 and res.stderr == "", res
    rows = {line.split()[0]: line for line in res.stdout.splitlines() if line.strip()}
    for name in provider_names():
        assert name in rows, res
    assert f"server up at {batch.server.url}" in rows["ollama"]
    assert rows["ollama"].split()[1] == "yes"
    assert all(rows[p].split()[1] == "yes" for p in ("anthropic", "openai"))
    for scenario in ("normal", "slow", "echo"):
        assert scenario in res.stdout


@pytest.mark.parametrize("run", ["models --json"])
def test_cli_models_json(batch: CliBatch, run: str) -> None:
    res = batch.result(run)
    assert res.rc == 0 and res.stderr == "", res
    data = json.loads(res.stdout)
    providers = {p["name"]: p for p in data["providers"]}
    assert list(providers) == provider_names()
    ollama = providers["ollama"]
    assert ollama["ready"] is True and ollama["endpoint"] == batch.server.url
    assert ollama["models"] == list(SCENARIOS)
    assert providers["anthropic"]["ready"] and providers["anthropic"]["endpoint"] == batch.server.url
    assert providers["openai"]["ready"] and providers["openai"]["endpoint"] == batch.server.url + "/v1"
    assert data["default"]["model"].startswith("anthropic:")
    assert "ANTHROPIC_API_KEY" in data["default"]["reason"]


@pytest.mark.parametrize("run", ["--version"])
def test_python_dash_m_streamchat(batch: CliBatch, run: str) -> None:
    from streamchat import __version__

    assert (Path(__file__).resolve().parents[1] / "streamchat" / "__main__.py").is_file()
    res = batch.result(run)
    assert res.rc == 0 and res.stderr == "", res
    assert res.stdout == f"streamchat {__version__}\n"
