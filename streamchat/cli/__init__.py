"""The ``streamchat`` command line (typer). Thin: each command imports what it needs when it runs,
so ``streamchat --help`` pays only for typer.

Exit codes: 0 done · 1 provider error · 2 bad input or config · 3 authentication · 4 rate limited or
overloaded · 5 timeout · 6 connection failed · 70 internal error · 130 cancelled (Ctrl+C).
"""

from __future__ import annotations

import sys
from typing import Any, Callable, List, Optional

import typer

app = typer.Typer(
    name="streamchat",
    help="Stream answers from Claude, GPT, Ollama and an embedded local model — and steer them live.",
    add_completion=False,
    rich_markup_mode=None,  # plain click help: rich's markdown help costs ~150 ms of start-up
    no_args_is_help=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

EXIT_INTERNAL = 70
_state: dict[str, Any] = {"debug": False}


def _fail(message: str, code: int) -> None:
    err = sys.stderr
    line = f"error: {message}"
    if err.isatty():
        line = f"\x1b[31m{line}\x1b[0m"
    err.write(line + "\n")
    err.flush()
    raise typer.Exit(code)


def _run(main: Callable[[], Any]) -> Any:
    """Run an async command: StreamchatError → one line and its exit code; never a traceback
    unless --debug."""
    import asyncio

    from ..core.errors import StreamchatError

    try:
        return asyncio.run(main())
    except StreamchatError as exc:
        if _state["debug"]:
            raise
        _fail(str(exc), exc.exit_code)
    except (KeyboardInterrupt, asyncio.CancelledError):
        sys.stderr.write("cancelled\n")
        raise typer.Exit(130)
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:
        if _state["debug"]:
            raise
        from ..core.errors import redact

        _fail(f"internal error ({type(exc).__name__}: {redact(str(exc))}); run with --debug for details",
              EXIT_INTERNAL)


def _settings():
    from ..config import load_settings

    return load_settings()


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    model: Optional[List[str]] = typer.Option(None, "--model", "-m", metavar="PROVIDER:MODEL", help="Model to chat with; repeat it to compare models side by side."),
    system: Optional[str] = typer.Option(None, "--system", "-s", metavar="TEXT", help="System prompt."),
    plain: bool = typer.Option(False, "--plain", help="A plain line-by-line chat instead of the full-screen app (the default when not on a terminal)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
    version: bool = typer.Option(False, "--version", help="Show the version and exit."),
) -> None:
    """Without a command: open the chat (a full-screen app on a terminal)."""
    _state["debug"] = debug
    from ..logs import setup_logging

    setup_logging(debug)
    if version:
        from .. import __version__

        typer.echo(f"streamchat {__version__}")
        raise typer.Exit(0)
    if ctx.invoked_subcommand is not None:
        return
    models = list(model or [])
    if plain or not (sys.stdin.isatty() and sys.stdout.isatty()):
        if len(models) > 1:
            _fail("side-by-side models need the full-screen app (a terminal, without --plain)", 2)
        from .chat import run_chat

        code = _run(lambda: run_chat(settings=_settings(), model=models[0] if models else None, system=system))
        raise typer.Exit(code or 0)
    raise typer.Exit(_run_app(models, system))


def _run_app(models: list[str], system: str | None) -> int:
    """The full-screen app. Bad settings or model ids fail with one line before any window opens."""

    async def prepare():
        from ..config import resolve_model
        from ..tui.app import make_app

        settings = _settings()
        reason = "given with --model" if models else None
        chosen = models
        if not chosen:
            picked, reason = await resolve_model(None, settings)
            chosen = [picked]
        return make_app(settings, chosen, system, reason=reason)

    tui = _run(prepare)
    tui.run()
    return tui.return_code or 0


@app.command()
def ask(
    prompt: Optional[str] = typer.Argument(None, metavar="PROMPT", help="The question; '-' or nothing reads it from stdin.", show_default=False),
    model: Optional[str] = typer.Option(None, "--model", "-m", metavar="PROVIDER:MODEL", help="e.g. openai:gpt-4o-mini, ollama:llama3.2:1b, local:smollm2."),
    system: Optional[str] = typer.Option(None, "--system", "-s", metavar="TEXT", help="System prompt."),
    timeout: Optional[float] = typer.Option(None, "--timeout", "-t", min=0.1, metavar="SECONDS", help="Seconds the whole answer may take."),
    json: bool = typer.Option(False, "--json", help="Write the stream events as NDJSON instead of text."),
    confidence: bool = typer.Option(False, "--confidence", help="Ask for per-token probabilities (logprobs)."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", min=1, metavar="N", help="Most tokens in the answer."),
    temperature: Optional[float] = typer.Option(None, "--temperature", min=0.0, max=2.0, metavar="T", help="Sampling temperature (0–2)."),
) -> None:
    """Ask one question and stream the answer to stdout."""
    from .ask import read_prompt, run_ask

    text = read_prompt(prompt)
    if text is None:
        _fail("no prompt: give it as an argument, or pipe it in (echo hi | streamchat ask)", 2)
    if not text.strip():
        _fail("the prompt is empty", 2)
    code = _run(lambda: run_ask(
        text, settings=_settings(), model=model, system=system, timeout=timeout, json_mode=json,
        confidence=confidence, max_tokens=max_tokens, temperature=temperature,
        out=sys.stdout, err=sys.stderr,
    ))
    raise typer.Exit(code)


@app.command()
def models(
    json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List the providers, whether each is ready here, and their models."""
    from .models import run_models

    raise typer.Exit(_run(lambda: run_models(settings=_settings(), json_mode=json, out=sys.stdout)))


def main() -> None:
    """Entry point: like ``app()``, but a usage error is one line too (``error: …``, exit 2)."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        sys.stderr.write("cancelled\n")
        code = 130
    except typer.TyperException as exc:  # click's usage errors (bad option, missing value …)
        format_message = getattr(exc, "format_message", None)
        message = format_message() if format_message else str(exc)
        ctx = getattr(exc, "ctx", None)
        where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        sys.stderr.write(f"error: {message}{where}\n")
        code = getattr(exc, "exit_code", 2)
    sys.exit(code if isinstance(code, int) else 0)
