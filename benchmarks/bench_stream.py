"""Streaming benchmarks for streamchat.

    .venv/bin/python benchmarks/bench_stream.py            # full run (~2.5 min on 2 CPUs)
    .venv/bin/python benchmarks/bench_stream.py --quick    # smoke check (~45 s): 3 rounds, 5,000 tokens
    .venv/bin/python benchmarks/bench_stream.py --profile  # also write cProfile reports

What it measures (figures also written to benchmarks/results/stream.json; --quick writes
stream-quick.json; profiles go to benchmarks/results/profile_*.txt when a target is missed):

1. Streaming path vs bare SDK, per provider, against the loopback wire server's ``firehose`` model
   (20,000 tokens as fast as the server can write them):
   (a) a bare loop over the official SDK's stream (same client options and request as the adapter),
       counting text;
   (b) ``Stream(provider, request, bus=bus).run()`` with 3 subscribers on the bus — a coalescing
       subscription read by a task, a handler object with ``on_token_received``, a ``block``
       subscription read by a task.
   Runs are interleaved in one process (a warm-up round, then a, b, a, b, ...: at least 5 rounds,
   more for fast providers within a time budget). Reported: median tokens/s of each, ratio b/a
   (target >= 0.9), the same ratio on the client thread's CPU time, full-text correctness of both,
   and the server's own rate when read by a raw httpx loop (is the server the bottleneck?).
2. Bus dispatch alone: 200,000 pre-built Token events through ``EventBus.publish`` with the same 3
   subscribers (target >= 200,000 events/s), median of 5.
3. Start-up: ``streamchat --help`` wall time (target < 0.3 s, median of 10 after a warm run), the
   import time of ``streamchat.core.stream, streamchat.core.bus``, and import hygiene: which of
   anthropic/openai/ollama/textual/llama_cpp ``streamchat ask -m PROVIDER:normal`` imports.
4. Per-token overhead: extra microseconds per token of (b) over (a), wall and client CPU.
5. Where streamchat's own per-token time goes, without network or SDK (a fake provider): Stream with
   0 and 3 subscribers, with buffering, and the parts (Token(), accumulate(), publish, Chunk()).

The wire server runs in a thread of this process, as ``streamchat.testing.wire`` provides it: its CPU
work competes with the client for the GIL (and for the machine's cores), and counts in both (a) and (b).
Wall-clock figures suffer when other processes use the CPUs: the load average is recorded, and the
CPU-time figures next to them are the steadier ones.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_common.py
from _common import code_version  # noqa: E402
RESULTS = Path(__file__).resolve().parent / "results"
VENV_BIN = Path(sys.executable).parent

from streamchat.core.bus import EventBus  # noqa: E402
from streamchat.core.events import Completed, StreamStarted, Token  # noqa: E402
from streamchat.core.request import ChatRequest  # noqa: E402
from streamchat.core.stream import Stream  # noqa: E402
from streamchat.testing.wire import WireServer  # noqa: E402

PROVIDERS = ("anthropic", "openai", "ollama")
FIREHOSE_TOKENS = 20_000
BUS_EVENTS = 200_000
TARGET_RATIO = 0.9
TARGET_BUS_EPS = 200_000
TARGET_HELP_S = 0.3
PROMPT = "Say a lot, quickly."
MAX_TOKENS = 32_000


# ------------------------------------------------------------------------------------------------
# Small helpers


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class ThreadCPU:
    """CPU seconds (user+sys) of one OS thread of this process, from /proc (10 ms resolution)."""

    def __init__(self, native_id: int | None) -> None:
        self.path = f"/proc/self/task/{native_id}/stat" if native_id else None
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def read(self) -> float | None:
        if not self.path:
            return None
        try:
            with open(self.path) as f:
                stat = f.read()
        except OSError:
            return None
        fields_ = stat[stat.rindex(")") + 2 :].split()
        return (int(fields_[11]) + int(fields_[12])) / self.tick  # utime, stime


@dataclass
class RunResult:
    tokens: int
    text: str
    seconds: float
    client_cpu: float  # CPU of the main (client) thread
    server_cpu: float | None  # CPU of the wire server's thread
    ok: bool = True
    detail: str = ""

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")


async def timed(fn: Callable[[], Awaitable[tuple[int, str]]], server_cpu: ThreadCPU) -> RunResult:
    gc.collect()
    s0 = server_cpu.read()
    c0 = time.thread_time()
    t0 = time.perf_counter()
    tokens, text = await fn()
    t1 = time.perf_counter()
    c1 = time.thread_time()
    s1 = server_cpu.read()
    return RunResult(tokens, text, t1 - t0, c1 - c0, (s1 - s0) if s0 is not None and s1 is not None else None)


# ------------------------------------------------------------------------------------------------
# (a) bare SDK loops — the same SDK, the same client options and request as the adapter uses


class Bare:
    def __init__(self, server: WireServer) -> None:
        import anthropic
        import httpx
        import ollama
        import openai

        self.anthropic = anthropic.AsyncAnthropic(max_retries=0, timeout=anthropic.Timeout(None, connect=10.0))
        self.openai = openai.AsyncOpenAI(max_retries=0, timeout=openai.Timeout(None, connect=10.0))
        self.ollama = ollama.AsyncClient(host=server.url, timeout=httpx.Timeout(None, connect=10.0))
        self.messages = [{"role": "user", "content": PROMPT}]

    async def run(self, provider: str) -> tuple[int, str]:
        return await getattr(self, f"_{provider}")()

    # The adapters read the SDK's own stream of plain event dicts (no pydantic model per event):
    # the bare loops do the same.
    async def _anthropic(self) -> tuple[int, str]:
        import anthropic

        parts: list[str] = []
        body = {"model": "firehose", "max_tokens": MAX_TOKENS, "messages": self.messages, "stream": True}
        response = await self.anthropic.post("/v1/messages", body=body, cast_to=object, stream=True,
                                             stream_cls=anthropic.AsyncStream[object])
        async with response:
            async for event in response:
                if event["type"] == "content_block_delta" and event["delta"]["type"] == "text_delta":
                    parts.append(event["delta"]["text"])
        return len(parts), "".join(parts)

    async def _openai(self) -> tuple[int, str]:
        import openai

        parts: list[str] = []
        body = {"model": "firehose", "messages": self.messages, "stream": True,
                "stream_options": {"include_usage": True}, "max_tokens": MAX_TOKENS}
        response = await self.openai.post("/chat/completions", body=body, cast_to=object, stream=True,
                                          stream_cls=openai.AsyncStream[object])
        async with response:
            async for chunk in response:
                if chunk["choices"]:
                    text = chunk["choices"][0]["delta"].get("content")
                    if text:
                        parts.append(text)
        return len(parts), "".join(parts)

    async def _ollama(self) -> tuple[int, str]:
        parts: list[str] = []
        stream = await self.ollama.chat(
            model="firehose", messages=self.messages, stream=True, options={"num_predict": MAX_TOKENS}
        )
        async for part in stream:
            text = part.message.content if part.message is not None else None
            if text:
                parts.append(text)
        return len(parts), "".join(parts)

    async def aclose(self) -> None:
        await self.anthropic.close()
        await self.openai.close()
        client = getattr(self.ollama, "_client", None)
        if client is not None:
            await client.aclose()


# ------------------------------------------------------------------------------------------------
# (b) streamchat's path: Stream + EventBus with three subscribers


class CountingHandler:
    """A handler object (called inline by publish)."""

    __slots__ = ("parts", "started", "completed")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.started = 0
        self.completed: str | None = None

    def on_stream_start(self, metadata: dict[str, Any]) -> None:
        self.started += 1

    def on_token_received(self, token: str, index: int) -> None:
        self.parts.append(token)

    def on_stream_complete(self, full_response: str) -> None:
        self.completed = full_response


async def consume(sub: Any) -> tuple[int, list[str], int]:
    """Read a subscription to its end: (token events, texts, provider tokens they hold)."""
    events = 0
    count = 0
    parts: list[str] = []
    async for event in sub:
        if type(event) is Token:
            events += 1
            count += event.count
            parts.append(event.text)
    return events, parts, count


def per_token_policy() -> Any:
    """A BufferPolicy that publishes exactly one event per provider token (None if this version of
    streamchat has no such switch, i.e. it always does)."""
    from streamchat.core.stream import BufferPolicy

    if "merge" in getattr(BufferPolicy, "__dataclass_fields__", {}):
        return BufferPolicy(merge=False)
    return None


def three_subscribers(bus: EventBus, stream_id: str) -> tuple[asyncio.Task, CountingHandler, asyncio.Task]:
    coalescing = bus.subscribe(stream_id=stream_id)  # default policy: coalesce
    handler = CountingHandler()
    bus.register(handler, stream_id=stream_id)
    blocking = bus.subscribe(stream_id=stream_id, policy="block")
    return asyncio.ensure_future(consume(coalescing)), handler, asyncio.ensure_future(consume(blocking))


class Streamchat:
    def __init__(self) -> None:
        from streamchat.providers import create_provider

        self.providers = {name: create_provider(f"{name}:firehose") for name in PROVIDERS}
        self.request = ChatRequest.from_prompt(PROMPT, max_tokens=MAX_TOKENS)
        #: what the last run's subscribers saw, for the correctness check
        self.last: dict[str, Any] = {}

    async def run(self, provider: str, buffer: Any = None) -> tuple[int, str]:
        bus = EventBus()
        stream = Stream(self.providers[provider], self.request, bus=bus, buffer=buffer)
        coalesce_task, handler, block_task = three_subscribers(bus, stream.id)
        await stream.run()
        c_events, c_parts, c_count = await coalesce_task
        b_events, b_parts, b_count = await block_task
        text = stream.text
        self.last = {
            "state": stream.state,
            "error": str(stream.error) if stream.error else None,
            "tokens": stream.stats().tokens,
            "coalesce_text_ok": "".join(c_parts) == text,
            "coalesce_events": c_events,
            "coalesce_tokens": c_count,
            "block_text_ok": "".join(b_parts) == text,
            "block_events": b_events,
            "block_tokens": b_count,
            "handler_text_ok": "".join(handler.parts) == text and handler.completed == text,
            "handler_events": len(handler.parts),
            "snapshot_ok": stream.snapshot.text == text,
        }
        return stream.stats().tokens, text

    def last_ok(self, n_expected: int, expected: str, text: str) -> bool:
        """Every subscriber got the full text; the subscriptions account for every provider token
        (an event may hold several: ``Token.count``)."""
        c = self.last
        return (text == expected and c["state"] == "completed" and c["tokens"] == n_expected
                and c["coalesce_text_ok"] and c["block_text_ok"] and c["handler_text_ok"] and c["snapshot_ok"]
                and c["coalesce_tokens"] == n_expected and c["block_tokens"] == n_expected)

    async def aclose(self) -> None:
        for p in self.providers.values():
            await p.aclose()


# ------------------------------------------------------------------------------------------------
# The server alone: a raw httpx read loop (no parsing at all)


class RawReader:
    def __init__(self, server: WireServer) -> None:
        import httpx

        self.client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10.0))
        url = server.url
        msgs = [{"role": "user", "content": PROMPT}]
        env = server.env()
        self.requests = {
            "anthropic": (f"{url}/v1/messages",
                          {"model": "firehose", "max_tokens": MAX_TOKENS, "messages": msgs, "stream": True},
                          {"x-api-key": env["ANTHROPIC_API_KEY"], "anthropic-version": "2023-06-01"}),
            "openai": (f"{url}/v1/chat/completions",
                       {"model": "firehose", "messages": msgs, "stream": True, "max_tokens": MAX_TOKENS,
                        "stream_options": {"include_usage": True}},
                       {"authorization": f"Bearer {env['OPENAI_API_KEY']}"}),
            "ollama": (f"{url}/api/chat",
                       {"model": "firehose", "messages": msgs, "stream": True,
                        "options": {"num_predict": MAX_TOKENS}}, {}),
        }
        self.last_bytes = 0

    async def run(self, provider: str) -> tuple[int, str]:
        url, body, headers = self.requests[provider]
        n = 0
        async with self.client.stream("POST", url, json=body, headers=headers) as r:
            async for chunk in r.aiter_raw():
                n += len(chunk)
        self.last_bytes = n
        return FIREHOSE_TOKENS, ""

    async def aclose(self) -> None:
        await self.client.aclose()


# ------------------------------------------------------------------------------------------------
# 1 + 4: streaming path vs bare SDK


async def bench_streaming(server: WireServer, rounds: int, raw_rounds: int, max_rounds: int,
                          budget_s: float, per_token_rounds: int) -> dict[str, Any]:
    server_cpu = ThreadCPU(server._thread.native_id if server._thread else None)
    expected = "".join(server.tokens_for("firehose"))
    n_expected = len(server.tokens_for("firehose"))
    bare = Bare(server)
    sc = Streamchat()
    raw = RawReader(server)
    per_token = per_token_policy()
    out: dict[str, Any] = {}
    try:
        for provider in PROVIDERS:
            # warm-up round (imports, connection pool, caches)
            await timed(lambda: bare.run(provider), server_cpu)
            await timed(lambda: sc.run(provider), server_cpu)
            if per_token is not None:
                await timed(lambda: sc.run(provider, per_token), server_cpu)
            await timed(lambda: raw.run(provider), server_cpu)
            a_runs: list[RunResult] = []
            b_runs: list[RunResult] = []
            c_runs: list[RunResult] = []  # (c): streamchat, one event per token (merge=False)
            checks: list[dict[str, Any]] = []
            t_provider = time.perf_counter()
            # at least `rounds`; fast providers get more (up to `max_rounds`) within `budget_s`
            while len(a_runs) < rounds or (
                len(a_runs) < max_rounds and time.perf_counter() - t_provider < budget_s
            ):
                a = await timed(lambda: bare.run(provider), server_cpu)
                a.ok = a.tokens == n_expected and a.text == expected
                a_runs.append(a)
                b = await timed(lambda: sc.run(provider), server_cpu)
                check = dict(sc.last)
                b.ok = b.tokens == n_expected and sc.last_ok(n_expected, expected, b.text)
                checks.append(check)
                b_runs.append(b)
                if per_token is not None and len(c_runs) < per_token_rounds:
                    c = await timed(lambda: sc.run(provider, per_token), server_cpu)
                    c.ok = (c.tokens == n_expected and sc.last_ok(n_expected, expected, c.text)
                            and sc.last["block_events"] == n_expected and sc.last["handler_events"] == n_expected)
                    c_runs.append(c)
            raw_runs = [await timed(lambda: raw.run(provider), server_cpu) for _ in range(raw_rounds)]

            a_rate = median([r.rate for r in a_runs])
            b_rate = median([r.rate for r in b_runs])
            raw_rate = median([r.rate for r in raw_runs])
            paired = [(b.seconds - a.seconds) / n_expected * 1e6 for a, b in zip(a_runs, b_runs)]
            a_srv = [r.server_cpu for r in a_runs if r.server_cpu is not None]
            b_srv = [r.server_cpu for r in b_runs if r.server_cpu is not None]
            raw_srv = [r.server_cpu for r in raw_runs if r.server_cpu is not None]
            us_a = 1e6 / a_rate
            us_raw = 1e6 / raw_rate
            out[provider] = {
                "tokens": n_expected,
                "rounds": len(a_runs),
                "bare_tokens_per_s": a_rate,
                "streamchat_tokens_per_s": b_rate,
                "ratio": b_rate / a_rate,
                "target_ratio": TARGET_RATIO,
                "ratio_ok": b_rate / a_rate >= TARGET_RATIO,
                "bare_us_per_token": us_a,
                "streamchat_us_per_token": 1e6 / b_rate,
                "overhead_us_per_token": 1e6 / b_rate - us_a,
                "overhead_us_per_token_paired_median": median(paired),
                # the same comparison on the client thread's CPU time only (leaves out the server
                # thread and time lost to other processes on a busy machine)
                "client_cpu_ratio": median([r.client_cpu for r in a_runs]) / median([r.client_cpu for r in b_runs]),
                "bare_all_tokens_per_s": [r.rate for r in a_runs],
                "streamchat_all_tokens_per_s": [r.rate for r in b_runs],
                "bare_client_cpu_us_per_token": median([r.client_cpu for r in a_runs]) / n_expected * 1e6,
                "streamchat_client_cpu_us_per_token": median([r.client_cpu for r in b_runs]) / n_expected * 1e6,
                "server_cpu_us_per_token_during_bare": median(a_srv) / n_expected * 1e6 if a_srv else None,
                "server_cpu_us_per_token_during_streamchat": median(b_srv) / n_expected * 1e6 if b_srv else None,
                "bare_correct": all(r.ok for r in a_runs),
                "streamchat_correct": all(r.ok for r in b_runs),
                "streamchat_checks_last": checks[-1] if checks else None,
                # events the Stream published (the block subscriber sees them all): fewer than tokens
                # when it merges tokens that arrived together
                "streamchat_events_median": median([c["block_events"] for c in checks]),
                "streamchat_coalescing_subscriber_events_median": median([c["coalesce_events"] for c in checks]),
                "per_token_rounds": len(c_runs),
                "per_token_tokens_per_s": median([r.rate for r in c_runs]) if c_runs else None,
                "per_token_ratio": median([r.rate for r in c_runs]) / a_rate if c_runs else None,
                "per_token_overhead_us_per_token": (1e6 / median([r.rate for r in c_runs]) - us_a) if c_runs else None,
                "per_token_client_cpu_us_per_token": (median([r.client_cpu for r in c_runs]) / n_expected * 1e6
                                                      if c_runs else None),
                "per_token_correct": all(r.ok for r in c_runs) if c_runs else None,
                "server_raw_tokens_per_s": raw_rate,
                "server_raw_MB_per_s": raw.last_bytes / median([r.seconds for r in raw_runs]) / 1e6,
                "server_raw_bytes": raw.last_bytes,
                "server_raw_us_per_token": us_raw,
                "server_cpu_us_per_token_raw": median(raw_srv) / n_expected * 1e6 if raw_srv else None,
                # share of the bare loop's wall time that the server (plus a raw read) accounts for
                "server_share_of_bare": us_raw / us_a,
                "server_bottleneck": us_raw / us_a >= 0.5,
                "server_large_share": us_raw / us_a >= 0.3,
            }
    finally:
        await bare.aclose()
        await sc.aclose()
        await raw.aclose()
    return out


# ------------------------------------------------------------------------------------------------
# 2: bus dispatch alone


async def bench_bus(runs: int, n_events: int) -> dict[str, Any]:
    sid = "bench-bus"
    events = [Token(stream_id=sid, text="tok ", index=i) for i in range(n_events)]
    start = StreamStarted(stream_id=sid, provider="bench", model="bench")
    end = Completed(stream_id=sid, text="")
    rates: list[float] = []
    cpu_rates: list[float] = []
    publish_only: list[float] = []
    checks: list[bool] = []
    coalesced: list[int] = []
    for run in range(runs + 1):  # first run is a warm-up
        bus = EventBus()
        c_task, handler, b_task = three_subscribers(bus, sid)
        publish = bus.publish
        gc.collect()
        c0 = time.thread_time()
        t0 = time.perf_counter()
        await publish(start)
        for ev in events:
            await publish(ev)
        await publish(end)
        t1 = time.perf_counter()
        c_events, _, c_count = await c_task
        b_events, _, _ = await b_task
        t2 = time.perf_counter()
        c2 = time.thread_time()
        if run == 0:
            continue
        rates.append(n_events / (t2 - t0))
        cpu_rates.append(n_events / (c2 - c0))
        publish_only.append(n_events / (t1 - t0))
        coalesced.append(n_events - c_events)
        checks.append(c_count == n_events and b_events == n_events and len(handler.parts) == n_events)
    eps = median(rates)
    return {
        "events": n_events,
        "runs": runs,
        "events_per_s": eps,
        "events_per_s_all": rates,
        "publish_loop_events_per_s": median(publish_only),
        # the same, by the thread's CPU time (what it would be on an otherwise idle machine)
        "events_per_s_cpu": median(cpu_rates),
        "us_per_event": 1e6 / eps,
        "target_events_per_s": TARGET_BUS_EPS,
        "ok": eps >= TARGET_BUS_EPS,
        "correct": all(checks),
        "coalesced_events_median": median(coalesced),
    }


# ------------------------------------------------------------------------------------------------
# 3: start-up and import hygiene


def _wall(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child: user + system)."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    t1 = time.perf_counter()
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.decode()[-500:]}")
    return t1 - t0, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def _median_wall(cmd: list[str], env: dict[str, str], n: int) -> tuple[float, list[float], float]:
    """Median wall time, all wall times, median CPU time — after one warm run (page cache, .pyc)."""
    _wall(cmd, env)
    runs = [_wall(cmd, env) for _ in range(n)]
    return median([w for w, _ in runs]), [w for w, _ in runs], median([c for _, c in runs])


HYGIENE_SCRIPT = r"""
import json, sys
import streamchat.cli
code = None
try:
    code = streamchat.cli.app(["ask", "-m", sys.argv[1], "hello"], standalone_mode=False)
