"""TUI benchmark: the full-screen app in a real pseudo-terminal, against the wire server in another process.

    .venv/bin/python benchmarks/bench_tui.py            # full run (~5.5 min on 2 CPUs)
    .venv/bin/python benchmarks/bench_tui.py --quick    # smoke check (~2.5 min)
    .venv/bin/python benchmarks/bench_tui.py --profile  # also a cProfile of the app at 200 tok/s
    .venv/bin/python benchmarks/bench_tui.py --only cpu,keys --out /tmp/x.json   # some parts
    STREAMCHAT_BENCH_SRC=DIR ... # measure another checkout's streamchat package (see app_child)

Results go to benchmarks/results/tui.json (--quick: tui-quick.json) and are printed as a table.

Set-up (as a person runs it): the loopback wire server (``streamchat.testing.wire``) runs in a process
of its own, so it shares neither the app's GIL nor its CPU time; the app is the real ``streamchat``
command (the openai provider, ``OPENAI_BASE_URL``/``OPENAI_API_KEY`` from ``WireServer.env()``,
``STREAMCHAT_HOME`` in a temporary folder) on a pseudo-terminal of 120×40 whose output this process
reads (and searches) as a terminal would. Keys are written to the terminal as a person types them.

For the streaming measures the app process is started through this file (``--app-child``), which
adds a probe before running the CLI: a bus handler that notes when the last token was published, and
a note of the moment the pause/resume actions run. Nothing else of the app is changed. The start-up
measure runs the bare ``streamchat`` command.

What it measures (targets of issue #4):

1. CPU share of one core of the app process while streaming (process user+system time from /proc
   over the wall time of the streaming window, the first second left out): 200 tok/s (target < 20%)
   and 50 tok/s — ``slow`` scenario; the frames, Textual layouts and renders per second; and, for
   scale, the same streams through ``streamchat ask`` (no app: the SDK, the Stream and the bus).
2. Key press → action: ``space`` (pause/resume) pressed every 0.15–0.35 s while the answer streams
   at 200 tok/s and under a firehose (20,000 tokens as fast as they come). Measured from writing the
   key to the terminal to (a) the app's pause/resume action having run (the stream's state
   changed; the probe's clock is the same monotonic clock) — the target: median < 5 ms, worst
   < 50 ms at 200 tok/s, worst < 100 ms under a firehose — and (b) the new state (``⏸ paused`` /
   ``● streaming``) arriving on the terminal.
3. Firehose: from the last token reaching the app (published on its bus) to the complete answer
   on screen (``✓ done`` drawn: the app draws the final, complete text in that same frame) — target
   < 1 s; the app's CPU share and the tokens/s it got through.
4. Memory: the app's RSS after start-up and after each of three 20,000-token firehose answers in one
   conversation: growth per answer vs the answer's size (target: no faster than the text).
5. Start-up: the bare ``streamchat -m openai:slow`` in the terminal, from spawn to the prompt drawn
   (target < 1 s); also until the warm-up says "ready".

The machine has 2 cores and other processes run: the load average is recorded at start and end.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import pty
import random
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_common.py
from _common import code_version  # noqa: E402
RESULTS = Path(__file__).resolve().parent / "results"
VENV_BIN = Path(sys.executable).parent
THIS = Path(__file__).resolve()

COLS, ROWS = 120, 40
FIREHOSE_TOKENS = 20_000
TARGET_CPU_200 = 0.20
TARGET_KEY_MEDIAN_S = 0.005
TARGET_KEY_MAX_S = 0.050
TARGET_KEY_MAX_FIREHOSE_S = 0.100
TARGET_ON_SCREEN_S = 1.0
TARGET_STARTUP_S = 1.0

PROMPT_DRAWN = "sk something".encode()  # the cursor sits on the placeholder's "A": its own colour codes
READY = b"ready"
STREAMING = "● streaming".encode()
PAUSED = "⏸ paused".encode()
DONE = "✓ done".encode()
KEY_SPACE, KEY_ENTER, KEY_CTRL_Q = b" ", b"\r", b"\x11"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


# ------------------------------------------------------------------------------------------------
# The wire server, in a process of its own


SERVE_CODE = r"""
import json, sys
from streamchat.testing.wire import WireServer
server = WireServer().start()
print(json.dumps(server.env()), flush=True)
for line in sys.stdin:  # "name value": set a tunable; EOF: stop
    name, value = line.split()
    setattr(server, name, type(getattr(WireServer, name))(value))
    print("ok", flush=True)
