"""``streamchat models``: providers, whether each is usable here, and models."""

from __future__ import annotations

import asyncio
import json
from typing import IO

from ..config import Settings, resolve_model
from ..providers import gather_status


async def run_models(*, settings: Settings, json_mode: bool, out: IO[str]) -> int:
    statuses, (default, reason) = await asyncio.gather(gather_status(), resolve_model(None, settings))
    if json_mode:
        payload = {
            "default": {"model": default, "reason": reason},
            "providers": [
                {"name": s.name, "ready": s.configured, "detail": s.detail, "endpoint": s.endpoint, "models": s.models}
                for s in statuses
            ],
        }
        out.write(json.dumps(payload, indent=2) + "\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=None, box=None, pad_edge=False, header_style="bold")
    table.add_column("provider")
    table.add_column("ready")
    table.add_column("detail")
    table.add_column("models (use as PROVIDER:MODEL)")
    for s in statuses:
        table.add_row(s.name, "[green]yes[/]" if s.configured else "[red]no[/]", s.detail,
                      ", ".join(s.models) or "-")
    console = Console(file=out)
    console.print(table)
    console.print(f"\ndefault: [bold]{default}[/] ({reason})", highlight=False)
    return 0
