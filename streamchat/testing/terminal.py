"""Run a command with its stdout on a pseudo-terminal, as a person's terminal would be, and return
what the terminal received (tests of terminal behaviour; screenshots/make_screenshots.py)."""

from __future__ import annotations

import os
import pty
import subprocess


def run_on_terminal(args: list[str], env: dict[str, str], *, stderr_too: bool = False,
                    timeout: float = 120) -> tuple[int, str, str]:
    """``(exit code, what the terminal showed, stderr)``; with ``stderr_too`` stderr goes to the
    terminal as well (and the third item is empty)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(args, stdout=follower, stderr=follower if stderr_too else subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=env)
    os.close(follower)
    received = b""
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the other side closed: the command is done writing
            break
        if not data:
            break
        received += data
    stderr = proc.stderr.read().decode("utf-8", "replace") if proc.stderr else ""
    proc.wait(timeout=timeout)
    os.close(leader)
    return proc.returncode, received.decode("utf-8", "replace"), stderr
