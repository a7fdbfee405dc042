"""Regenerate the SVGs in screenshots/ from what streamchat itself draws.

    .venv/bin/python screenshots/make_screenshots.py          # all of them
    .venv/bin/python screenshots/make_screenshots.py tui      # only the app's (or: cli)

* ``ask-*.svg``: each shot runs the real ``streamchat`` command on a pseudo-terminal (so it behaves
  exactly as for a person), against the loopback wire server or the embedded model, and records
  the bytes the terminal received as an SVG (Rich's terminal rendering).
* ``tui-*.svg``: the full-screen app, driven into each of its main states by
  ``streamchat/testing/scenes.py`` (the same scenes as the snapshot tests) against the wire server;
  the app saves its own screen (``app.save_screenshot``). Unlike the snapshots, the stats panel
  keeps its real figures (tok/s, first token, elapsed), so these change a little from run to run.

Deterministic where the source is (the wire server).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.text import Text

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from streamchat.testing.terminal import run_on_terminal  # noqa: E402
from streamchat.testing.wire import WireServer  # noqa: E402


def terminal_output(args: list[str], env: dict[str, str]) -> str:
    return run_on_terminal(args, env, stderr_too=True)[1].replace("\r\n", "\n")


def shot(name: str, title: str, command: str, output: str, width: int = 100) -> None:
    console = Console(record=True, width=width, force_terminal=True, color_system="truecolor", file=open(os.devnull, "w"))
    console.print(Text("$ ", style="bold green") + Text(command, style="bold"))
    console.print(Text.from_ansi(output.rstrip("\n")))
    console.save_svg(str(HERE / f"{name}.svg"), title=title)
    print(f"wrote screenshots/{name}.svg")


def cli_shots() -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "OPENAI_", "OLLAMA_", "STREAMCHAT_"))}
    base["STREAMCHAT_HOME"] = str(HERE / ".home")
    cli = [sys.executable, "-m", "streamchat"]
    with WireServer() as server:
        env = {**base, **server.env()}
        out = terminal_output([*cli, "ask", "-m", "openai:normal", "--confidence", "hi"], env)
        shot("ask-confidence-openai", "streamchat ask --confidence (OpenAI logprobs)",
             "streamchat ask -m openai:normal --confidence hi", out)
        out = terminal_output([*cli, "ask", "-m", "anthropic:error-mid", "hi"], env)
        shot("ask-error-partial-kept", "an error mid-answer: the partial stays, one line says what happened",
             "streamchat ask -m anthropic:error-mid hi", out)
    offline = {**base, "OLLAMA_HOST": "http://127.0.0.1:9", "STREAMCHAT_THEME": "high-contrast"}
    out = terminal_output([*cli, "ask", "--confidence", "--max-tokens", "60", "--temperature", "0",
                           "Write a haiku about the sea."], offline)
    shot("ask-confidence-local", "the embedded model, offline, coloured by its own token probabilities",
         "streamchat ask --confidence 'Write a haiku about the sea.'", out)


async def tui_shots() -> None:
    """One SVG per scene, saved by the app itself once the scene's state is reached."""
    from streamchat.testing.scenes import SCENES, wire_environment

    with WireServer() as server:
        for scene in SCENES.values():  # each in a fresh STREAMCHAT_HOME (a history of its own)
            with tempfile.TemporaryDirectory() as home, wire_environment(server, Path(home)), \
                    scene.tuned(server):
                app = scene.app()
                async with app.run_test(size=scene.size) as pilot:
                    await scene.reach(pilot)
                    app.title = f"streamchat: {scene.title}"  # the SVG's window title
                    app.save_screenshot(f"tui-{scene.name}.svg", str(HERE))
            print(f"wrote screenshots/tui-{scene.name}.svg")


def main(which: list[str]) -> None:
    unknown = set(which) - {"cli", "tui"}
    if unknown:
        sys.exit(f"usage: make_screenshots.py [cli] [tui]  (not {', '.join(sorted(unknown))})")
    if not which or "cli" in which:
        cli_shots()
    if not which or "tui" in which:
        asyncio.run(tui_shots())


if __name__ == "__main__":
    main(sys.argv[1:])
