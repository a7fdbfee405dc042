"""Imports made in worker threads, one at a time.

streamchat imports heavy modules off the event loop (an SDK: seconds, cold; the answer widgets;
llama.cpp), often several at once: lanes that start together, warm-ups. Two threads importing
modules that share dependencies (httpx, ssl, typing_extensions…) can each hold one module's import
lock while waiting for the other's; CPython then breaks the cycle by handing one of them a module
that is still half initialised (``AttributeError: partially initialized module 'httpx' …``). So
every import made in a worker thread holds :data:`IMPORT_LOCK`; they cost the GIL anyway, so doing
them one after another costs no time.
"""

from __future__ import annotations

import importlib
import threading
from types import ModuleType

__all__ = ["IMPORT_LOCK", "import_module"]

#: held by a worker thread while it imports (re-entrant: an import may trigger another)
IMPORT_LOCK = threading.RLock()


def import_module(name: str) -> ModuleType:
    """``importlib.import_module`` under :data:`IMPORT_LOCK` (for worker threads)."""
    with IMPORT_LOCK:
        return importlib.import_module(name)
