"""History benchmarks: what recording an answer costs, and what a killed process loses.

    .venv/bin/python benchmarks/bench_history.py            # full run (~1.5 min on 2 CPUs)
    .venv/bin/python benchmarks/bench_history.py --quick    # smoke check (~30 s)

Figures are written to benchmarks/results/history.json (--quick: history-quick.json).

1. **The handler, per token** (the publisher's side, which is the stream's): ``EventBus.publish`` of
   pre-built Token events to a bus with one handler, with and without the recorder tracking the
   stream; best of 5 runs of 50,000 events. The recorder's writer thread runs meanwhile (its commits
   included), as it would.
2. **A firehose, end to end**: ``Stream.run()`` over the loopback wire server's ``firehose`` model
   (Ollama SDK: the cheapest parser, so streamchat's own costs show most), with and without the
   recorder, interleaved rounds in one process. Reported: median tokens/s of each and their ratio
   (target >= 0.95), CPU of the main (stream) thread per token for each, the writer thread's CPU
   per token and its transactions, and how many token events an answer took (a burst the SDK had
   already received is one event, and the handler runs per event). On a shared 2-core machine the
   per-run figures vary by ±30 %: compare medians.
3. **A steady stream** at 200 tokens/s (``slow``, 600 tokens): the writer thread's CPU per second of
   streaming, transactions per second and time per transaction.
4. **The SIGKILL loss window**: ``streamchat ask -m ollama:slow`` (50 tokens/s) in a subprocess is
   killed with SIGKILL after a random 1–2 s of answer, then the stored partial is read back. The loss
   is the text printed on stdout but not in the history, as time: the kill time minus the arrival
   of the first lost chunk (0 if nothing was lost). Median and max over the kills (target: max <=
   0.25 s).
5. **What ``ask`` pays before sending**: opening the history (existing file), writing the question,
   starting the recorder thread — and opening a blank file (migrations) once.

The wire server runs in a thread of this process and competes for the GIL and the CPUs; the
machine's load average is recorded. CPU figures (per thread, from /proc/…/schedstat) are steadier
than wall-clock ones on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_common.py
from _common import code_version  # noqa: E402
RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(ROOT))

from streamchat.core.bus import EventBus  # noqa: E402
from streamchat.core.events import Token  # noqa: E402
from streamchat.core.request import ChatRequest  # noqa: E402
from streamchat.core.stream import Stream  # noqa: E402
from streamchat.history import HistoryRecorder, HistoryStore  # noqa: E402
from streamchat.history.recorder import FLUSH_INTERVAL  # noqa: E402
from streamchat.providers import create_provider  # noqa: E402
from streamchat.testing.wire import WireServer  # noqa: E402

TARGET_RATIO = 0.95
TARGET_LOSS_S = 0.25


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class ThreadCPU:
    """CPU seconds of one OS thread of this process: the scheduler's own count in nanoseconds
    (/proc/…/schedstat), so that a writer busy for a few milliseconds shows (/proc/…/stat counts
    in 10 ms ticks)."""

    def __init__(self, native_id: int | None) -> None:
        self.path = f"/proc/self/task/{native_id}/schedstat" if native_id else None

    def read(self) -> float:
        if not self.path:
            return float("nan")
        try:
            with open(self.path) as f:
                return int(f.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):  # the thread has ended, or no schedstat here
            return float("nan")


def main_thread_cpu() -> ThreadCPU:
    return ThreadCPU(threading.main_thread().native_id)


class Quiet:
    """A handler that only counts tokens: the bus has one subscriber with or without the recorder."""

    def __init__(self) -> None:
        self.token_events = 0

    def on_event(self, event: Any) -> None:
        if type(event) is Token:
            self.token_events += 1


# ------------------------------------------------------------------------------------------------
# 1. the handler


async def bench_handler(folder: Path, n: int, runs: int) -> dict[str, Any]:
    store = HistoryStore(folder / "handler.db")
    cid = store.create_conversation("handler")
    bus = EventBus()
    bus.register(Quiet())
    recorder = HistoryRecorder(store)

    class Fake:  # the recorder only reads a stream's id, provider and lane/stage/continues
        id = "bench-handler"
        stage = lane = continues = None

        class provider:  # noqa: N801
            name, model = "bench", "handler"

    recorder.track(Fake, conversation_id=cid)
    tokens = [Token(stream_id=Fake.id, text="word ", index=i) for i in range(n)]

    async def once() -> float:
        gc.collect()
        t0 = time.perf_counter()
        for token in tokens:
            await bus.publish(token)
        return (time.perf_counter() - t0) / n

    without = [await once() for _ in range(runs)]
    recorder.attach(bus)
    with_recorder = [await once() for _ in range(runs)]
    recorder.detach()
    await recorder.flush()
    stored = len(store.messages(cid)[0].text)
    await recorder.aclose()
    store.close()
    return {
        "events_per_run": n,
        "runs": runs,
        "publish_us_per_token_without": min(without) * 1e6,
        "publish_us_per_token_with_recorder": min(with_recorder) * 1e6,
        "handler_us_per_token": (min(with_recorder) - min(without)) * 1e6,
        "all_text_stored": stored == len("word ") * n * runs,
        "writer_transactions": recorder.flushes,
    }


# ------------------------------------------------------------------------------------------------
# 2 + 3. real streams


async def one_stream(server: WireServer, model: str, store: HistoryStore | None, recorder_box: list) -> dict[str, Any]:
    provider = create_provider(model)
    provider.prepare()
    bus = EventBus()
    quiet = Quiet()
    bus.register(quiet)
    recorder = None
    writer_cpu = None
    if store is not None:
        recorder = HistoryRecorder(store).attach(bus)
        writer_cpu = ThreadCPU(recorder._thread.native_id)
        cid = store.create_conversation("bench")
        store.add_message(cid, "user", "go")
    stream = Stream(provider, ChatRequest.from_prompt("go", max_tokens=32_000), bus=bus)
    if recorder is not None:
        recorder.track(stream, conversation_id=cid)
    gc.collect()
    main_cpu = main_thread_cpu()
    c0, w0 = main_cpu.read(), writer_cpu.read() if writer_cpu else 0.0
    t0 = time.perf_counter()
    await stream.run()
    elapsed = time.perf_counter() - t0
    c1 = main_cpu.read()
    out: dict[str, Any] = {"tokens": stream.stats().tokens, "seconds": elapsed, "main_cpu": c1 - c0,
                           "token_events": quiet.token_events, "ok": stream.state == "completed"}
    if recorder is not None:
        await recorder.flush()
        out["writer_cpu"] = writer_cpu.read() - w0
        out["transactions"] = recorder.flushes
        out["write_seconds"] = recorder.write_seconds
        out["stored_ok"] = store.messages(cid)[-1].text == stream.text
        await recorder.aclose()
        recorder_box.append(recorder)
    await provider.aclose()
    return out


async def bench_firehose(server: WireServer, folder: Path, rounds: int) -> dict[str, Any]:
    store = HistoryStore(folder / "firehose.db")
    a_runs, b_runs = [], []
    box: list = []
    await one_stream(server, "ollama:firehose", None, box)  # warm-up (imports, pool)
    await one_stream(server, "ollama:firehose", store, box)
    for _ in range(rounds):
        a_runs.append(await one_stream(server, "ollama:firehose", None, box))
        b_runs.append(await one_stream(server, "ollama:firehose", store, box))
    store.close()
    n = a_runs[0]["tokens"]
    a_rate = median([r["tokens"] / r["seconds"] for r in a_runs])
    b_rate = median([r["tokens"] / r["seconds"] for r in b_runs])
    return {
        "provider": "ollama",
        "tokens": n,
        "rounds": rounds,
        "without_tokens_per_s": a_rate,
        "with_recorder_tokens_per_s": b_rate,
        "ratio": b_rate / a_rate,
        "target_ratio": TARGET_RATIO,
        "ratio_ok": b_rate / a_rate >= TARGET_RATIO,
        "main_thread_cpu_us_per_token_without": sum(r["main_cpu"] for r in a_runs) / (n * rounds) * 1e6,
        "main_thread_cpu_us_per_token_with_recorder": sum(r["main_cpu"] for r in b_runs) / (n * rounds) * 1e6,
        "writer_thread_cpu_us_per_token": sum(r["writer_cpu"] for r in b_runs) / (n * rounds) * 1e6,
        "transactions_per_answer": median([r["transactions"] for r in b_runs]),
        # the stream publishes a burst the SDK already had as one event: the handler runs per event
        "token_events_per_answer": median([r["token_events"] for r in b_runs]),
        "all_ok": all(r["ok"] for r in a_runs + b_runs) and all(r["stored_ok"] for r in b_runs),
    }


async def bench_steady(server: WireServer, folder: Path) -> dict[str, Any]:
    server.slow_rate = 200.0
    server.slow_tokens = 600
    store = HistoryStore(folder / "steady.db")
    box: list = []
    run = await one_stream(server, "ollama:slow", store, box)
    store.close()
    return {
        "tokens_per_s": server.slow_rate,
        "tokens": run["tokens"],
        "seconds": run["seconds"],
        "writer_cpu_ms_per_s": run["writer_cpu"] / run["seconds"] * 1e3,
        "writer_cpu_us_per_token": run["writer_cpu"] / run["tokens"] * 1e6,
        "transactions_per_s": run["transactions"] / run["seconds"],
        "ms_per_transaction": run["write_seconds"] / run["transactions"] * 1e3,
        "flush_interval_s": FLUSH_INTERVAL,
        "ok": run["ok"] and run["stored_ok"],
    }


# ------------------------------------------------------------------------------------------------
# 4. kill -9


def kill_once(server: WireServer, home: Path, after: float) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "OPENAI_", "OLLAMA_"))}
    env.update(server.env(), STREAMCHAT_HOME=str(home), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "streamchat", "ask", "-m", "ollama:slow", "go"], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    chunks: list[tuple[float, bytes]] = []
    try:
        while True:
            data = os.read(proc.stdout.fileno(), 65536)
            if not data:
                break
            chunks.append((time.monotonic(), data))
            if chunks[-1][0] - chunks[0][0] >= after:
                break
        proc.kill()
        killed = time.monotonic()
        proc.wait(10)
        rest = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if rest:
        chunks.append((killed, rest))
    with HistoryStore(home / "history.db") as store:
        answer = store.messages(store.last_conversation().id)[-1]
    stored = answer.text.encode()
    printed = b"".join(data for _, data in chunks)
    offset, lost_from = 0, None
    for t, data in chunks:
        offset += len(data)
        if offset > len(stored):
            lost_from = t
            break
    return {
        "streamed_s": after,
        "printed_chars": len(printed.decode()),
        "stored_chars": len(answer.text),
        "lost_chars": len(printed.decode()) - len(answer.text),
        "loss_s": max(0.0, killed - lost_from) if lost_from is not None else 0.0,
        "prefix_ok": printed.startswith(stored) and answer.state == "cut_off",
    }


def bench_kill(server: WireServer, folder: Path, kills: int) -> dict[str, Any]:
    server.slow_rate = 50.0
    server.slow_tokens = 200
    rng = random.Random(5)
    runs = []
    for i in range(kills):
        home = folder / f"kill{i}"
        home.mkdir()
        runs.append(kill_once(server, home, 1.0 + rng.random()))
    losses = [r["loss_s"] for r in runs]
    return {
        "kills": kills,
        "tokens_per_s": server.slow_rate,
        "loss_s_median": median(losses),
        "loss_s_max": max(losses),
        "lost_chars_max": max(r["lost_chars"] for r in runs),
        "target_loss_s": TARGET_LOSS_S,
        "ok": max(losses) <= TARGET_LOSS_S and all(r["prefix_ok"] for r in runs),
        "runs": runs,
    }


# ------------------------------------------------------------------------------------------------
# 5. what ask pays before sending


def bench_open(folder: Path, n: int) -> dict[str, Any]:
    path = folder / "open.db"
    t0 = time.perf_counter()
    HistoryStore(path).close()
    blank = time.perf_counter() - t0
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        store = HistoryStore(path)
        cid = store.create_conversation("question")
        store.add_message(cid, "user", "question")
        recorder = HistoryRecorder(store)
        times.append(time.perf_counter() - t0)
        recorder.close()
        store.close()
    return {"blank_file_ms": blank * 1e3, "existing_file_median_ms": median(times) * 1e3,
            "existing_file_max_ms": max(times) * 1e3, "n": n}


# ------------------------------------------------------------------------------------------------


CODE_FILES = ("streamchat/history/store.py", "streamchat/history/recorder.py", "streamchat/cli/ask.py",
              "streamchat/core/bus.py", "streamchat/core/stream.py")


def report(res: dict[str, Any]) -> None:
    h, f, s, k, o = res["handler"], res["firehose"], res["steady"], res["kill"], res["open"]
    print("\nstreamchat history benchmark")
    print("=" * 78)
    print(f"load average {res['environment']['load_average_at_start']} → {res['environment']['load_average_at_end']}")
    print(f"handler: publish {h['publish_us_per_token_without']:.2f} → {h['publish_us_per_token_with_recorder']:.2f} "
          f"µs/token (recorder: +{h['handler_us_per_token']:.2f} µs), all text stored: {h['all_text_stored']}")
    print(f"firehose ({f['tokens']} tokens, {f['rounds']} rounds): {f['without_tokens_per_s']:,.0f} → "
          f"{f['with_recorder_tokens_per_s']:,.0f} tok/s, ratio {f['ratio']:.2f} (target {TARGET_RATIO}); "
          f"main thread {f['main_thread_cpu_us_per_token_without']:.1f} → "
          f"{f['main_thread_cpu_us_per_token_with_recorder']:.1f} µs CPU/token, writer "
          f"{f['writer_thread_cpu_us_per_token']:.2f} µs/token in {f['transactions_per_answer']:.0f} transactions "
          f"({f['token_events_per_answer']:.0f} token events per answer)")
    print(f"steady {s['tokens_per_s']:.0f} tok/s: writer {s['writer_cpu_ms_per_s']:.1f} ms CPU per s "
          f"({s['writer_cpu_us_per_token']:.1f} µs/token), {s['transactions_per_s']:.1f} transactions/s, "
          f"{s['ms_per_transaction']:.2f} ms each")
    print(f"kill -9 ({k['kills']}×, {k['tokens_per_s']:.0f} tok/s): loss median {k['loss_s_median'] * 1e3:.0f} ms, "
          f"max {k['loss_s_max'] * 1e3:.0f} ms (target ≤ {TARGET_LOSS_S * 1e3:.0f}), at most "
          f"{k['lost_chars_max']} chars; ok: {k['ok']}")
    print(f"before sending: open + question + recorder {o['existing_file_median_ms']:.1f} ms median "
          f"(max {o['existing_file_max_ms']:.1f}); a blank file (migrations) {o['blank_file_ms']:.1f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and kills; writes history-quick.json")
    parser.add_argument("--out", default=None, help="JSON output path (default: results/history.json)")
    args = parser.parse_args(argv)
    quick = args.quick
    out_path = Path(args.out) if args.out else RESULTS / ("history-quick.json" if quick else "history.json")

    results: dict[str, Any] = {
        "mode": "quick" if quick else "full",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "sqlite": sqlite3.sqlite_version,
            "load_average_at_start": os.getloadavg(),
            "server": "streamchat.testing.wire.WireServer in a thread of the benchmark process",
            "code": code_version(CODE_FILES),
        },
    }
    folder = Path(tempfile.mkdtemp(prefix="bench-history-"))
    server = WireServer().start()
    os.environ.update(server.env())
    os.environ["STREAMCHAT_HOME"] = str(folder)
    server.firehose_tokens = 5_000 if quick else 20_000
    t0 = time.perf_counter()
    try:
        results["handler"] = asyncio.run(bench_handler(folder, 20_000 if quick else 50_000, 3 if quick else 5))
        results["firehose"] = asyncio.run(bench_firehose(server, folder, 3 if quick else 9))
        results["steady"] = asyncio.run(bench_steady(server, folder))
        results["kill"] = bench_kill(server, folder, 3 if quick else 8)
        results["open"] = bench_open(folder, 10 if quick else 30)
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    results["environment"]["load_average_at_end"] = os.getloadavg()
    results["elapsed_s"] = time.perf_counter() - t0
    report(results)
    RESULTS.mkdir(exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {out_path.relative_to(ROOT) if out_path.is_relative_to(ROOT) else out_path}")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
