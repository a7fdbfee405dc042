"""``streamchat stats``: how each model has streamed, from the history.

Per ``provider:model``: time to first token and tokens/s over the stored streams (median and p95,
with a histogram drawn in the terminal), how the streams ended, and error rates by kind of error.
``--json`` gives the same figures (and the histogram bins) for scripts.
"""

from __future__ import annotations

import json
from typing import IO, TYPE_CHECKING, Any

from ..history.stats import bars, format_rate as _rate, format_seconds as _seconds

if TYPE_CHECKING:
    from ..history import ModelStats
    from ..history.stats import Distribution

__all__ = ["run_stats"]

def _dist(d: "Distribution | None") -> dict[str, Any] | None:
    if d is None:
        return None
    return {"count": d.count, "median": d.median, "p95": d.p95, "min": d.low, "max": d.high}


def _as_json(s: "ModelStats", bins: int) -> dict[str, Any]:
    from ..history.stats import histogram

    return {
        "model": s.model_id,
        "streams": s.streams,
        "ended": {"complete": s.completed, "failed": s.failed, "cancelled": s.cancelled, "cut_off": s.cut_off,
                  "streaming": s.streaming},
        "retries": s.retries,
        "tokens": s.tokens,
        "ttft_s": _dist(s.ttft),
        "tokens_per_s": _dist(s.tokens_per_s),
        "error_rate": s.error_rate(),
        "errors": {kind: {"count": n, "rate": s.error_rate(kind)} for kind, n in s.errors.items()},
        "histograms": {
            "ttft_s": [[b.low, b.high, b.count] for b in histogram(s.ttft_values, bins)],
            "tokens_per_s": [[b.low, b.high, b.count] for b in histogram(s.tokens_per_s_values, bins)],
        },
    }


async def run_stats(*, model: str | None, json_mode: bool, bins: int, out: IO[str]) -> int:
    from ..history import HistoryStore

    with HistoryStore() as store:
        stats = store.model_stats(model)
        path = store.path
    if json_mode:
        out.write(json.dumps([_as_json(s, bins) for s in stats], indent=2) + "\n")
        return 0
    if not stats:
        where = f" for {model}" if model else ""
        out.write(f"no streams in the history{where} yet ({path})\n")
        return 0
    _print(stats, bins, out)
    return 0


def _print(stats: "list[ModelStats]", bins: int, out: IO[str]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from ..history.stats import histogram

    console = Console(file=out, highlight=False, soft_wrap=False)
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("model", "streams", "TTFT median", "TTFT p95", "tok/s median", "tok/s p95", "failed"):
        table.add_column(name, justify="left" if name == "model" else "right")
    for s in stats:
        table.add_row(
            s.model_id, str(s.streams),
            _seconds(s.ttft.median) if s.ttft else "-", _seconds(s.ttft.p95) if s.ttft else "-",
            _rate(s.tokens_per_s.median) if s.tokens_per_s else "-",
            _rate(s.tokens_per_s.p95) if s.tokens_per_s else "-",
            f"{s.error_rate():.0%}" if s.ended else "-",
        )
    console.print(table)

    for s in stats:
        ended = s.endings()
        retries = f" · {s.retries} retries" if s.retries else ""
        console.print()
        console.print(Text(f"{s.model_id}", style="bold") + Text(f" — {s.streams} streams: {ended}{retries}"))
        for title, values, fmt in (("time to first token", s.ttft_values, _seconds),
                                   ("tokens/s", s.tokens_per_s_values, _rate)):
            lines = bars(histogram(values, min(bins, len(values))), fmt)  # no more bins than values
            if lines:
                console.print(f" {title}")
                for line in lines:
                    console.print(Text(line))
        if s.errors:
            console.print(" errors: " + ", ".join(
                f"{kind} {n} ({s.error_rate(kind):.0%})" for kind, n in s.errors.items()))
