"""``streamchat models``: providers, whether each is usable here, and models."""

from __future__ import annotations

import asyncio
import json
from typing import IO

from ..config import Settings, resolve_model
from ..providers import provider_class, provider_names
from ..providers.base import ProviderStatus


async def gather_status(timeout: float = 0.5) -> list[ProviderStatus]:
    """Every provider's status, checked in parallel, each bounded by ``timeout``."""

    async def one(name: str) -> ProviderStatus:
        try:
            cls = provider_class(name)
            # the check bounds its own network wait; the outer bound only catches a hung plugin
            return await asyncio.wait_for(cls.status(timeout=timeout), timeout + 5.0)
        except asyncio.TimeoutError:
            return ProviderStatus(name, False, "status check timed out")
        except Exception as exc:  # a broken plugin must not break the list
            return ProviderStatus(name, False, f"unavailable: {exc or type(exc).__name__}")

    return list(await asyncio.gather(*(one(name) for name in provider_names())))


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
