"""Regenerate the SVGs in screenshots/ from what streamchat itself writes to a terminal.

    .venv/bin/python screenshots/make_screenshots.py

Each shot runs the real ``streamchat`` command on a pseudo-terminal (so it behaves exactly as for a
person), against the loopback wire server or the embedded model, and records the bytes the terminal
received as an SVG (Rich's terminal rendering). Deterministic where the source is (the wire server).
"""

from __future__ import annotations

import os
import sys
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


def main() -> None:
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


if __name__ == "__main__":
    main()
