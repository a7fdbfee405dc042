"""``streamchat bench``: one prompt, N runs against each of several models or strategies (A/B).

The measuring is :mod:`streamchat.orchestrate.bench` (round-robin, one run at a time, a cold
warm-up run per contestant kept apart — see there why); this module only shows it:

* on a terminal, a Rich progress bar on stderr while it runs (one line per contestant: runs done,
  failures, the live token count of the run in progress), then a table on stdout;
* piped, no progress bar and a plain table (no colours, no box, never wrapped);
* ``--json``: every run and every contestant's summary as one JSON document.

Columns: contestant, timed runs, completed, errors (and error rate), TTFT median and p95, tokens/s
median, duration median, and the cold run's TTFT. The medians are over the completed runs; under
the table, each contestant's errors by kind.

Exit code: 0 when every contestant completed at least one timed run (some errors are figures, in
the table). When every run of a contestant failed, a line on stderr says so and the exit code is
that failure's (the first such contestant's most frequent error: 3 auth, 4 rate limited, 5 timeout,
6 connection …), so a script can tell "one side is broken" and how. Ctrl+C stops the run in
progress, prints the table of what ran and exits 130. A bad model id, an unknown pipeline or a
missing API key stop it with one line before anything is sent.

Benchmark runs are not recorded in the history: hundreds of identical answers would swamp it and
``streamchat stats``.
"""

from __future__ import annotations

import asyncio
import json
import signal
from dataclasses import replace
from typing import IO, TYPE_CHECKING, Any

from ..config import Settings
from ..core.errors import ConfigError
from ..core.request import ChatRequest
from ..history.stats import format_rate, format_seconds
from ..orchestrate.bench import (Bench, Contestant, RunMeter, RunRecord, Summary, exit_code, model_contestant,
                                 pipeline_contestant, route_contestant)

if TYPE_CHECKING:
    from ..history.stats import Distribution
    from ..providers.base import Timeouts

__all__ = ["run_bench", "build_contestants"]

EXIT_CANCELLED = 130
EXIT_BROKEN_PIPE = 141


def _distinct(names: list[str]) -> list[str]:
    """The same contestant twice (an A/A run, to see the noise) gets ``#2``, ``#3`` …"""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
    return out


async def build_contestants(*, settings: Settings, request: ChatRequest, timeouts: "Timeouts",
                            models: list[str], pipelines: list[str], route: bool) -> list[Contestant]:
    """Every contestant, checked: a bad model id or pipeline raises (ConfigError) before anything runs."""
    wanted: list[tuple[str, str]] = [("model", m.strip()) for m in models]
    wanted += [("pipeline", p) for p in pipelines]
    if route:
        wanted.append(("route", ""))
    names = _distinct([m if kind == "model" else (f"pipeline:{m}" if kind == "pipeline" else "route")
                       for kind, m in wanted])
    contestants = []
    for (kind, what), name in zip(wanted, names, strict=True):
        if kind == "model":
            contestants.append(model_contestant(what, request, timeouts=timeouts, name=name))
        elif kind == "pipeline":
            from ..orchestrate.pipeline import load_pipeline

            pipeline = await load_pipeline(what, settings)
            contestants.append(pipeline_contestant(pipeline, request, timeouts=timeouts, name=name))
        else:
            from ..orchestrate.router import router_config

            config = await router_config(settings)
            contestants.append(route_contestant(config, request, timeouts=timeouts, name=name))
    return contestants


async def run_bench(
    prompt: str,
    *,
    settings: Settings,
    models: list[str],
    pipelines: list[str],
    route: bool,
    runs: int,
    system: str | None,
    timeout: float | None,
    max_tokens: int | None,
    json_mode: bool,
    out: IO[str],
    err: IO[str],
    warmup: bool = True,
) -> int:
    """Measure, then report. Returns the exit code (see the module docstring)."""
    if not (models or pipelines or route):
        raise ConfigError("nothing to measure: give --model (repeatable), --pipeline NAME or --route")
    if runs < 1:
        raise ConfigError("--runs must be at least 1")
    timeouts = settings.timeouts
    if timeout is not None:
        timeouts = replace(timeouts, total=timeout, connect=min(timeouts.connect or timeout, timeout))
    request = ChatRequest.from_prompt(
        prompt, system=system if system is not None else settings.system,
        max_tokens=max_tokens or settings.max_tokens)
    contestants = await build_contestants(settings=settings, request=request, timeouts=timeouts, models=models,
                                          pipelines=pipelines, route=route)

    display = _Progress(contestants, runs, warmup, err) if _isatty(err) else None
    bench = Bench(contestants, runs, warmup=warmup,
                  on_run_start=display.started if display else None,
                  on_run_end=display.ended if display else None)
    loop = asyncio.get_running_loop()

    def interrupt() -> None:
        bench.stop()
        _remove_sigint(loop)  # a second Ctrl+C is Python's own: stop even a run that will not end

    try:
        loop.add_signal_handler(signal.SIGINT, interrupt)
    except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
        pass
    try:
        if display is not None:
            display.start()
        summaries = await bench.run()
    finally:
        _remove_sigint(loop)
        if display is not None:
            display.stop()
        await bench.aclose()

    try:
        if json_mode:
            out.write(json.dumps(_as_json(bench, summaries, prompt), indent=2, ensure_ascii=False) + "\n")
        else:
            _print_table(summaries, out, runs=runs, warmup=warmup)
        out.flush()
    except BrokenPipeError:
        from .ask import _quiet_stdout

        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    if bench.stopped:
        done = sum(s.runs for s in summaries)
        err.write(f"cancelled after {done} timed run{'' if done == 1 else 's'}\n")
        return EXIT_CANCELLED
    broken = [s.name for s in summaries if s.all_failed]
    if broken:  # the errors themselves are under the table (or in the JSON)
        which = broken[0] if len(broken) == 1 else ", ".join(broken[:-1]) + " and " + broken[-1]
        err.write(f"error: every run of {which} failed\n")
    return exit_code(summaries)


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _remove_sigint(loop: asyncio.AbstractEventLoop) -> None:
    try:
        loop.remove_signal_handler(signal.SIGINT)
    except (NotImplementedError, RuntimeError):
        pass