server.stop()
"""


class WireProcess:
    """``streamchat.testing.wire.WireServer`` in a child process; tunables set over its stdin."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SERVE_CODE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        self.env: dict[str, str] = json.loads(self.proc.stdout.readline())

    def set(self, **tunables: Any) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        for name, value in tunables.items():
            self.proc.stdin.write(f"{name} {value}\n")
            self.proc.stdin.flush()
            if self.proc.stdout.readline().strip() != "ok":
                raise RuntimeError(f"the wire server did not take {name}={value}")

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ------------------------------------------------------------------------------------------------
# The app in the child process (``--app-child``): the CLI with a probe


def app_child(argv: list[str]) -> None:
    """Run ``streamchat ARGV`` with a probe that writes JSON lines to $STREAMCHAT_BENCH_LOG.

    $STREAMCHAT_BENCH_SRC (optional): a folder holding another ``streamchat`` package to measure
    instead of the installed one (e.g. ``git archive HEAD streamchat | tar -x -C DIR``).
    $STREAMCHAT_BENCH_EXEC (optional): Python code run before the app starts (to try a change)."""
    src = os.environ.get("STREAMCHAT_BENCH_SRC")
    if src:  # ahead of the editable install's finder
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__]
        sys.path.insert(0, src)
    log = open(os.environ["STREAMCHAT_BENCH_LOG"], "a", buffering=1)
    clock = time.monotonic

    def note(kind: str, **fields: Any) -> None:
        log.write(json.dumps({"kind": kind, "t": clock(), **fields}) + "\n")

    from streamchat.core.events import Completed, Token
    from streamchat.tui import app as app_module
    from streamchat.tui import chat as chat_module

    class Probe:
        """A bus handler: when the last token was published, and how the stream ended."""

        def __init__(self, app: Any) -> None:
            self.app = app
            self.first: float | None = None
            self.last = 0.0
            self.tokens = 0

        def on_event(self, event: Any) -> None:
            if type(event) is Token:
                self.last = clock()
                if self.first is None:
                    self.first = self.last
                self.tokens += event.count
            elif type(event) in (Completed,) or event.type in ("failed", "cancelled"):
                text = getattr(event, "text", None) or getattr(event, "partial", "") or ""
                note("end", how=event.type, first_token=self.first, last_token=self.last,
                     tokens=self.tokens, chars=len(text), frames=getattr(self.app.screen, "frames", None),
                     layouts=passes["layout"], renders=passes["render"], code=app_module.__file__)
                self.first, self.last, self.tokens = None, 0.0, 0

    # how many layout and render passes Textual made (the costly parts of a frame)
    from textual._compositor import Compositor
    from textual.screen import Screen

    passes = {"layout": 0, "render": 0}
    for cls, method, key in ((Screen, "_refresh_layout", "layout"), (Compositor, "render_update", "render")):
        def counted(*args: Any, _original: Any = getattr(cls, method), _key: str = key, **kwargs: Any) -> Any:
            passes[_key] += 1
            return _original(*args, **kwargs)

        setattr(cls, method, counted)

    original_mount = app_module.StreamchatApp.on_mount

    def on_mount(self: Any) -> None:
        self.bus.register(Probe(self))
        original_mount(self)

    app_module.StreamchatApp.on_mount = on_mount

    from streamchat.tui import answer as answer_module

    original_finish = answer_module.AnswerView.finish

    async def finish(self: Any, *args: Any, **kwargs: Any) -> Any:  # the answer view's last update
        note("finish_start")
        try:
            return await original_finish(self, *args, **kwargs)
        finally:
            note("finish_end")

    answer_module.AnswerView.finish = finish

    for name in ("action_pause", "action_resume"):
        original = getattr(chat_module.ChatScreen, name)

        def wrapped(self: Any, _original: Any = original, _name: str = name) -> Any:
            result = _original(self)
            note(_name[len("action_"):])
            return result

        setattr(chat_module.ChatScreen, name, wrapped)

    if os.environ.get("STREAMCHAT_BENCH_EXEC"):
        exec(os.environ["STREAMCHAT_BENCH_EXEC"], {})

    profile_path = os.environ.get("STREAMCHAT_BENCH_PROFILE")
    from streamchat.cli import app as cli

    if profile_path:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        cli(argv, prog_name="streamchat")
    except SystemExit:
        pass
    finally:
        if profile_path:
            profiler.disable()
            profiler.dump_stats(profile_path)
        note("exit")


