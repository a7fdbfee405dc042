"""The ``streamchat`` command line (typer). Thin: each command imports what it needs when it runs,
so ``streamchat --help`` pays only for typer.

Exit codes: 0 done · 1 provider error · 2 bad input or config · 3 authentication · 4 rate limited or
overloaded · 5 timeout · 6 connection failed · 7 history database unusable · 70 internal error · 130 cancelled (Ctrl+C).
"""

from __future__ import annotations

import sys
from pathlib import Path
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
    no_history: bool = typer.Option(False, "--no-history", help="Keep no history of this chat."),
    pipeline: Optional[str] = typer.Option(None, "--pipeline", "-p", metavar="NAME", help="Answer every question in stages, one lane per stage (a fast draft, then a refinement): a [pipelines.NAME] of the config, or 'default'."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
    version: bool = typer.Option(False, "--version", help="Show the version and exit."),
) -> None:
    """Without a command: open the chat (a full-screen app on a terminal)."""
    _options(debug, version)
    if ctx.invoked_subcommand is None:
        _open_chat(model, system, plain, no_history, pipeline)


def _options(debug: bool, version: bool) -> None:
    """The root's options that every command shares."""
    _state["debug"] = debug
    from ..logs import setup_logging

    setup_logging(debug)
    if version:
        from .. import __version__

        typer.echo(f"streamchat {__version__}")
        raise typer.Exit(0)


def _open_chat(model: Optional[List[str]], system: Optional[str], plain: bool, no_history: bool,
               pipeline: Optional[str]) -> None:
    """The chat: the app on a terminal, else a plain line-by-line chat."""
    models = list(model or [])
    if pipeline is not None and models:
        _fail("--pipeline chooses the models (one lane per stage): it takes no --model", 2)
    if plain or not (sys.stdin.isatty() and sys.stdout.isatty()):
        if pipeline is not None:
            _fail("a pipeline's stages need the full-screen app (a terminal, without --plain); "
                  "or use 'streamchat ask --pipeline NAME'", 2)
        if len(models) > 1:
            _fail("side-by-side models need the full-screen app (a terminal, without --plain)", 2)
        from .chat import run_chat

        code = _run(lambda: run_chat(settings=_settings(), model=models[0] if models else None, system=system,
                                     history=not no_history))
        raise typer.Exit(code or 0)
    raise typer.Exit(_run_app(models, system, history=not no_history, pipeline=pipeline))


def _run_app(models: list[str], system: str | None, *, history: bool = True, pipeline: str | None = None) -> int:
    """The full-screen app. Bad settings or model ids fail with one line before any window opens;
    a history that cannot be opened is said in the app, which then keeps none."""

    async def prepare():
        from ..config import resolve_model
        from ..core.errors import StreamchatError
        from ..tui.app import make_app

        settings = _settings()
        reason = "given with --model" if models else None
        chosen = models
        pipe = None
        if pipeline is not None:  # a bad name or stage is one line, before any window opens
            from ..orchestrate.pipeline import load_pipeline

            pipe = await load_pipeline(pipeline, settings)
            chosen, reason = [stage.model for stage in pipe.stages], None
        if not chosen:
            picked, reason = await resolve_model(None, settings)
            chosen = [picked]
        store, problem = None, None
        if history:
            from ..history import HistoryStore

            try:
                store = HistoryStore()
            except StreamchatError as exc:
                problem = str(exc)
        return make_app(settings, chosen, system, reason=reason, store=store, history_problem=problem,
                        pipeline=pipe)

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
    no_history: bool = typer.Option(False, "--no-history", help="Do not record this question and answer in the history."),
    continue_: bool = typer.Option(False, "--continue", "-c", help="Continue the last conversation: its earlier turns are sent as context."),
    conversation: Optional[int] = typer.Option(None, "--conversation", metavar="ID", help="Continue conversation ID (see 'streamchat history list')."),
    resume: bool = typer.Option(False, "--resume", help="Instead of a new question: continue the conversation's cut-off, failed or cancelled last answer where it stopped."),
    pipeline: Optional[str] = typer.Option(None, "--pipeline", "-p", metavar="NAME", help="Answer in progressive stages (a fast draft, then a refinement): a [pipelines.NAME] of the config, or 'default'."),
    route: bool = typer.Option(False, "--route", help="Let the router pick the model for this question (see 'streamchat route stats')."),
) -> None:
    """Ask one question and stream the answer to stdout."""
    from .ask import read_prompt, run_ask

    text: str | None = None
    if pipeline is not None and route:
        _fail("--pipeline and --route each choose the models: give one of them", 2)
    if (pipeline is not None or route) and (model is not None or resume):
        _fail(f"{'--pipeline' if pipeline is not None else '--route'} chooses the models: it takes no --model or --resume", 2)
    if resume:
        if prompt is not None:
            _fail("--resume continues the last answer and takes no prompt", 2)
    else:
        text = read_prompt(prompt)
        if text is None:
            _fail("no prompt: give it as an argument, or pipe it in (echo hi | streamchat ask)", 2)
        if not text.strip():
            _fail("the prompt is empty", 2)
    code = _run(lambda: run_ask(
        text, settings=_settings(), model=model, system=system, timeout=timeout, json_mode=json,
        confidence=confidence, max_tokens=max_tokens, temperature=temperature,
        out=sys.stdout, err=sys.stderr, history=not no_history, continue_last=continue_,
        conversation=conversation, resume=resume, pipeline=pipeline, route=route,
    ))
    raise typer.Exit(code)