except SystemExit as exc:
    code = exc.code
sys.stdout.flush()
mods = {m: m in sys.modules for m in ("anthropic", "openai", "ollama", "textual", "llama_cpp")}
sys.stderr.write("\n__HYGIENE__ " + json.dumps({"exit": code, "modules": mods}) + "\n")
"""


def bench_startup(server: WireServer, n: int) -> dict[str, Any]:
    home = tempfile.mkdtemp(prefix="streamchat-bench-")
    env = {**os.environ, **server.env(), "STREAMCHAT_HOME": home, "NO_COLOR": "1"}
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    py = sys.executable
    exe = str(VENV_BIN / "streamchat")
    out: dict[str, Any] = {"runs": n}
    help_cmd = [exe, "--help"] if os.path.exists(exe) else [py, "-m", "streamchat", "--help"]
    out["help_cmd"] = " ".join(help_cmd)
    out["help_s"], out["help_all_s"], out["help_cpu_s"] = _median_wall(help_cmd, env, n)
    out["help_target_s"] = TARGET_HELP_S
    out["help_ok"] = out["help_s"] < TARGET_HELP_S
    # the same without rich-formatted help (typer then never imports typer.rich_utils / rich.markdown)
    out["help_plain_s"], _, out["help_plain_cpu_s"] = _median_wall(help_cmd, {**env, "TYPER_USE_RICH": "0"}, n)
    out["python_bare_s"], _, out["python_bare_cpu_s"] = _median_wall([py, "-c", "pass"], env, n)
    out["import_core_s"], _, out["import_core_cpu_s"] = _median_wall(
        [py, "-c", "import streamchat.core.stream, streamchat.core.bus"], env, n)
    out["import_core_over_bare_s"] = out["import_core_s"] - out["python_bare_s"]
    out["import_asyncio_s"], _, out["import_asyncio_cpu_s"] = _median_wall([py, "-c", "import asyncio"], env, n)
    out["import_cli_s"], _, out["import_cli_cpu_s"] = _median_wall([py, "-c", "import streamchat.cli"], env, n)

    hygiene: dict[str, Any] = {}
    expected_text = "".join(server.tokens_for("normal"))
    for provider in PROVIDERS:
        model = f"{provider}:normal"
        proc = subprocess.run([py, "-c", HYGIENE_SCRIPT, model], env=env, capture_output=True, text=True,
                              cwd=ROOT, timeout=60)
        line = next((l for l in proc.stderr.splitlines() if l.startswith("__HYGIENE__ ")), None)
        if line is None:
            hygiene[provider] = {"ok": False, "error": proc.stderr[-800:]}
            continue
        info = json.loads(line.split(" ", 1)[1])
        loaded = sorted(m for m, present in info["modules"].items() if present)
        info["loaded"] = loaded
        info["answer_ok"] = proc.stdout.strip() == expected_text.strip()
        info["ok"] = loaded == [provider] and info["exit"] in (0, None) and info["answer_ok"]
        hygiene[provider] = info
    out["hygiene"] = hygiene
    return out


# ------------------------------------------------------------------------------------------------
# 5: where streamchat's per-token time goes, without network or SDK (a fake provider)


CORE_TOKENS = 30_000
_CORE_TEXTS = [f" w{i % 97}" for i in range(CORE_TOKENS)]


def _fake_provider() -> Any:
    from streamchat.core.request import Chunk
    from streamchat.providers.base import Provider

    class FakeProvider(Provider):
        """Yields pre-made text like an adapter would, yielding to the loop every 256 chunks (as
        a network read would) so that subscriber tasks get to run."""

        name = "fake"

        async def stream(self, request: ChatRequest) -> Any:
            sleep = asyncio.sleep
            for i, text in enumerate(_CORE_TEXTS):
                if i % 256 == 0:
                    await sleep(0)
                yield Chunk(text=text)
            yield Chunk(finish_reason="stop")

    return FakeProvider("fake")


async def bench_core(runs: int) -> dict[str, Any]:
    from streamchat.core.events import accumulate
    from streamchat.core.request import Chunk
    from streamchat.core.stream import BufferPolicy

    per_token = per_token_policy()
    provider = _fake_provider()
    request = ChatRequest.from_prompt(PROMPT)
    n = CORE_TOKENS
    buffered = BufferPolicy(max_tokens=16, max_ms=20)

    async def bare() -> None:
        parts = []
        async for chunk in provider.stream(request):
            if chunk.text:
                parts.append(chunk.text)
        assert len(parts) == n

    async def stream(subscribers: bool, buffer: Any = None) -> None:
        bus = EventBus()
        st = Stream(provider, request, bus=bus, buffer=buffer)
        if subscribers:
            t1, handler, t2 = three_subscribers(bus, st.id)
        await st.run()
        if subscribers:
            await t1
            await t2
        assert st.state == "completed" and st.stats().tokens == n

    def cpu_per_token(fn: Callable[[], Any]) -> float:
        gc.collect()
        t0 = time.thread_time()
        fn()
        return (time.thread_time() - t0) / n * 1e6

    async def acpu_per_token(fn: Callable[[], Awaitable[None]]) -> float:
        gc.collect()
        t0 = time.thread_time()
        await fn()
        return (time.thread_time() - t0) / n * 1e6

    def make_chunks() -> None:
        for text in _CORE_TEXTS:
            Chunk(text=text)

    def make_tokens() -> None:
        for i, text in enumerate(_CORE_TEXTS):
            Token(stream_id="s", lane=None, stage=None, text=text, index=i, confidence=None)

    tokens = [Token(stream_id="s", text=text, index=i) for i, text in enumerate(_CORE_TEXTS)]

    def fold() -> None:
        snap = accumulate(None, StreamStarted(stream_id="s", provider="fake", model="fake"))
        for token in tokens:
            snap = accumulate(snap, token)

    async def publish3() -> None:
        bus = EventBus()
        t1, handler, t2 = three_subscribers(bus, "s")
        publish = bus.publish
        for token in tokens:
            await publish(token)
        await publish(Completed(stream_id="s", text=""))
        await t1
        await t2

    parts: dict[str, list[float]] = {k: [] for k in (
        "bare_generator_loop", "stream_0_subscribers", "stream_3_subscribers", "stream_3_subscribers_buffered",
        "stream_0_subscribers_per_token", "stream_3_subscribers_per_token",
        "Chunk()", "Token()", "accumulate()", "bus.publish() 3 subscribers")}
    for run in range(runs + 1):
        figures = {
            "bare_generator_loop": await acpu_per_token(bare),
            "stream_0_subscribers": await acpu_per_token(lambda: stream(False)),
            "stream_3_subscribers": await acpu_per_token(lambda: stream(True)),
            "stream_3_subscribers_buffered": await acpu_per_token(lambda: stream(True, buffered)),
            "stream_0_subscribers_per_token": await acpu_per_token(lambda: stream(False, per_token)),
            "stream_3_subscribers_per_token": await acpu_per_token(lambda: stream(True, per_token)),
            "Chunk()": cpu_per_token(make_chunks),
            "Token()": cpu_per_token(make_tokens),
            "accumulate()": cpu_per_token(fold),
            "bus.publish() 3 subscribers": await acpu_per_token(publish3),
        }
        if run:  # the first run is a warm-up
            for k, v in figures.items():
                parts[k].append(v)
    out = {k: median(v) for k, v in parts.items()}
    out["stream_overhead_0_subscribers"] = out["stream_0_subscribers"] - out["bare_generator_loop"]
    out["stream_overhead_3_subscribers"] = out["stream_3_subscribers"] - out["bare_generator_loop"]
    return {"tokens": n, "runs": runs, "us_per_token_cpu": out, "stream_folds_each_token": _stream_folds(),
            "per_token_policy": repr(per_token) if per_token is not None else "default (always one event per token)"}


def _stream_folds() -> bool:
    """Does the Stream itself fold every event into a snapshot (``accumulate`` on its token path)?"""
    import inspect

    try:
        return "accumulate" in inspect.getsource(Stream._emit)
    except (OSError, TypeError):
        return False


# ------------------------------------------------------------------------------------------------
# Profiles (when a target is missed, or with --profile)


def profile_help_imports(server: WireServer) -> str:
    """``python -X importtime streamchat --help``: the imports that cost the most (cumulative µs)."""
    env = {**os.environ, **server.env(), "NO_COLOR": "1"}
    exe = str(VENV_BIN / "streamchat")
    cmd = [sys.executable, "-X", "importtime", exe, "--help"]
    runs = []
    for _ in range(3):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        rows = []  # (cumulative µs, self µs, name with its nesting indent)
        for line in proc.stderr.splitlines():
            if not line.startswith("import time:") or "cumulative" in line:
                continue
            self_us, cum_us, name = line[len("import time:"):].split("|", 2)
            rows.append((int(cum_us), int(self_us), name[1:].rstrip()))
        runs.append(rows)

    def top_level_total(rows: list[tuple[int, int, str]]) -> int:
        return sum(c for c, _, n in rows if not n.startswith(" "))

    rows = min(runs, key=top_level_total)
    top = sorted(rows, reverse=True)[:30]
    out = [f"{' '.join(cmd)} (the fastest of 3 runs): all imports {top_level_total(rows) / 1000:.1f} ms",
           "", f"{'cumulative ms':>13} {'self ms':>8}  module (indent = nesting depth)"]
    out += [f"{c / 1000:13.1f} {s_ / 1000:8.1f}  {n}" for c, s_, n in top]
    return "\n".join(out) + "\n"


def profile_text(prof: cProfile.Profile, limit: int = 28) -> str:
    s = io.StringIO()
    st = pstats.Stats(prof, stream=s)
    st.sort_stats("tottime").print_stats(limit)
    s.write("\n\n==== by cumulative time ====\n")
    st.sort_stats("cumulative").print_stats(limit)
    s.write("\n\n==== streamchat's own functions, by internal time ====\n")
    st.sort_stats("tottime").print_stats("streamchat/", limit)
    s.write("\n\n==== who calls dataclasses.replace / Token construction ====\n")
    st.print_callers(r"dataclasses.py.*\(replace\)|events.py.*__init__")
    text = s.getvalue()
    return text.replace(str(ROOT) + "/", "").replace(sys.prefix + "/", "")


async def profile_streaming(providers: list[str]) -> dict[str, str]:
    sc = Streamchat()
    reports: dict[str, str] = {}
    try:
        for provider in providers:
            await sc.run(provider)  # warm
            prof = cProfile.Profile()
            prof.enable()
            await sc.run(provider)
            prof.disable()
            reports[provider] = profile_text(prof)
    finally:
        await sc.aclose()
    return reports


async def profile_core(buffer: Any = None) -> str:
    """The streamchat path over a fake provider: only streamchat's own work (no SDK, no socket)."""
    provider = _fake_provider()
    request = ChatRequest.from_prompt(PROMPT)
    prof = cProfile.Profile()
    for profiled in (False, True):
        bus = EventBus()
        st = Stream(provider, request, bus=bus, buffer=buffer)
        t1, _, t2 = three_subscribers(bus, st.id)
        if profiled:
            prof.enable()
        await st.run()
        await t1
        await t2
        if profiled:
            prof.disable()
    return profile_text(prof)