# ------------------------------------------------------------------------------------------------
# The app on a pseudo-terminal


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of process ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Terminal:
    """A command on a pseudo-terminal; a thread reads everything it draws (time-stamped)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        leader, follower = pty.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
        self.started = time.monotonic()
        # all three on the terminal: Textual draws on stderr
        self.proc = subprocess.Popen(args, stdin=follower, stdout=follower, stderr=follower, env=env,
                                     cwd=ROOT, start_new_session=True)
        os.close(follower)
        self.fd = leader
        self.buffer = bytearray()
        self.marks: list[tuple[int, float]] = []  # (buffer length after a read, when it was read)
        self.cond = threading.Condition()
        self.closed = False
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except OSError:
                data = b""
            now = time.monotonic()
            with self.cond:
                if not data:
                    self.closed = True
                    self.cond.notify_all()
                    return
                self.buffer += data
                self.marks.append((len(self.buffer), now))
                self.cond.notify_all()

    @property
    def offset(self) -> int:
        with self.cond:
            return len(self.buffer)

    def _time_at(self, end: int) -> float:
        for length, when in self.marks:  # (only searched once per found pattern)
            if length >= end:
                return when
        return self.marks[-1][1]

    def wait_for(self, pattern: bytes, start: int = 0, timeout: float = 30.0) -> tuple[float, int]:
        """When ``pattern`` was first read at or after ``start``: (time, offset after it)."""
        deadline = time.monotonic() + timeout
        at = start
        with self.cond:
            while True:
                found = self.buffer.find(pattern, at)
                if found >= 0:
                    end = found + len(pattern)
                    return self._time_at(end), end
                at = max(start, len(self.buffer) - len(pattern) + 1)
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    tail = bytes(self.buffer[-400:])
                    raise TimeoutError(f"{pattern!r} did not appear (end of output: {tail!r})")
                self.cond.wait(min(left, 0.5))

    def write(self, data: bytes) -> float:
        now = time.monotonic()
        os.write(self.fd, data)
        return now

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid)

    def rss(self) -> int:
        return proc_rss(self.proc.pid)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.write(KEY_CTRL_Q)
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)
        self.reader.join(2)
        try:
            os.close(self.fd)
        except OSError:
            pass


class Session:
    """One app process (with the probe) on a terminal, talking to the wire server."""

    def __init__(self, bench: "Bench", model: str) -> None:
        self.bench = bench
        fd, self.log_path = tempfile.mkstemp(prefix="probe-", suffix=".jsonl", dir=bench.tmp)
        os.close(fd)
        env = {**bench.env, "STREAMCHAT_BENCH_LOG": self.log_path}
        for name in ("STREAMCHAT_BENCH_SRC", "STREAMCHAT_BENCH_EXEC"):  # (see app_child)
            if os.environ.get(name):
                env[name] = os.environ[name]
        if bench.profile_path:
            env["STREAMCHAT_BENCH_PROFILE"] = bench.profile_path
        extra = ["--no-history"] if bench.no_history else []
        self.term = Terminal([sys.executable, str(THIS), "--app-child", "-m", model, *extra], env)
        self.term.wait_for(PROMPT_DRAWN, timeout=30)
        self.term.wait_for(READY, timeout=30)  # warm-up done: the SDK import is not in the figures
        time.sleep(0.3)

    def notes(self, kind: str | None = None) -> list[dict[str, Any]]:
        with open(self.log_path) as f:
            lines = [json.loads(line) for line in f if line.strip()]
        return [n for n in lines if kind is None or n["kind"] == kind]

    def wait_note(self, kind: str, count: int, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.notes(kind)
            if len(found) >= count:
                return found[count - 1]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {kind} note #{count}")
            time.sleep(0.02)

    def ask(self, prompt: str = "go") -> tuple[float, int]:
        """Type a prompt; return when streaming shows (time, offset)."""
        start = self.term.offset
        self.term.write(prompt.encode() + KEY_ENTER)
        return self.term.wait_for(STREAMING, start, timeout=30)

    def close(self) -> None:
        self.term.close()


# ------------------------------------------------------------------------------------------------
# The measures


class Bench:
    def __init__(self, quick: bool, profile: bool) -> None:
        self.quick = quick
        self.tmp = tempfile.mkdtemp(prefix="streamchat-bench-tui-")
        home = os.path.join(self.tmp, "home")
        os.makedirs(home)
        self.wire = WireProcess()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("ANTHROPIC_", "OPENAI_", "OLLAMA_")) and not k.startswith("STREAMCHAT_")}
        env.update(self.wire.env)
        env.update({"STREAMCHAT_HOME": home, "TERM": "xterm-256color", "COLORTERM": "truecolor",
                    "PYTHONUNBUFFERED": "1", "NO_PROXY": "127.0.0.1,localhost,::1"})
        env.pop("NO_COLOR", None)
        env.pop("TEXTUAL", None)
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # a person's install has bytecode (see startup)
        self.env = env
        self.profile_path: str | None = None
        self.want_profile = profile
        self.no_history = False

    def close(self) -> None:
        self.wire.stop()

    # -- 1: CPU while streaming at a steady rate -----------------------------------------------
    def cpu_at(self, rate: float, seconds: float, runs: int) -> dict[str, Any]:
        tokens = int(rate * seconds)
        self.wire.set(slow_rate=rate, slow_tokens=tokens)
        shares, halves, frames, chars = [], [], [], []
        for _ in range(runs):
            s = Session(self, "openai:slow")
            try:
                t_stream, offset = s.ask()
                time.sleep(1.0)  # leave out the first second (first tokens, focus change)
                c0, w0 = s.term.cpu(), time.monotonic()
                samples = [(w0, c0)]
                done_at = None
                while done_at is None:
                    time.sleep(0.25)
                    try:
                        done_at, _ = s.term.wait_for(DONE, offset, timeout=0)
                    except TimeoutError:
                        samples.append((time.monotonic(), s.term.cpu()))
                end = s.wait_note("end", 1)
                # the window: from 1 s after streaming showed to the last sample before the last token
                window = [(w, c) for w, c in samples if w <= end["last_token"]]
                (w0, c0), (w1, c1) = window[0], window[-1]
                shares.append((c1 - c0) / (w1 - w0))
                mid = len(window) // 2
                if mid >= 2:
                    wm, cm = window[mid]
                    halves.append(((cm - c0) / (wm - w0), (c1 - cm) / (w1 - wm)))
                chars.append(end["chars"])
                if end.get("frames") is not None:
                    span = end["last_token"] - end["first_token"]
                    frames.append((end["frames"] / span, end["layouts"] / span, end["renders"] / span))
            finally:
                s.close()
        return {
            "rate_tokens_per_s": rate, "tokens": tokens, "runs": runs,
            "cpu_share": median(shares), "cpu_share_all": shares,
            "cpu_share_first_half": median([h[0] for h in halves]) if halves else None,
            "cpu_share_second_half": median([h[1] for h in halves]) if halves else None,
            "answer_chars": chars[-1] if chars else None,
            "frames_per_s": median([f[0] for f in frames]) if frames else None,
            "layouts_per_s": median([f[1] for f in frames]) if frames else None,
            "renders_per_s": median([f[2] for f in frames]) if frames else None,
        }

    def cpu_floor(self, rate: float, seconds: float) -> dict[str, Any]:
        """The same stream without the app: ``streamchat ask`` (plain text to a pipe), its CPU share
        over the same kind of window — the SDK's parsing, the Stream and the bus."""
        self.wire.set(slow_rate=rate, slow_tokens=int(rate * seconds))
        exe = str(VENV_BIN / "streamchat")
        args = [exe] if os.path.exists(exe) else [sys.executable, "-m", "streamchat"]
        proc = subprocess.Popen([*args, "ask", "-m", "openai:slow", "--no-history", "go"], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
        assert proc.stdout is not None
        proc.stdout.read(1)  # the first token is out
        time.sleep(1.0)
        c0, w0 = proc_cpu(proc.pid), time.monotonic()
        time.sleep(max(1.0, seconds - 2.5))
        c1, w1 = proc_cpu(proc.pid), time.monotonic()
        proc.stdout.read()
        proc.wait(30)
        return {"rate_tokens_per_s": rate, "cpu_share": (c1 - c0) / (w1 - w0)}

    # -- 2: key press → action --------------------------------------------------------------------
    def press_space(self, s: Session, expect: bytes, action: str, n_before: int) -> dict[str, float] | None:
        start = s.term.offset
        t_key = s.term.write(KEY_SPACE)
        try:
            note = s.wait_note(action, n_before + 1, timeout=5)
        except TimeoutError:
            return None
        try:
            t_drawn, _ = s.term.wait_for(expect, start, timeout=5)
        except TimeoutError:
            t_drawn = float("nan")
        return {"action": note["t"] - t_key, "drawn": t_drawn - t_key}

    def keys_during(self, model: str, until_done: bool, presses_wanted: int, runs: int) -> dict[str, Any]:
        action_s: list[float] = []
        drawn_s: list[float] = []
        missed = 0
        for _ in range(runs):
            s = Session(self, model)
            try:
                _, offset = s.ask()
                pauses = resumes = 0
                while len(action_s) < presses_wanted:
                    time.sleep(random.uniform(0.15, 0.35) if "slow" in model else random.uniform(0.05, 0.15))
                    try:
                        s.term.wait_for(DONE, offset, timeout=0)
                        break  # the answer ended
                    except TimeoutError:
                        pass
                    if pauses == resumes:
                        r = self.press_space(s, PAUSED, "pause", pauses)
                        pauses += 1
                    else:
                        r = self.press_space(s, STREAMING, "resume", resumes)
                        resumes += 1
                    if r is None:
                        missed += 1
                        break
                    action_s.append(r["action"])
                    drawn_s.append(r["drawn"])
                if pauses > resumes:  # leave it running to the end
                    s.term.write(KEY_SPACE)
                if until_done:
                    s.term.wait_for(DONE, offset, timeout=120)
            finally:
                s.close()
            if len(action_s) >= presses_wanted:
                break
        drawn_ok = [d for d in drawn_s if d == d]
        return {
            "presses": len(action_s), "missed": missed,
            "action_median_s": median(action_s), "action_p95_s": pct(action_s, 0.95),
            "action_max_s": max(action_s) if action_s else float("nan"),
            "drawn_median_s": median(drawn_ok), "drawn_p95_s": pct(drawn_ok, 0.95),
            "drawn_max_s": max(drawn_ok) if drawn_ok else float("nan"),
            "action_all_s": [round(x, 5) for x in action_s],
        }

    # -- 3: the firehose: last token → on screen ------------------------------------------------
    def firehose(self, runs: int) -> dict[str, Any]:
        self.wire.set(firehose_tokens=FIREHOSE_TOKENS)
        delays, rates, shares, in_app, phases = [], [], [], [], []
        for _ in range(runs):
            s = Session(self, "openai:firehose")
            try:
                c0 = s.term.cpu()
                t_stream, offset = s.ask()
                t_done, _ = s.term.wait_for(DONE, offset, timeout=120)
                c1 = s.term.cpu()
                end = s.wait_note("end", 1)
                delays.append(t_done - end["last_token"])
                start, done = s.wait_note("finish_start", 1), s.wait_note("finish_end", 1)
                phases.append((end["t"] - end["last_token"], start["t"] - end["t"], done["t"] - start["t"],
                               t_done - done["t"]))
                span = end["last_token"] - end["first_token"]
                rates.append(end["tokens"] / span if span > 0 else float("nan"))
                shares.append((c1 - c0) / (t_done - t_stream))
                in_app.append(end["tokens"])
            finally:
                s.close()
        return {
            "tokens": FIREHOSE_TOKENS, "runs": runs,
            "last_token_to_screen_s": median(delays), "last_token_to_screen_max_s": max(delays),
            "last_token_to_screen_all_s": delays,
            "tokens_per_s_through_app": median(rates), "cpu_share": median(shares),
            "tokens_received": in_app,
            # last token → its stream's end published → the view's finish starts → it ends → drawn
            "phases_s": {name: median([p[i] for p in phases]) for i, name in enumerate(
                ("last_token_to_end_event", "end_event_to_finish", "finish", "finish_to_drawn"))},
        }

    # -- 4: memory ----------------------------------------------------------------------------
    def memory(self, answers: int) -> dict[str, Any]:
        self.wire.set(firehose_tokens=FIREHOSE_TOKENS)
        s = Session(self, "openai:firehose")
        try:
            rss = [s.term.rss()]
            chars = []
            for i in range(answers):
                _, offset = s.ask(f"again {i}")
                s.term.wait_for(DONE, offset, timeout=120)
                chars.append(s.wait_note("end", i + 1)["chars"])
                time.sleep(1.0)
                rss.append(s.term.rss())
        finally:
            s.close()
        growth = [b - a for a, b in zip(rss, rss[1:])]
        text_bytes = chars[0] if chars else 0
        later = growth[1:] or growth
        return {
            "answers": answers, "answer_chars": chars, "rss_bytes": rss, "growth_bytes": growth,
            "growth_per_text_byte_first": growth[0] / text_bytes if text_bytes else None,
            "growth_per_text_byte_later": median(later) / text_bytes if text_bytes else None,
            # linear: each later answer of the same size costs about what the first did
            "later_over_first": median(later) / growth[0] if growth and growth[0] > 0 else None,
        }

    # -- 5: start-up -----------------------------------------------------------------------------
    def startup(self, runs: int) -> dict[str, Any]:
        exe = str(VENV_BIN / "streamchat")
        args = [exe, "-m", "openai:slow"] if os.path.exists(exe) else [sys.executable, "-m", "streamchat",
                                                                       "-m", "openai:slow"]
        prompt, ready = [], []
        for i in range(runs + 1):  # the first run warms the page cache and .pyc files
            term = Terminal(args, self.env)
            try:
                t_prompt, _ = term.wait_for(PROMPT_DRAWN, timeout=30)
                t_ready, _ = term.wait_for(READY, timeout=30)
            finally:
                term.close()
            if i:
                prompt.append(t_prompt - term.started)
                ready.append(t_ready - term.started)
        return {"runs": runs, "command": " ".join(Path(a).name if a == exe else a for a in args),
                "prompt_drawn_s": median(prompt), "prompt_drawn_max_s": max(prompt),
                "prompt_drawn_all_s": prompt, "ready_s": median(ready)}

    def profile(self, rate: float, seconds: float) -> str:
        import pstats

        self.profile_path = os.path.join(self.tmp, "app.prof")
        try:
            self.cpu_at(rate, seconds, 1)
        finally:
            path, self.profile_path = self.profile_path, None
        for _ in range(50):
            if os.path.exists(path):
                break
            time.sleep(0.1)
        import io

        out = io.StringIO()
        stats = pstats.Stats(path, stream=out)
        stats.sort_stats("cumulative").print_stats(45)
        stats.sort_stats("tottime").print_stats(35)
        return out.getvalue()


# ------------------------------------------------------------------------------------------------
# Output


def ms(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{x * 1000:.1f} ms"


def print_report(res: dict[str, Any]) -> None:
    env = res["environment"]
    la, lb = env["load_average_at_start"], env["load_average_at_end"]
    print()
    print("streamchat TUI benchmark (app in a 120×40 pseudo-terminal, wire server in another process)")
    print("=" * 100)
    print(f"python {env['python']} · textual {env['textual']} · CPUs {env['cpu_count']} · mode {res['mode']} · "
          f"load (1/5/15 min) at start {la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f}, at end {lb[0]:.2f}/{lb[1]:.2f}/{lb[2]:.2f}")
    rows: list[tuple[str, str, str, str]] = []

    def row(what: str, value: str, target: str, ok: bool | None) -> None:
        rows.append((what, value, target, "" if ok is None else ("ok" if ok else "MISS")))

    c200, c50 = res["cpu_200"], res["cpu_50"]
    row("CPU share of a core, 200 tok/s", f"{c200['cpu_share']:.1%}", "< 20%", c200["cpu_share"] < TARGET_CPU_200)
    if c200.get("cpu_share_first_half") is not None:
        row("  … first half / second half of the answer",
            f"{c200['cpu_share_first_half']:.1%} / {c200['cpu_share_second_half']:.1%}", "", None)
    row("CPU share of a core, 50 tok/s", f"{c50['cpu_share']:.1%}", "", None)
    if "cpu_floor_200" in res:
        row("  … the same streams without the app (streamchat ask), 200 / 50 tok/s",
            f"{res['cpu_floor_200']['cpu_share']:.1%} / {res['cpu_floor_50']['cpu_share']:.1%}", "", None)
    if c200.get("frames_per_s") is not None:
        row("  … frames · Textual layouts · renders per second, 200 tok/s",
            f"{c200['frames_per_s']:.1f} · {c200['layouts_per_s']:.1f} · {c200['renders_per_s']:.1f}", "", None)
        row("  … frames · Textual layouts · renders per second, 50 tok/s",
            f"{c50['frames_per_s']:.1f} · {c50['layouts_per_s']:.1f} · {c50['renders_per_s']:.1f}", "", None)
    k = res["keys_200"]
    row(f"key → action, 200 tok/s (median, n={k['presses']})", ms(k["action_median_s"]), "< 5 ms",
        k["action_median_s"] < TARGET_KEY_MEDIAN_S)
    row("key → action, 200 tok/s (p95 / max)", f"{ms(k['action_p95_s'])} / {ms(k['action_max_s'])}", "max < 50 ms",
        k["action_max_s"] < TARGET_KEY_MAX_S)
    row("key → drawn, 200 tok/s (median / max)", f"{ms(k['drawn_median_s'])} / {ms(k['drawn_max_s'])}", "", None)
    kf = res["keys_firehose"]
    row(f"key → action, firehose (median, n={kf['presses']})", ms(kf["action_median_s"]), "", None)
    row("key → action, firehose (p95 / max)", f"{ms(kf['action_p95_s'])} / {ms(kf['action_max_s'])}",
        "max < 100 ms", kf["action_max_s"] < TARGET_KEY_MAX_FIREHOSE_S)
    row("key → drawn, firehose (median / max)", f"{ms(kf['drawn_median_s'])} / {ms(kf['drawn_max_s'])}", "", None)
    f = res["firehose"]
    row(f"firehose {f['tokens']:,} tok: last token → on screen (median / max)",
        f"{ms(f['last_token_to_screen_s'])} / {ms(f['last_token_to_screen_max_s'])}", "< 1 s",
        f["last_token_to_screen_max_s"] < TARGET_ON_SCREEN_S)
    row("firehose: tokens/s through the app · CPU share",
        f"{f['tokens_per_s_through_app']:,.0f} · {f['cpu_share']:.0%}", "", None)
    m = res["memory"]
    row(f"memory: RSS growth per answer ({m['answer_chars'][0]:,} chars)",
        " · ".join(f"{g / 1e6:.1f} MB" for g in m["growth_bytes"]), "linear in the text",
        m["later_over_first"] is not None and m["later_over_first"] < 1.5)
    row("  … bytes of RSS per byte of text (first / later answers)",
        f"{m['growth_per_text_byte_first']:.0f} / {m['growth_per_text_byte_later']:.0f}", "", None)
    st = res["startup"]
    row(f"start-up to the prompt drawn (median / max of {st['runs']})",
        f"{ms(st['prompt_drawn_s'])} / {ms(st['prompt_drawn_max_s'])}", "< 1 s", st["prompt_drawn_max_s"] < TARGET_STARTUP_S)
    row("start-up until warm-up is ready (median)", ms(st["ready_s"]), "", None)
    width = max(len(r[0]) for r in rows) + 2
    vwidth = max(len(r[1]) for r in rows) + 2
    print(f"{'measure':<{width}}{'value':<{vwidth}}{'target':<20}")
    print("-" * (width + vwidth + 26))
    for what, value, target, ok in rows:
        print(f"{what:<{width}}{value:<{vwidth}}{target:<20}{ok}")
    missed = res["targets_missed"]
    print()
    print("targets missed: " + ("; ".join(missed) if missed else "none"))


CODE_FILES = ("streamchat/tui/app.py", "streamchat/tui/chat.py", "streamchat/tui/widgets.py", "streamchat/tui/answer.py",
              "streamchat/core/stream.py")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--app-child"]:
        app_child(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter answers and fewer runs (~2.5 min); "
                        "writes results/tui-quick.json")
    parser.add_argument("--profile", action="store_true",
                        help="also profile the app (cProfile) at 200 tok/s: results/profile_tui.txt")
    parser.add_argument("--only", default=None,
                        help="comma-separated parts to run: cpu,keys,firehose,memory,startup (default: all)")
    parser.add_argument("--out", default=None, help="JSON output path")
    parser.add_argument("--no-history", action="store_true",
                        help="run the app with --no-history (no SQLite recorder on the bus)")
    args = parser.parse_args(argv)
    quick = args.quick
    parts = set(args.only.split(",")) if args.only else {"cpu", "keys", "firehose", "memory", "startup"}

    from importlib.metadata import version

    results: dict[str, Any] = {
        "mode": "quick" if quick else "full",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": {
            "python": platform.python_version(), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "textual": version("textual"),
            "load_average_at_start": os.getloadavg(), "terminal": f"{COLS}x{ROWS} pty",
            "server": "streamchat.testing.wire.WireServer in a separate process",
            "code": code_version(CODE_FILES),
        },
    }
    t_start = time.perf_counter()
    # killed (SIGTERM): still close the app processes — one whose terminal is gone can spin on it
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bench = Bench(quick, args.profile)
    bench.no_history = args.no_history
    results["environment"]["app_args"] = "--no-history" if args.no_history else ""
    try:
        if "startup" in parts:
            print("start-up…", file=sys.stderr)
            results["startup"] = bench.startup(3 if quick else 7)
        if "cpu" in parts:
            print("CPU at 200 tok/s…", file=sys.stderr)
            results["cpu_200"] = bench.cpu_at(200, 8 if quick else 15, 2 if quick else 3)
            print("CPU at 50 tok/s…", file=sys.stderr)
            results["cpu_50"] = bench.cpu_at(50, 8 if quick else 15, 1 if quick else 2)
            print("CPU without the app (streamchat ask)…", file=sys.stderr)
            results["cpu_floor_200"] = bench.cpu_floor(200, 8 if quick else 15)
            results["cpu_floor_50"] = bench.cpu_floor(50, 8 if quick else 15)
        if "keys" in parts:
            print("keys at 200 tok/s…", file=sys.stderr)
            bench.wire.set(slow_rate=200, slow_tokens=200 * (12 if quick else 30))
            results["keys_200"] = bench.keys_during("openai:slow", False, 30 if quick else 80, 3)
            print("keys under a firehose…", file=sys.stderr)
            bench.wire.set(firehose_tokens=FIREHOSE_TOKENS)
            results["keys_firehose"] = bench.keys_during("openai:firehose", True, 20 if quick else 50, 6 if quick else 15)
        if "firehose" in parts:
            print("firehose…", file=sys.stderr)
            results["firehose"] = bench.firehose(2 if quick else 4)
        if "memory" in parts:
            print("memory…", file=sys.stderr)
            results["memory"] = bench.memory(3)
        if args.profile:
            print("profile…", file=sys.stderr)
            RESULTS.mkdir(parents=True, exist_ok=True)
            text = bench.profile(200, 10)
            (RESULTS / "profile_tui.txt").write_text(
                "cProfile of the app process (all of it, main thread) streaming 2,000 tokens at 200 tok/s "
                "in a pty\n\n" + text)
    finally:
        bench.close()
    results["environment"]["load_average_at_end"] = os.getloadavg()
    results["elapsed_s"] = time.perf_counter() - t_start

    missed = []
    if "cpu_200" in results and results["cpu_200"]["cpu_share"] >= TARGET_CPU_200:
        missed.append(f"CPU at 200 tok/s ({results['cpu_200']['cpu_share']:.0%} ≥ 20%)")
    if "keys_200" in results:
        k = results["keys_200"]
        if not k["action_median_s"] < TARGET_KEY_MEDIAN_S:
            missed.append(f"key median at 200 tok/s ({ms(k['action_median_s'])})")
        if not k["action_max_s"] < TARGET_KEY_MAX_S:
            missed.append(f"key max at 200 tok/s ({ms(k['action_max_s'])})")
    if "keys_firehose" in results and not results["keys_firehose"]["action_max_s"] < TARGET_KEY_MAX_FIREHOSE_S:
        missed.append(f"key max under a firehose ({ms(results['keys_firehose']['action_max_s'])})")
    if "firehose" in results and not results["firehose"]["last_token_to_screen_max_s"] < TARGET_ON_SCREEN_S:
        missed.append(f"firehose on screen ({ms(results['firehose']['last_token_to_screen_max_s'])})")
    if "memory" in results and not (results["memory"]["later_over_first"] or 99) < 1.5:
        missed.append("memory growth not linear")
    if "startup" in results and not results["startup"]["prompt_drawn_max_s"] < TARGET_STARTUP_S:
        missed.append(f"start-up ({ms(results['startup']['prompt_drawn_max_s'])})")
    results["targets_missed"] = missed

    if parts == {"cpu", "keys", "firehose", "memory", "startup"}:
        print_report(results)
    else:
        print(json.dumps({k: v for k, v in results.items() if k != "environment"}, indent=1, default=str))
    out_path = Path(args.out) if args.out else RESULTS / ("tui-quick.json" if quick else "tui.json")
    if args.out or parts == {"cpu", "keys", "firehose", "memory", "startup"}:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"\nwrote {out_path} in {results['elapsed_s']:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