# ------------------------------------------------------------------------------------------------
# Progress (a terminal only)
# ------------------------------------------------------------------------------------------------


class _Progress:
    """One Rich progress line per contestant, on ``err``; gone when the table is printed."""

    def __init__(self, contestants: list[Contestant], runs: int, warmup: bool, err: IO[str]) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                   TimeElapsedColumn)

        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"), _live_column(), TimeElapsedColumn(),
            console=Console(file=err), transient=True)
        from rich.markup import escape

        self.tasks = {c.name: self.progress.add_task(escape(c.name), total=runs, status="cold run" if warmup else "",
                                                     meter=None) for c in contestants}
        self.counts = {c.name: [0, 0] for c in contestants}  # completed, failed

    def start(self) -> None:
        self.progress.start()

    def stop(self) -> None:
        self.progress.stop()

    def started(self, contestant: Contestant, index: int, meter: RunMeter) -> None:
        self.progress.update(self.tasks[contestant.name], meter=meter)

    def ended(self, record: RunRecord) -> None:
        task = self.tasks[record.contestant]
        counts = self.counts[record.contestant]
        if record.index > 0:
            counts[0 if record.ok else 1] += 1
        ok, failed = counts
        status = f"[green]{ok} ok[/]" + (f" · [red]{failed} failed[/]" if failed else "")
        if record.index == 0:
            status = "cold run " + ("done" if record.ok else "[red]failed[/]")
        last = f" · TTFT {format_seconds(record.ttft)}" if record.ttft is not None else ""
        self.progress.update(task, advance=1 if record.index > 0 else 0, status=status + last, meter=None)


def _live_column() -> Any:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class LiveTokens(ProgressColumn):
        """The token count of the run in progress."""

        def render(self, task: Any) -> Text:
            meter = task.fields.get("meter")
            return Text(f"{meter.tokens} tok" if meter is not None else "", style="dim")

    return LiveTokens()


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------


def _seconds(d: "Distribution | None", which: str = "median") -> str:
    return format_seconds(getattr(d, which)) if d is not None else "-"


def _print_table(summaries: list[Summary], out: IO[str], *, runs: int, warmup: bool) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    terminal = _isatty(out)
    # piped: no colour, and wide enough that no row is ever wrapped (a script reads lines)
    console = Console(file=out, highlight=False, soft_wrap=False, width=None if terminal else 400)
    table = Table(box=box.SIMPLE_HEAD if terminal else None, pad_edge=False, header_style="bold")
    headers = ["contestant", "runs", "ok", "errors", "TTFT median", "TTFT p95", "tok/s median",
               "duration median"]
    if warmup:
        headers.append("cold TTFT")
    for name in headers:
        table.add_column(name, justify="left" if name == "contestant" else "right")
    for s in summaries:
        rate = s.error_rate
        errors = f"{s.failed} ({rate:.0%})" if rate is not None else "-"
        row = [
            Text(s.name), str(s.runs), str(s.ok),
            Text(errors, style="red" if s.failed else ""),
            _seconds(s.ttft), _seconds(s.ttft, "p95"),
            format_rate(s.tokens_per_s.median) if s.tokens_per_s is not None else "-",
            _seconds(s.duration),
        ]
        if warmup:
            cold = s.cold
            if cold is None:
                row.append("-")
            elif not cold.ok:
                row.append(Text("failed", style="red"))
            else:
                row.append(format_seconds(cold.ttft) if cold.ttft is not None else "-")
        table.add_row(*row)
    console.print(table)
    notes = []
    for s in summaries:
        for kind, records in s.errors.items():
            notes.append(Text(f"{s.name}: {len(records)} of {s.runs} runs failed ({kind}): {records[0].error}"))
    for note in notes:
        console.print(note, style="red" if terminal else None)
    total = sum(s.runs for s in summaries)
    if total < runs * len(summaries):
        console.print(Text(f"(stopped early: {total} of {runs * len(summaries)} timed runs)"))


def _dist(d: "Distribution | None") -> dict[str, Any] | None:
    if d is None:
        return None
    return {"count": d.count, "median": d.median, "p95": d.p95, "min": d.low, "max": d.high}


def _as_json(bench: Bench, summaries: list[Summary], prompt: str) -> dict[str, Any]:
    return {
        "prompt": prompt,
        "runs_per_contestant": bench.runs,
        "warmup": bench.warmup,
        "order": [c.name for c in bench.contestants],
        "interrupted": bench.stopped,
        "contestants": [
            {
                "name": s.name,
                "kind": s.kind,
                "runs": s.runs,
                "ok": s.ok,
                "failed": s.failed,
                "error_rate": s.error_rate,
                "errors": {kind: {"count": len(records), "exit_code": records[0].error.exit_code
                                  if records[0].error else 1,
                                  "message": str(records[0].error)}
                           for kind, records in s.errors.items()},
                "ttft_s": _dist(s.ttft),
                "tokens_per_s": _dist(s.tokens_per_s),
                "duration_s": _dist(s.duration),
                "tokens": _dist(s.tokens),
                "retries": s.retries,
                "cold": s.cold.to_dict() if s.cold is not None else None,
            }
            for s in summaries
        ],
        "runs": [r.to_dict() for r in bench.history],
    }