async def profile_bus(n_events: int) -> str:
    sid = "bench-bus"
    events = [Token(stream_id=sid, text="tok ", index=i) for i in range(n_events)]
    bus = EventBus()
    c_task, _, b_task = three_subscribers(bus, sid)
    prof = cProfile.Profile()
    prof.enable()
    await bus.publish(StreamStarted(stream_id=sid, provider="bench", model="bench"))
    for ev in events:
        await bus.publish(ev)
    await bus.publish(Completed(stream_id=sid, text=""))
    await c_task
    await b_task
    prof.disable()
    return profile_text(prof)


# ------------------------------------------------------------------------------------------------
# Output


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def print_report(res: dict[str, Any]) -> None:
    env = res["environment"]
    load = env.get("load_average_at_start")
    load_end = env.get("load_average_at_end")
    print()
    print("streamchat streaming benchmark")
    print("=" * 108)
    print(f"python {env['python']} · {env['platform']} · CPUs: {env['cpu_count']} (usable: {env['cpus_usable']})"
          f" · mode: {res['mode']}")
    code = env.get("code") or {}
    if code:
        changed = code.get("streamchat_changed_files") or []
        print(f"code: commit {code.get('commit')}" + (f" + uncommitted changes in {', '.join(changed)}" if changed else ""))
    if load:
        print(f"load average (1/5/15 min) at start {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}"
              + (f", at end {load_end[0]:.2f}/{load_end[1]:.2f}/{load_end[2]:.2f}" if load_end else "")
              + " — anything above ~1 means other processes competed for the CPUs; wall-clock figures are noisier then")
    print(f"NOTE: the wire server runs in a thread of this process: its CPU work competes with the client for "
          f"the GIL (so, in effect, for one core of the {env['cpus_usable']}), and counts in both (a) and (b).")

    s = res["streaming"]
    print()
    print(f"1. Streaming path vs bare SDK — firehose, {env['firehose_tokens']:,} tokens, interleaved rounds "
          "after a warm-up round (medians)")
    hdr = (f"{'provider':<10} {'rounds':>6} {'bare tok/s':>11} {'streamchat':>11} {'ratio b/a':>9} {'target':>6} "
           f"{'cpu ratio':>9} {'correct a/b':>11} {'server raw tok/s':>16} {'srv share':>9}")
    print(hdr)
    print("-" * len(hdr))
    for p in PROVIDERS:
        r = s[p]
        ok = "ok" if r["ratio_ok"] else "MISS"
        corr = f"{'yes' if r['bare_correct'] else 'NO'}/{'yes' if r['streamchat_correct'] else 'NO'}"
        print(f"{p:<10} {r['rounds']:>6} {fmt_rate(r['bare_tokens_per_s']):>11} "
              f"{fmt_rate(r['streamchat_tokens_per_s']):>11} {r['ratio']:>9.3f} {ok:>6} "
              f"{r['client_cpu_ratio']:>9.3f} {corr:>11} "
              f"{fmt_rate(r['server_raw_tokens_per_s']):>16} {r['server_share_of_bare']:>8.0%}")
    if any(s[p].get("per_token_rounds") for p in PROVIDERS):
        print("   (b) publishes tokens that arrived together as one event; (c) = the same path with "
              "BufferPolicy(merge=False): one event per token")
        for p in PROVIDERS:
            r = s[p]
            if not r.get("per_token_rounds"):
                continue
            print(f"   {p:<10} (b) {r['streamchat_events_median']:>8,.0f} events/run "
                  f"({r['tokens'] / max(1, r['streamchat_events_median']):6.1f} tokens/event) · "
                  f"(c) {fmt_rate(r['per_token_tokens_per_s']):>7} tok/s, ratio c/a {r['per_token_ratio']:.3f}, "
                  f"+{r['per_token_overhead_us_per_token']:.1f} µs/token, client CPU "
                  f"{r['per_token_client_cpu_us_per_token']:.1f} µs/token (median of {r['per_token_rounds']}), "
                  f"correct: {'yes' if r['per_token_correct'] else 'NO'}")
    print("   ratio b/a = median tok/s (b) / median tok/s (a), wall clock, target ≥ "
          f"{TARGET_RATIO}; cpu ratio = the same on the client thread's CPU time only (no server, no waiting).")
    print("   correct = the full text arrived: the bare loop's; in (b) the Stream's, each of the 3 subscribers' and")
    print("   the snapshot's, and both subscriptions' Token.count add up to every token ((c): one event per token).")
    print("   server raw = the server's rate read by a raw httpx loop (no parsing); srv share = the time it takes")
    print("   as a share of a bare-SDK run's time.")
    print()
    print("   CPU µs per token: client thread (a → b) · server thread during (a) / (b) / raw read (10 ms ticks)")
    for p in PROVIDERS:
        r = s[p]

        def f(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.1f}"

        print(f"   {p:<10} client {r['bare_client_cpu_us_per_token']:6.1f} → {r['streamchat_client_cpu_us_per_token']:6.1f}"
              f"   server {f(r['server_cpu_us_per_token_during_bare'])} / "
              f"{f(r['server_cpu_us_per_token_during_streamchat'])} / {f(r['server_cpu_us_per_token_raw'])}"
              f"   body {r['server_raw_bytes'] / 1e6:.2f} MB, raw read at {r['server_raw_MB_per_s']:.1f} MB/s")
    for p in PROVIDERS:
        share = s[p]["server_share_of_bare"]
        if share >= 0.5:
            verdict = ("the server IS the bottleneck: read raw it is < 2× faster than the bare SDK loop, so it takes "
                       "≥ 50% of a bare run's time (same GIL); the ratio b/a is compressed towards 1 — read the "
                       "µs/token overhead and the cpu ratio instead")
        elif share >= 0.3:
            verdict = (f"the server is a large part ({share:.0%}) of a bare run's time but not the bottleneck; it "
                       "compresses the ratio b/a towards 1 — the cpu ratio leaves it out")
        else:
            verdict = f"the server is not the bottleneck ({share:.0%} of a bare run's time): the SDK's parsing dominates"
        print(f"   {p:<10} {verdict}")

    b = res["bus"]
    print()
    print(f"2. Bus dispatch alone — {b['events']:,} pre-built Token events, 3 subscribers, median of {b['runs']}")
    print(f"   {fmt_rate(b['events_per_s'])} events/s ({b['us_per_event']:.2f} µs/event, until both subscription "
          f"tasks have read everything) — target ≥ {fmt_rate(b['target_events_per_s'])}: "
          f"{'ok' if b['ok'] else 'MISS'}; all text delivered to all 3: {'yes' if b['correct'] else 'NO'}")
    print(f"   by the thread's CPU time: {fmt_rate(b['events_per_s_cpu'])} events/s "
          f"({1e6 / b['events_per_s_cpu']:.2f} µs/event) — wall < CPU rate means other processes took the CPU")

    st = res["startup"]
    print()
    print(f"3. Start-up (median of {st['runs']} subprocess runs after a warm run; wall, and the child's CPU)")
    print(f"   streamchat --help                                  {st['help_s'] * 1000:7.1f} ms  "
          f"(CPU {st['help_cpu_s'] * 1000:5.1f} ms)  target < {st['help_target_s'] * 1000:.0f} ms: "
          f"{'ok' if st['help_ok'] else 'MISS'}")
    print(f"   TYPER_USE_RICH=0 streamchat --help (plain help)    {st['help_plain_s'] * 1000:7.1f} ms  "
          f"(CPU {st['help_plain_cpu_s'] * 1000:5.1f} ms)  — "
          + (f"rich-formatted help costs {(st['help_s'] - st['help_plain_s']) * 1000:.0f} ms"
             if st["help_s"] - st["help_plain_s"] > max(0.02, 0.1 * st["help_plain_s"])
             else "no real difference: the help is plain already"))
    print(f"   python -c pass (interpreter floor)                 {st['python_bare_s'] * 1000:7.1f} ms  "
          f"(CPU {st['python_bare_cpu_s'] * 1000:5.1f} ms)")
    print(f"   python -c 'import asyncio'                         {st['import_asyncio_s'] * 1000:7.1f} ms  "
          f"(CPU {st['import_asyncio_cpu_s'] * 1000:5.1f} ms)")
    print(f"   python -c 'import streamchat.core.stream, …bus'    {st['import_core_s'] * 1000:7.1f} ms  "
          f"(CPU {st['import_core_cpu_s'] * 1000:5.1f} ms; +{st['import_core_over_bare_s'] * 1000:.1f} ms wall "
          "over the floor)")
    print(f"   python -c 'import streamchat.cli'                  {st['import_cli_s'] * 1000:7.1f} ms  "
          f"(CPU {st['import_cli_cpu_s'] * 1000:5.1f} ms)")
    print("   import hygiene, streamchat ask -m PROVIDER:normal (which of anthropic/openai/ollama/textual/llama_cpp"
          " got imported):")
    for p in PROVIDERS:
        h = st["hygiene"][p]
        if "loaded" not in h:
            print(f"   {p:<10} FAILED: {h.get('error', '')[:300]}")
            continue
        print(f"   {p:<10} loaded: {', '.join(h['loaded']) or '(none)':<24} expected only: {p:<10} "
              f"{'ok' if h['ok'] else 'MISS'} (exit {h['exit']}, answer {'ok' if h['answer_ok'] else 'WRONG'})")

    print()
    print("4. Per-token overhead of streamchat over the bare SDK loop (from 1)")
    print(f"   {'provider':<10} {'wall µs/tok a → b':>20} {'+wall':>7} {'+paired':>8} {'client CPU a → b':>19} {'+CPU':>7}")
    for p in PROVIDERS:
        r = s[p]
        print(f"   {p:<10} {r['bare_us_per_token']:>9.2f} → {r['streamchat_us_per_token']:>7.2f} "
              f"{r['overhead_us_per_token']:>7.2f} {r['overhead_us_per_token_paired_median']:>8.2f} "
              f"{r['bare_client_cpu_us_per_token']:>8.2f} → {r['streamchat_client_cpu_us_per_token']:>7.2f} "
              f"{r['streamchat_client_cpu_us_per_token'] - r['bare_client_cpu_us_per_token']:>7.2f}")
    print("   +wall = 1e6/rate(b) − 1e6/rate(a); +paired = median over rounds of (t_b − t_a)/tokens; "
          "+CPU = on the client thread.")

    c = res.get("core")
    if c:
        u = c["us_per_token_cpu"]
        print()
        print(f"5. Where streamchat's per-token time goes — no network, no SDK: a fake provider yields "
              f"{c['tokens']:,} pre-made chunks (CPU µs/token, median of {c['runs']})")
        base = u["bare_generator_loop"]

        def row(label: str, key: str) -> None:
            print(f"   {label:<62} {u[key]:6.2f}  (+{u[key] - base:.2f})")

        print(f"   {'bare loop over the fake adapter generator':<62} {base:6.2f}")
        row("Stream(...).run(), no subscribers", "stream_0_subscribers")
        row("Stream(...).run(), 3 subscribers", "stream_3_subscribers")
        row("… one event per token (merge=False), no subscribers", "stream_0_subscribers_per_token")
        row("… one event per token, 3 subscribers", "stream_3_subscribers_per_token")
        row("… 3 subscribers, BufferPolicy(max_tokens=16, max_ms=20)", "stream_3_subscribers_buffered")
        print("   parts, each alone:")
        print(f"     Token(...) construction (frozen dataclass)       {u['Token()']:6.2f}")
        where = ("on the Stream's path: Stream._emit folds every event" if c.get("stream_folds_each_token")
                 else "not on the Stream's path any more; paid only by a subscriber that folds every token")
        print(f"     accumulate(snapshot, token)                      {u['accumulate()']:6.2f}  ({where})")
        print(f"     bus.publish(token), 3 subscribers, read to end   {u['bus.publish() 3 subscribers']:6.2f}")
        print(f"     Chunk(text=...) (in the adapter)                 {u['Chunk()']:6.2f}")

    missed = res["targets_missed"]
    print()
    print("targets missed: " + ("; ".join(missed) if missed else "none"))
    if res.get("profiles"):
        print("profiles written: " + ", ".join(res["profiles"]))


