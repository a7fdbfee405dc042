"""The installed ``streamchat`` command, end to end, in a real terminal (tmux): a person's session
from the first key to ``ctrl+q``.

tmux gives the app a real pseudo-terminal of a fixed size, takes keys (``send-keys``) and shows what
the terminal displays (``capture-pane``), so this checks what Pilot cannot: the console script, the
terminal's raw mode and key decoding (space, escape, ctrl+c, ctrl+q), the alternate screen, and
the exit code. Each run has its own tmux server (``tmux -L`` with a unique socket name), killed at
the end whatever happens.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import cli_env

WIDTH, HEIGHT = 100, 30
MODEL = "openai:slow"

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def installed_streamchat() -> str:
    """The console script installed next to this Python (the venv's bin folder)."""
    found = shutil.which("streamchat", path=str(Path(sys.executable).parent))
    assert found, f"no streamchat console script next to {sys.executable}"
    return found


class Tmux:
    """One tmux server of our own, running one session with one pane."""

    def __init__(self, env: dict[str, str]) -> None:
        self.socket = f"streamchat-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.env = env
        self.socket_path: str | None = None

    def __call__(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-L", self.socket, *args], check=False, env=self.env,
                              capture_output=True, text=True, timeout=10)
        assert done.returncode == 0, f"tmux {args[0]} failed: {done.stderr}"
        return done.stdout

    def start(self, command: str) -> None:
        self("-f", "/dev/null", "new-session", "-d", "-s", "chat", "-x", str(WIDTH), "-y", str(HEIGHT),
             command)
        self.socket_path = self("display-message", "-p", "#{socket_path}").strip()

    def keys(self, *keys: str, literal: bool = False) -> None:
        self("send-keys", "-t", "chat", *(["-l"] if literal else []), *keys)

    def pane(self) -> str:
        return self("capture-pane", "-p", "-t", "chat")

    def wait_for(self, predicate, what: str, timeout: float = 10.0) -> str:
        """Poll the pane until ``predicate(pane)``; return that pane."""
        deadline = time.monotonic() + timeout
        while True:
            pane = self.pane()
            if predicate(pane):
                return pane
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the pane shows:\n{pane}")
            time.sleep(0.1)

    def steady(self, part, quiet: float = 0.5, timeout: float = 5.0) -> str:
        """``part(pane)`` once it has not changed for ``quiet`` seconds."""
        deadline = time.monotonic() + timeout
        last, since = part(self.pane()), time.monotonic()
        while time.monotonic() - since < quiet:
            if time.monotonic() > deadline:
                raise AssertionError(f"still changing after {timeout} s:\n{self.pane()}")
            time.sleep(0.1)
            now = part(self.pane())
            if now != last:
                last, since = now, time.monotonic()
        return last

    def kill(self) -> None:
        """Stop the server (and the app, if it still runs); remove the socket it leaves behind."""
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], check=False, env=self.env,
                       capture_output=True, timeout=10)
        if self.socket_path:
            Path(self.socket_path).unlink(missing_ok=True)


def words(text: str) -> str:
    return " ".join(text.split())


def header(pane: str) -> str:
    """The answer's header line (model, then its state)."""
    lines = pane.splitlines()
    return next((line for line in lines[1:] if line.strip().startswith(MODEL)), "")


def answer(pane: str) -> str:
    """The answer's text as shown: the lines under its header, up to the note under it (▌…) or the
    stats box, whitespace collapsed."""
    lines = pane.splitlines()
    start = next((i for i, line in enumerate(lines) if i and line.strip().startswith(MODEL)), None)
    if start is None:
        return ""
    shown = []
    for line in lines[start + 1:]:
        if line.strip().startswith(("▌", "╭")):
            break
        shown.append(line)
    return words("\n".join(shown))


def test_a_session_in_a_real_terminal(server, tmp_path):
    """Ask; the answer streams; space pauses (the text stops growing) and resumes; escape stops it
    (the partial stays, marked cut off); ctrl+c does not quit; ctrl+q quits with exit code 0."""
    server.slow_rate, server.slow_tokens = 12, 400  # ~33 s in all: it is stopped long before
    full = words("".join(server.tokens_for("slow")))
    env = cli_env(server, tmp_path, {"TMUX": None, "TMUX_PANE": None, "SHELL": "/bin/sh",
                                     "TERM": "xterm-256color"})
    command = f'{shlex.quote(installed_streamchat())} -m {MODEL}; echo "[exit $?]"; sleep 30'
    tmux = Tmux(env)
    try:
        tmux.start(command)
        tmux.wait_for(lambda p: "Ask something" in p and "ready" in p.splitlines()[0],
                      "the app to start and warm up", timeout=20)

        tmux.keys("hello there", literal=True)
        tmux.keys("Enter")
        pane = tmux.wait_for(lambda p: len(answer(p).split()) >= 3 and "streaming" in header(p),
                             "the answer to stream")
        assert "hello there" in pane  # the prompt, above its answer
        so_far = answer(pane)
        tmux.wait_for(lambda p: len(answer(p)) > len(so_far), "the answer to grow")

        tmux.keys("Space")
        tmux.wait_for(lambda p: "paused" in header(p), "paused", timeout=3)
        paused = tmux.steady(answer)  # (tokens already on their way may still land)
        time.sleep(1.0)
        pane = tmux.pane()
        assert answer(pane) == paused and "paused" in header(pane), pane  # nothing moves
        assert full.startswith(paused) and len(paused) < len(full)

        tmux.keys("Space")
        tmux.wait_for(lambda p: "streaming" in header(p) and len(answer(p)) > len(paused),
                      "the answer to stream on")

        tmux.keys("Escape")
        pane = tmux.wait_for(lambda p: "cut off here" in p and "stopped" in header(p), "the stop")
        partial = answer(pane)
        assert len(partial) > len(paused) and full.startswith(partial) and partial != full
        time.sleep(0.5)
        assert answer(tmux.pane()) == partial  # the partial stays

        tmux.keys("C-c")
        pane = tmux.wait_for(lambda p: "Nothing is streaming" in p, "ctrl+c's hint", timeout=5)
        assert "[exit" not in pane and answer(pane) == partial  # still running, answer kept

        tmux.keys("C-q")
        pane = tmux.wait_for(lambda p: "[exit" in p, "the app to quit")
        assert re.search(r"^\[exit 0\]$", pane, re.MULTILINE), pane
        assert "Traceback" not in pane and "Error" not in pane, pane
    finally:
        tmux.kill()
