"""The routing cache: which model answered a question well, remembered for the next time.

An LRU map with a time to live, keyed by *message hash + complexity + category* (the hash of the
question with its case and spacing normalised; the complexity and category that
:func:`~streamchat.orchestrate.router.analyse` gave it — so a changed heuristic does not reuse an
old route). The value is the model that gave an answer the router accepted: after a validation
retry that is the better model, so the same question goes straight there next time.

* **LRU**: at most ``size`` entries (default 100); a hit makes an entry the most recent, a new
  entry beyond the limit pushes out the least recently used one.
* **TTL**: an entry is forgotten ``ttl`` seconds (default 3600) after it was stored; an expired
  entry counts as a miss. The clock is injected (``clock=``, default :func:`time.time`) so tests
  can move time.
* **Stats**: size, limits, hits, misses, and per model the routes held and the hits served.
* **Persistence**: ``<data dir>/route-cache.json`` (see :func:`default_path`), so ``streamchat route
  stats`` after a few ``ask --route`` means something. It is written atomically (a temp file in the
  same folder, then ``os.replace``) after every change, and re-read when another process changed
  it (its mtime/size moved), so two streamchats at once lose at most a counter, never the file.
  ``path=None`` keeps the cache in memory only (tests, ``bench``).

A file that cannot be read or written (damaged JSON, not a cache, a folder without write
permission) never stops an answer: the cache turns itself off for this process and says why once
(:meth:`RouteCache.take_problem`, which the router publishes as a progress message).
:meth:`RouteCache.clear` starts a damaged file afresh; :meth:`RouteCache.check` raises the problem
as a :class:`RouteCacheError` for commands that are about the cache itself (``route stats``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from ..core.errors import StreamchatError

__all__ = ["RouteCache", "CacheEntry", "RouteCacheError", "cache_key", "default_path", "FILE_NAME"]

FILE_NAME = "route-cache.json"
_VERSION = 1


class RouteCacheError(StreamchatError):
    """The routing cache file cannot be used (one line; the cache is only an optimisation)."""

    kind = "route_cache"
    exit_code = 1


def default_path() -> Path:
    """``<data dir>/route-cache.json`` (``STREAMCHAT_HOME`` moves it)."""
    from ..config import data_dir

    return data_dir() / FILE_NAME


def cache_key(text: str, complexity: int, category: str) -> str:
    """``sha256(normalised text):complexity:category`` — case and runs of spaces do not matter."""
    normal = " ".join(text.split()).casefold()
    digest = hashlib.sha256(normal.encode("utf-8")).hexdigest()
    return f"{digest}:{complexity}:{category}"


@dataclass(frozen=True, slots=True)
class CacheEntry:
    key: str
    model: str
    complexity: int
    category: str
    #: when it was stored (clock seconds): it expires ``ttl`` after this
    stored: float
    hits: int = 0


class RouteCache:
    """LRU + TTL map of routes, optionally kept in a JSON file. See the module docstring."""

    def __init__(self, path: Path | str | None = None, size: int = 100, ttl: float = 3600,
                 clock: Callable[[], float] = time.time) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self.path = Path(path) if path is not None else None
        self.size = size
        self.ttl = float(ttl)
        self.clock = clock
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()  # least recently used first
        self.hits = 0
        self.misses = 0
        self.hits_by_model: dict[str, int] = {}
        #: why the file is not used (None: it is, or there is none); the cache is then memory-only
        self.problem: str | None = None
        self._told = False
        self._seen: tuple[int, int] | None = None  # (mtime_ns, size) of the file as last read/written
        self._load()

    # ------------------------------------------------------------------ public
    def get(self, key: str) -> CacheEntry | None:
        """The live entry for ``key`` (now the most recent), or None; counts a hit or a miss."""
        self._refresh()
        entry = self._entries.get(key)
        now = self.clock()
        if entry is not None and now - entry.stored > self.ttl:
            del self._entries[key]
            entry = None
        if entry is None:
            self.misses += 1
        else:
            entry = CacheEntry(entry.key, entry.model, entry.complexity, entry.category, entry.stored,
                               entry.hits + 1)
            self._entries[key] = entry
            self._entries.move_to_end(key)
            self.hits += 1
            self.hits_by_model[entry.model] = self.hits_by_model.get(entry.model, 0) + 1
        self._save()
        return entry

    def put(self, key: str, model: str, *, complexity: int, category: str) -> CacheEntry:
        """Remember that ``model`` answers ``key`` (the most recent entry now); the least recently
        used entries go beyond ``size``. Storing the route already stored keeps its age: the TTL
        bounds how old a decision may be, however often it is used."""
        self._refresh()
        old = self._entries.pop(key, None)
        if old is not None and old.model == model:  # the same route again: it still expires on time
            entry = old
        else:
            entry = CacheEntry(key, model, complexity, category, self.clock())
        self._entries[key] = entry
        self._evict()
        self._save()
        return entry

    def forget(self, key: str) -> bool:
        """Drop one entry (e.g. its model is no longer configured). True if there was one."""
        self._refresh()
        if self._entries.pop(key, None) is None:
            return False
        self._save()
        return True

    def clear(self) -> int:
        """Forget every route and reset the counters; returns how many routes were forgotten.
        A damaged file is replaced by an empty cache (and the cache is usable again)."""
        if self.problem is None:
            self._refresh()
        forgotten = len(self._live())
        self._entries.clear()
        self.hits = self.misses = 0
        self.hits_by_model = {}
        self.problem, self._told = None, False
        self._save()
        self.check()  # the file could not be written: say so
        return forgotten

    def stats(self) -> dict[str, Any]:
        """Size, limits, hits, misses and, per model, the routes held and the hits served."""
        self._refresh()
        live = self._live()
        by_model: dict[str, dict[str, int]] = {}
        for entry in live:
            by_model.setdefault(entry.model, {"routes": 0, "hits": 0})["routes"] += 1
        for model, hits in self.hits_by_model.items():
            by_model.setdefault(model, {"routes": 0, "hits": 0})["hits"] = hits
        lookups = self.hits + self.misses
        return {
            "path": str(self.path) if self.path is not None else None,
            "size": len(live),
            "max_size": self.size,
            "ttl": self.ttl,
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hits / lookups if lookups else None,
            "models": dict(sorted(by_model.items(), key=lambda kv: (-kv[1]["hits"], -kv[1]["routes"], kv[0]))),
            "problem": self.problem,
        }

    def entries(self) -> list[CacheEntry]:
        """The live entries, least recently used first."""
        self._refresh()
        return self._live()

    def take_problem(self) -> str | None:
        """The file's problem the first time it is asked for (so it is said once), then None."""
        if self.problem is None or self._told:
            return None
        self._told = True
        return self.problem

    def check(self) -> None:
        """Raise the file's problem as a :class:`RouteCacheError`, if there is one."""
        if self.problem is not None:
            raise RouteCacheError(self.problem)

    def __len__(self) -> int:
        return len(self._live())

    # ------------------------------------------------------------------ internals
    def _live(self) -> list[CacheEntry]:
        now = self.clock()
        return [e for e in self._entries.values() if now - e.stored <= self.ttl]

    def _evict(self) -> None:
        now = self.clock()
        for key in [k for k, e in self._entries.items() if now - e.stored > self.ttl]:
            del self._entries[key]
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def _disable(self, why: str) -> None:
        self.problem = f"the routing cache {self.path} {why}: routing without it ('streamchat route clear' starts it afresh)"

    def _stamp(self) -> tuple[int, int] | None:
        assert self.path is not None
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _refresh(self) -> None:
        """Re-read the file if another process changed it since we last read or wrote it."""
        if self.path is not None and self.problem is None and self._stamp() != self._seen:
            self._load()

    def _load(self) -> None:
        if self.path is None:
            return
        stamp = self._stamp()
        if stamp is None:  # no file yet: an empty cache
            self._seen = None
            return
        try:
            raw = self.path.read_text(encoding="utf-8")
            data = json.loads(raw)
            entries, hits, misses, by_model = _parse(data)
        except OSError as exc:
            self._disable(f"cannot be read ({exc.strerror or exc})")
            return
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self._disable(f"is damaged (not JSON: {str(exc).splitlines()[0]})")
            return
        except (ValueError, TypeError, KeyError) as exc:
            self._disable(f"is damaged ({exc})")
            return
        self._entries = OrderedDict((e.key, e) for e in entries)
        self.hits, self.misses, self.hits_by_model = hits, misses, by_model
        self._seen = stamp
        self._evict()  # the limits may have shrunk since it was written

    def _save(self) -> None:
        if self.path is None or self.problem is not None:
            return
        data = {
            "version": _VERSION,
            "hits": self.hits,
            "misses": self.misses,
            "hits_by_model": self.hits_by_model,
            "entries": [asdict(e) for e in self._entries.values()],
        }
        tmp: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".route-cache-", suffix=".tmp", dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, ensure_ascii=False, separators=(",", ":"))
            os.replace(tmp, self.path)
            tmp = None
            self._seen = self._stamp()
        except OSError as exc:
            self._disable(f"cannot be written ({exc.strerror or exc})")
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass


def _parse(data: Any) -> tuple[list[CacheEntry], int, int, dict[str, int]]:
    """The contents of a cache file; ValueError/TypeError/KeyError say what is wrong."""
    if not isinstance(data, dict) or "entries" not in data:
        raise ValueError("not a routing cache")
    if data.get("version") != _VERSION:
        raise ValueError(f"unknown version {data.get('version')!r}")
    entries = []
    for raw in data["entries"]:
        if not isinstance(raw, dict):
            raise ValueError("an entry is not an object")
        entry = CacheEntry(str(raw["key"]), str(raw["model"]), int(raw["complexity"]), str(raw["category"]),
                           float(raw["stored"]), int(raw.get("hits", 0)))
        entries.append(entry)
    by_model = data.get("hits_by_model", {})
    if not isinstance(by_model, dict):
        raise ValueError("hits_by_model is not an object")
    return entries, int(data.get("hits", 0)), int(data.get("misses", 0)), {str(k): int(v) for k, v in by_model.items()}
