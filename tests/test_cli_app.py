"""Bare ``streamchat``: the full-screen app on a terminal, the plain line chat otherwise — and bad
input is one line before any window opens."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

from conftest import cli_env

STREAMCHAT = [sys.executable, "-m", "streamchat"]


def run_in_pty(args: list[str], env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    """Run with stdin, stdout and stderr all on one pseudo-terminal (as a person starts it)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(args, stdin=follower, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    received = b""
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:
            break
        if not data:
            break
        received += data
    proc.wait(timeout=timeout)
    os.close(leader)
    return proc.returncode, received.decode("utf-8", "replace")


def test_a_bad_model_on_a_terminal_is_one_line_before_any_window(server, tmp_path):
    code, shown = run_in_pty([*STREAMCHAT, "-m", "nosuch:model"], cli_env(server, tmp_path))
    assert code == 2
    assert shown == ("\x1b[31merror: unknown provider 'nosuch': choose one of anthropic, openai, "
                     "ollama, local\x1b[0m\r\n"), shown  # one red line; no window was ever drawn
    assert "Traceback" not in shown


def test_piped_bare_streamchat_is_the_plain_chat(server, tmp_path):
    proc = subprocess.run([*STREAMCHAT, "-m", "openai:echo"], input="hello plain chat\n", text=True,
                          capture_output=True, env=cli_env(server, tmp_path), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "hello plain chat" in proc.stdout
    assert "\x1b[" not in proc.stdout  # no full-screen app
    # recorded like any other chat
    from streamchat.history import HistoryStore

    env = cli_env(server, tmp_path)
    with HistoryStore(Path(env["STREAMCHAT_HOME"]) / "history.db") as store:
        (conversation,) = store.conversations()
        assert [(m.role, m.text, m.state) for m in store.messages(conversation.id)] == [
            ("user", "hello plain chat", "complete"), ("assistant", "hello plain chat", "complete")]


def test_side_by_side_lanes_need_the_app(server, tmp_path):
    proc = subprocess.run([*STREAMCHAT, "--plain", "-m", "openai:normal", "-m", "ollama:normal"],
                          stdin=subprocess.DEVNULL, text=True, capture_output=True,
                          env=cli_env(server, tmp_path), timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: side-by-side models need the full-screen app (a terminal, without --plain)"]


# -- the root's options are parsed without typer (its pydantic validators cost ~0.15 s per start-up)
ROOT_ARGVS = [
    [], ["-m", "openai:echo"], ["--model=openai:echo", "-m", "ollama:normal", "--no-history"],
    ["-s", "be brief", "--plain"], ["--system=x=y", "--debug"], ["-p", "default"], ["--pipeline", "two"],
    ["--version"],
]


def test_the_plain_start_reads_the_options_as_typer_does():
    import typer

    from streamchat.cli import _plain_start, app

    command = typer.main.get_command(app)
    for argv in ROOT_ARGVS:
        ctx = command.make_context("streamchat", list(argv))
        want = {**ctx.params, "model": list(ctx.params["model"] or [])}
        assert _plain_start(argv) == want, argv
    # anything else is typer's: commands, help, unknown options, a missing value, an option's value
    # that looks like an option, a flag with a value
    for argv in (["ask", "hi"], ["--debug", "history", "list"], ["--help"], ["-h"], ["--bogus"], ["-m"],
                 ["-m", "--plain"], ["--plain=yes"], ["hello"]):
        assert _plain_start(argv) is None, argv


def test_a_plain_start_does_not_import_pydantic(tmp_path):
    code = ("import sys; sys.argv = ['streamchat', '--version']\n"
            "from streamchat.cli import main\n"
            "try:\n    main()\nexcept SystemExit as exit:\n    print(exit.code, 'pydantic' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "STREAMCHAT_HOME": str(tmp_path)})
    from streamchat import __version__

    assert proc.stdout.splitlines() == [f"streamchat {__version__}", "0 False"], proc.stdout + proc.stderr


def test_a_command_group_without_its_command_shows_its_help(tmp_path):
    """``streamchat history`` (or ``route``) alone: the group's commands, as click shows them — on
    stderr, exit 2, not dressed up as a one-line error."""
    env = {**os.environ, "STREAMCHAT_HOME": str(tmp_path)}
    for group, commands in (("history", ("list", "show", "search")), ("route", ("stats", "clear"))):
        res = subprocess.run([*STREAMCHAT, group], env=env, capture_output=True, text=True, timeout=60)
        assert res.returncode == 2 and res.stdout == "", res
        first = res.stderr.split("\n", 1)[0]  # (``python -m streamchat`` here)
        assert first.startswith("Usage: ") and first.endswith(f"streamchat {group} [OPTIONS] COMMAND [ARGS]..."), first
        assert "error" not in res.stderr.lower() and "Traceback" not in res.stderr
        assert all(f"\n  {name} " in res.stderr for name in commands), res.stderr