# ------------------------------------------------------------------------------------------------


CODE_FILES = ("streamchat/core/bus.py", "streamchat/core/stream.py", "streamchat/core/events.py",
              "streamchat/providers/anthropic.py", "streamchat/providers/openai.py",
              "streamchat/providers/ollama.py")


def main(argv: list[str] | None = None) -> int:
    global FIREHOSE_TOKENS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke check: 3 rounds of a 5,000-token firehose, fewer repeats elsewhere, "
                             "no profiles unless --profile; writes results/stream-quick.json")
    parser.add_argument("--profile", action="store_true", help="write cProfile reports even if targets are met")
    parser.add_argument("--no-profile", action="store_true", help="never profile")
    parser.add_argument("--out", default=None, help="JSON output path (default: results/stream.json)")
    args = parser.parse_args(argv)

    quick = args.quick
    if quick:
        FIREHOSE_TOKENS = 5_000
    rounds = 3 if quick else 5  # interleaved a/b rounds at least (after a warm-up round) ...
    max_rounds = 3 if quick else 9  # ... and at most, while a provider's time budget lasts
    budget_s = 0.0 if quick else 15.0
    raw_rounds = 3 if quick else 5
    per_token_rounds = 2 if quick else 3  # (c), one event per token: in the first rounds only
    bus_runs = 3 if quick else 5
    core_runs = 2 if quick else 2
    startup_n = 3 if quick else 10
    out_path = Path(args.out) if args.out else RESULTS / ("stream-quick.json" if quick else "stream.json")

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    results: dict[str, Any] = {
        "mode": "quick" if quick else "full",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": {
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "cpus_usable": usable,
            "machine": platform.machine(),
            "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "server": "streamchat.testing.wire.WireServer in a thread of the benchmark process "
                      "(shares the GIL and the CPUs with the client)",
            "firehose_tokens": FIREHOSE_TOKENS,
            "sdk_versions": {},
        },
    }
    from importlib.metadata import version

    for dist in ("anthropic", "openai", "ollama", "httpx", "httpx2", "pydantic"):
        try:
            results["environment"]["sdk_versions"][dist] = version(dist)
        except Exception:
            pass

    results["environment"]["code"] = code_version(CODE_FILES)
    t_start = time.perf_counter()
    server = WireServer().start()
    os.environ.update(server.env())
    server.firehose_tokens = FIREHOSE_TOKENS
    try:
        print(f"wire server at {server.url}; streaming benchmark ({FIREHOSE_TOKENS:,} tokens, "
              f"{rounds}-{max_rounds} rounds per provider)…", file=sys.stderr)
        phases: dict[str, float] = {}
        t = time.perf_counter()
        results["streaming"] = asyncio.run(
            bench_streaming(server, rounds, raw_rounds, max_rounds, budget_s, per_token_rounds))
        phases["streaming"], t = time.perf_counter() - t, time.perf_counter()
        print("bus benchmark…", file=sys.stderr)
        results["bus"] = asyncio.run(bench_bus(bus_runs, BUS_EVENTS))
        phases["bus"], t = time.perf_counter() - t, time.perf_counter()
        print("core breakdown…", file=sys.stderr)
        results["core"] = asyncio.run(bench_core(core_runs))
        phases["core"], t = time.perf_counter() - t, time.perf_counter()
        print("start-up benchmark…", file=sys.stderr)
        results["startup"] = bench_startup(server, startup_n)
        phases["startup"], t = time.perf_counter() - t, time.perf_counter()
        results["phase_seconds"] = phases

        missed: list[str] = []
        for p in PROVIDERS:
            r = results["streaming"][p]
            if not r["ratio_ok"]:
                missed.append(f"ratio {p} ({r['ratio']:.4f} < {TARGET_RATIO})")
            if not (r["bare_correct"] and r["streamchat_correct"]) or r.get("per_token_correct") is False:
                missed.append(f"correctness {p}")
        if not results["bus"]["ok"]:
            missed.append(f"bus ({results['bus']['events_per_s']:,.0f} < {TARGET_BUS_EPS:,} events/s)")
        if not results["bus"]["correct"]:
            missed.append("bus delivery")
        if not results["startup"]["help_ok"]:
            missed.append(f"--help ({results['startup']['help_s'] * 1000:.0f} ms ≥ {TARGET_HELP_S * 1000:.0f} ms)")
        for p, h in results["startup"]["hygiene"].items():
            if not h.get("ok"):
                missed.append(f"import hygiene {p} (loaded {h.get('loaded')})")
        results["targets_missed"] = missed

        profiles: list[str] = []
        if args.profile or (missed and not args.no_profile and not quick):
            print("profiling…", file=sys.stderr)
            RESULTS.mkdir(parents=True, exist_ok=True)
            for stale in RESULTS.glob("profile_*.txt"):  # profiles from an earlier run would mislead
                stale.unlink()
            # cProfile slows the SDKs' per-chunk work several-fold: profile a shorter firehose
            server.firehose_tokens = 5_000
            want = [p for p in PROVIDERS if args.profile or not results["streaming"][p]["ratio_ok"]]
            if want:
                for p, text in asyncio.run(profile_streaming(want)).items():
                    path = RESULTS / f"profile_stream_{p}.txt"
                    path.write_text(f"cProfile of one streamchat run (firehose, {server.firehose_tokens} tokens, "
                                    f"3 subscribers), provider {p}; main thread only (the server's thread is "
                                    "not profiled)\n\n" + text)
                    profiles.append(str(path.relative_to(ROOT)))
                path = RESULTS / "profile_core.txt"
                path.write_text(f"cProfile of one streamchat run over a fake provider ({CORE_TOKENS} pre-made "
                                "chunks, no SDK, no socket; 3 subscribers): streamchat's own per-token work\n\n"
                                + asyncio.run(profile_core()))
                profiles.append(str(path.relative_to(ROOT)))
                from streamchat.core.stream import BufferPolicy

                path = RESULTS / "profile_core_buffered.txt"
                path.write_text("cProfile as profile_core.txt, with BufferPolicy(max_tokens=16, max_ms=20)\n\n"
                                + asyncio.run(profile_core(BufferPolicy(max_tokens=16, max_ms=20))))
                profiles.append(str(path.relative_to(ROOT)))
            if args.profile or not results["startup"]["help_ok"]:
                path = RESULTS / "profile_help_imports.txt"
                path.write_text(profile_help_imports(server))
                profiles.append(str(path.relative_to(ROOT)))
            if args.profile or not results["bus"]["ok"]:
                path = RESULTS / "profile_bus.txt"
                path.write_text(f"cProfile of EventBus.publish, {BUS_EVENTS} tokens, 3 subscribers\n\n"
                                + asyncio.run(profile_bus(BUS_EVENTS)))
                profiles.append(str(path.relative_to(ROOT)))
        results["profiles"] = profiles
        phases["profiles"] = time.perf_counter() - t
    finally:
        server.stop()
    results["environment"]["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    results["elapsed_s"] = time.perf_counter() - t_start

    print_report(results)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    shown = out_path.relative_to(ROOT) if out_path.resolve().is_relative_to(ROOT) else out_path
    print(f"\nwrote {shown} in {results['elapsed_s']:.0f} s total", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