@app.command()
def models(
    json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List the providers, whether each is ready here, and their models."""
    from .models import run_models

    raise typer.Exit(_run(lambda: run_models(settings=_settings(), json_mode=json, out=sys.stdout)))


@app.command()
def resume(
    conversation: Optional[int] = typer.Option(None, "--conversation", metavar="ID", help="The conversation whose last answer to continue (default: the last conversation)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", metavar="PROVIDER:MODEL", help="Continue with another model (default: the one that wrote the answer)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", "-t", min=0.1, metavar="SECONDS", help="Seconds the rest of the answer may take."),
    json: bool = typer.Option(False, "--json", help="Write the stream events as NDJSON instead of text."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", min=1, metavar="N", help="Most tokens in the answer."),
) -> None:
    """Continue the last cut-off, failed or cancelled answer where it stopped (ask --continue --resume)."""
    from .ask import run_ask

    code = _run(lambda: run_ask(
        None, settings=_settings(), model=model, system=None, timeout=timeout, json_mode=json,
        confidence=False, max_tokens=max_tokens, temperature=None, out=sys.stdout, err=sys.stderr,
        continue_last=True, conversation=conversation, resume=True,
    ))
    raise typer.Exit(code)


history_app = typer.Typer(
    name="history",
    help="The stored conversations: list, show, export, import, delete, search.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(history_app, name="history")
_ID_HELP = "A conversation id (see 'streamchat history list'), or 'last'."


@history_app.command("list")
def history_list(
    limit: int = typer.Option(30, "--limit", "-n", min=1, metavar="N", help="Show the N most recent conversations."),
    json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """The most recently active conversations, with the state of each one's last answer."""
    from .history import run_list

    raise typer.Exit(_run(lambda: run_list(limit=limit, json_mode=json, out=sys.stdout)))


@history_app.command("show")
def history_show(ident: str = typer.Argument(..., metavar="ID", help=_ID_HELP)) -> None:
    """A conversation as Markdown; answers that did not end normally are marked."""
    from .history import run_show

    raise typer.Exit(_run(lambda: run_show(ident, out=sys.stdout)))


@history_app.command("export")
def history_export(
    ident: str = typer.Argument(..., metavar="ID", help=_ID_HELP),
    format: str = typer.Option("md", "--format", "-f", metavar="md|json", help="Markdown, or JSON that 'history import' reads back."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="FILE", help="Write to FILE instead of stdout."),
) -> None:
    """Write a conversation out as Markdown or JSON."""
    from .history import run_export

    raise typer.Exit(_run(lambda: run_export(ident, fmt=format, output=output, out=sys.stdout)))


@history_app.command("import")
def history_import(source: str = typer.Argument(..., metavar="FILE", help="A JSON export ('-' reads stdin).")) -> None:
    """Add a conversation from a JSON export (as a new conversation)."""
    from .history import run_import

    raise typer.Exit(_run(lambda: run_import(source, out=sys.stdout)))


@history_app.command("delete")
def history_delete(
    ident: str = typer.Argument(..., metavar="ID", help=_ID_HELP),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation on a terminal."),
) -> None:
    """Delete a conversation and its messages (the per-stream figures for 'stats' stay, without text)."""
    from .history import run_delete

    raise typer.Exit(_run(lambda: run_delete(ident, yes=yes, out=sys.stdout)))


@history_app.command("search")
def history_search(
    text: str = typer.Argument(..., metavar="TEXT", help="Text to find (ASCII letters match in any case)."),
    limit: int = typer.Option(20, "--limit", "-n", min=1, metavar="N", help="At most N messages."),
    json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Messages that contain TEXT, newest first."""
    from .history import run_search

    raise typer.Exit(_run(lambda: run_search(text, limit=limit, json_mode=json, out=sys.stdout)))


@app.command()
def stats(
    model: Optional[str] = typer.Option(None, "--model", "-m", metavar="PROVIDER:MODEL", help="Only this model."),
    bins: int = typer.Option(8, "--bins", min=1, max=40, metavar="N", help="Histogram bins."),
    json: bool = typer.Option(False, "--json", help="Machine-readable output (with the histogram bins)."),
) -> None:
    """Time to first token and tokens/s per model (median, p95, histogram) and error rates, from the history."""
    from .stats import run_stats

    raise typer.Exit(_run(lambda: run_stats(model=model, json_mode=json, bins=bins, out=sys.stdout)))


@app.command()
def compare(
    prompt: Optional[str] = typer.Argument(None, metavar="PROMPT", help="The question; '-' or nothing reads it from stdin.", show_default=False),
    model: List[str] = typer.Option(..., "--model", "-m", metavar="PROVIDER:MODEL", help="A lane; give two or more (the first is the preferred one unless --prefer says otherwise)."),
    merge: str = typer.Option("side-by-side", "--merge", metavar="STRATEGY", help="side-by-side (every lane), first-token-wins (show the first lane to answer) or fastest-then-best (show the fastest, then the preferred lane's answer when it completes)."),
    prefer: Optional[str] = typer.Option(None, "--prefer", metavar="PROVIDER:MODEL", help="The lane whose answer counts as best (default: the first --model)."),
    system: Optional[str] = typer.Option(None, "--system", "-s", metavar="TEXT", help="System prompt."),
    timeout: Optional[float] = typer.Option(None, "--timeout", "-t", min=0.1, metavar="SECONDS", help="Seconds each lane's answer may take."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", min=1, metavar="N", help="Most tokens in each answer."),
    json: bool = typer.Option(False, "--json", help="Write every lane's events as NDJSON (each tagged with its lane), then the comparison."),
    no_history: bool = typer.Option(False, "--no-history", help="Do not record the question and the answers in the history."),
) -> None:
    """Stream one question to several models at once and compare them (time to first token, tokens/s, agreement)."""
    from .ask import read_prompt
    from .compare import run_compare

    text = read_prompt(prompt)
    if text is None:
        _fail("no prompt: give it as an argument, or pipe it in (echo hi | streamchat compare -m A -m B)", 2)
    if not text.strip():
        _fail("the prompt is empty", 2)
    raise typer.Exit(_run(lambda: run_compare(
        text, settings=_settings(), models=list(model), merge=merge, prefer=prefer, system=system,
        timeout=timeout, max_tokens=max_tokens, json_mode=json, history=not no_history,
        out=sys.stdout, err=sys.stderr,
    )))


route_app = typer.Typer(
    name="route",
    help="The router's cache of which model answers which kind of question: stats, clear.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(route_app, name="route")


@route_app.command("stats")
def route_stats(json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """The routing cache: its size and limits, hits and misses, and the routes per model."""
    from .route import run_route_stats

    raise typer.Exit(_run(lambda: run_route_stats(settings=_settings(), json_mode=json, out=sys.stdout)))


@route_app.command("clear")
def route_clear() -> None:
    """Forget every cached route."""
    from .route import run_route_clear

    raise typer.Exit(_run(lambda: run_route_clear(settings=_settings(), out=sys.stdout)))


@app.command()
def bench(
    prompt: Optional[str] = typer.Argument(None, metavar="PROMPT", help="The question; '-' or nothing reads it from stdin.", show_default=False),
    model: Optional[List[str]] = typer.Option(None, "--model", "-m", metavar="PROVIDER:MODEL", help="A model to measure; repeat it for an A/B comparison."),
    pipeline: Optional[List[str]] = typer.Option(None, "--pipeline", "-p", metavar="NAME", help="A pipeline to measure as one contestant; repeatable."),
    route: bool = typer.Option(False, "--route", help="Measure the router as one contestant."),
    runs: int = typer.Option(5, "--runs", "-n", min=1, max=1000, metavar="N", help="Runs per contestant."),
    system: Optional[str] = typer.Option(None, "--system", "-s", metavar="TEXT", help="System prompt."),
    timeout: Optional[float] = typer.Option(None, "--timeout", "-t", min=0.1, metavar="SECONDS", help="Seconds each run may take."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", min=1, metavar="N", help="Most tokens in each answer."),
    json: bool = typer.Option(False, "--json", help="Machine-readable results (every run, and the summary)."),
    warmup: bool = typer.Option(True, "--warmup/--no-warmup", help="First one untimed (cold) run per contestant, shown apart; --no-warmup saves that request."),
) -> None:
    """Run the same prompt N times against several models or strategies and compare time to first token, tokens/s and errors."""
    from .ask import read_prompt
    from .bench import run_bench

    text = read_prompt(prompt)
    if text is None:
        _fail("no prompt: give it as an argument, or pipe it in (echo hi | streamchat bench -m A -m B)", 2)
    if not text.strip():
        _fail("the prompt is empty", 2)
    if not (model or pipeline or route):
        _fail("nothing to measure: give --model (repeatable), --pipeline NAME or --route", 2)
    raise typer.Exit(_run(lambda: run_bench(
        text, settings=_settings(), models=list(model or []), pipelines=list(pipeline or []), route=route,
        runs=runs, system=system, timeout=timeout, max_tokens=max_tokens, json_mode=json,
        out=sys.stdout, err=sys.stderr, warmup=warmup,
    )))


def _plain_start(argv: list[str]) -> dict[str, Any] | None:
    """``argv`` as ``_root``'s keyword arguments when it opens the chat with the root's own options
    only (``streamchat``, ``streamchat -m A -m B --no-history`` …); None for anything else (a
    command, ``--help``, an unknown or odd option), which typer parses.

    Why: typer builds a pydantic validator for every option it parses — pydantic's import and
    those take ~0.15 s of each start-up, for options that need none. The options are read from
    ``_root``'s own declarations, so the two cannot disagree."""
    import inspect

    names: dict[str, tuple[str, str]] = {}  # "--model" → ("model", "list" | "flag" | "value")
    result: dict[str, Any] = {}
    for name, param in inspect.signature(_root).parameters.items():
        option = param.default
        if not isinstance(option, typer.models.OptionInfo):
            continue
        kind = ("flag" if isinstance(option.default, bool) else
                "list" if "List[" in str(param.annotation) else "value")
        for decl in option.param_decls:
            names[decl] = (name, kind)
        result[name] = [] if kind == "list" else option.default
    args = iter(argv)
    for arg in args:
        flag, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if flag not in names:
            return None
        name, kind = names[flag]
        if kind == "flag":
            if eq:
                return None
            result[name] = True
            continue
        if not eq:
            value = next(args, None)
            if value is None or value.startswith("-"):
                return None  # (typer words the error)
        if kind == "list":
            result[name].append(value)
        else:
            result[name] = value
    return result


def main() -> None:
    """Entry point: like ``app()``, but a usage error is one line too (``error: …``, exit 2)."""
    try:
        fast = _plain_start(sys.argv[1:])
        if fast is not None:
            try:
                _options(fast.pop("debug"), fast.pop("version"))
                _open_chat(**fast)
                code = 0
            except typer.Exit as exc:
                code = exc.exit_code
        else:
            code = app(standalone_mode=False)
    except typer.Abort:
        sys.stderr.write("cancelled\n")
        code = 130
    except typer.TyperException as exc:  # click's usage errors (bad option, missing value …)
        # ``streamchat history`` alone: click 8.2+ raises the group's help as a usage error; shown as
        # click shows it (matched by name: typer 0.29 carries its own click, typer._click)
        if type(exc).__name__ == "NoArgsIsHelpError":
            sys.stderr.write(exc.format_message().rstrip("\n") + "\n")
        else:
            format_message = getattr(exc, "format_message", None)
            message = format_message() if format_message else str(exc)
            ctx = getattr(exc, "ctx", None)
            where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            sys.stderr.write(f"error: {message}{where}\n")
        code = getattr(exc, "exit_code", 2)
    sys.exit(code if isinstance(code, int) else 0)
