"""The router: a fast local look at the question picks the model that should answer it.

1. :func:`analyse` reads the question with a few precompiled patterns (no model, microseconds):
   its length, code (fences, tracebacks, code-like lines, "write a function…"), maths (symbols,
   LaTeX, maths words, a proof), reasoning cues ("why", "compare", "step by step"…), creative
   requests (a poem, a story), constraints ("must", "without", "edge cases") and several questions
   at once. It gives a **complexity** from 1 (``hi``) to 10 and a **category**: ``code``,
   ``math``, ``reasoning``, ``creative`` or ``chat``, with the ``cues`` it saw.
2. :class:`RouterConfig` maps that to a model: a per-category override if there is one, else the
   **tier** whose complexity band holds the complexity.
3. :class:`RoutedRun` does it live on a bus — progress events "🔍 Analysing…", "💾 cached route",
   "🎯 Routed to openai:gpt-4o-mini (complexity 6, code)", then the model's stream, then
   "✅ done in 2.1 s" — consulting the :class:`~.route_cache.RouteCache` first. With validation
   on, an answer that looks incomplete (the stream failed, it is empty, far too short for the
   complexity, a code request answered without code, a refusal) is asked again of the next better
   tier ("🔁 answer looked incomplete (empty); retrying on anthropic:claude-sonnet-4-6"); the
   accepted answer's model goes into the cache, so the same question goes straight there next time.

The ``[router]`` table of ``config.toml``::

    [router]
    # the tiers, cheapest first: name = "provider:model"
    tiers = { fast = "local:smollm2", balanced = "openai:gpt-4o-mini", best = "anthropic:claude-sonnet-4-6" }
    # optional: the complexity (1–10) from which each tier answers. Without it the tiers share
    # 1–10 evenly in the order written (three tiers: 1–3, 4–6, 7–10).
    bands = { fast = 1, balanced = 4, best = 7 }
    # optional: a category always goes to this tier (by name) or model, whatever its complexity
    categories = { code = "anthropic:claude-sonnet-4-6", creative = "balanced" }
    cache_size = 100        # routes remembered (LRU)
    cache_ttl = 3600        # seconds a route is remembered
    validate = false        # check answers; retry an incomplete one on the next better tier

Without ``tiers`` the built-in tiers ``fast``/``balanced``/``best`` come from what is set up here
(like :func:`~streamchat.config.resolve_model`): ``fast`` is Ollama's first model when Ollama
answers, else the cheapest cloud model with a key (``openai:gpt-4o-mini``, then
``anthropic:claude-haiku-4-5``); ``balanced`` is ``anthropic:claude-haiku-4-5`` or
``openai:gpt-4.1-mini``; ``best`` ``anthropic:claude-sonnet-4-6`` or ``openai:gpt-4.1``; a tier
with nothing better takes the one below it — offline, everything goes to ``local:smollm2``.

A mistake in the table is a :class:`~streamchat.core.errors.ConfigError` naming the key
(``router.tiers.best``), raised by :func:`router_config` when routing is used.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from ..core.bus import EventBus
from ..core.errors import ConfigError, StreamchatError
from ..core.events import Progress, ResponseSnapshot
from ..core.stream import Stream, new_stream_id
from .route_cache import RouteCache, RouteCacheError, cache_key, default_path

if TYPE_CHECKING:
    from ..config import Settings
    from ..core.request import ChatRequest
    from ..providers.base import Provider, Timeouts
    from . import OnStream

__all__ = [
    "Analysis",
    "analyse",
    "CATEGORIES",
    "Tier",
    "RouterConfig",
    "router_config",
    "parse_router",
    "default_tiers",
    "check_answer",
    "RoutedRun",
    "RouteCache",
    "RouteCacheError",
    "cache_key",
    "open_cache",
]

log = logging.getLogger("streamchat.router")

CATEGORIES = ("code", "math", "reasoning", "creative", "chat")
#: retries on better tiers after a first answer, at most
MAX_RETRIES = 2

# ------------------------------------------------------------------------------------------------
# Analysis
# ------------------------------------------------------------------------------------------------

# Words are looked up in sets (one pass over the lower-cased words): far faster than big
# alternations of ``re``; a few shapes that words cannot catch remain regular expressions.
_WORD = re.compile(r"[a-z0-9+#']+(?:-[a-z0-9]+)*")
_TRACEBACK = re.compile(
    r"Traceback \(most recent call last\)|^\s*File \"[^\"]+\", line \d+|^\s*at [\w.$<>]+\([\w.]+:\d+\)"
    r"|\b\w+(?:Error|Exception)\b:|panicked at|segmentation fault|core dumped", re.MULTILINE)
_TRACEBACK_HINTS = ("error", "exception", "traceback", "panicked", "segmentation", "core dumped", "line ")
_CODE_LINE = re.compile(
    r"^\s*(?:def |class |import |from \S+ import |#include|fn |func |function |const |let |var |public |"
    r"private |return\b|SELECT |if \(|for \(|while \()|[;{}]\s*$|=>|\w+\([^()\n]*\)\s*[:{]\s*$", re.MULTILINE)
_MATH_SYMBOLS = re.compile(r"\d\s*[-+*/^=<>]\s*\d|\\(?:frac|sum|int|sqrt|prod|lim)\b|[∫∑∏√π∞≤≥≠∀∃]|\$[^$\n]+\$|\b[a-z]\^\d")
_MATH_HINT = re.compile(r"[\d\\$^∫∑∏√π∞≤≥≠∀∃]")
_LIST_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+\S", re.MULTILINE)

_CODE_WORDS = frozenset(
    "code function functions method class bug bugs script regex api sql query python javascript typescript "
    "java rust golang c++ bash shell json yaml html css traceback exception segfault algorithm variable loop "
    "recursion async thread docker git compiler compile".split())
_CODE_PREFIXES = ("debug", "compil", "refactor")
_CODE_VERBS = frozenset("write implement create generate fix refactor rewrite code build".split())
_CODE_OBJECTS = frozenset(
    "code function script class program regex query snippet method implementation module cli parser "
    "decorator endpoint test tests".split())
_LANGUAGES = frozenset("python javascript typescript rust go java c++ bash sql ruby kotlin swift".split())
_MATH_WORDS = frozenset(
    "integral integrate derivative differentiate equation equations solve theorem lemma matrix matrices "
    "probability polynomial prime primes limit series logarithm calculus geometry vector modulo factorial "
    "irrational rational sqrt induction divisible integer integers inequality".split())
_MATH_PREFIXES = ("eigen", "converg", "algebra")
_MATH_PHRASES = ("infinitely many", "square root")
_PROOF_WORDS = frozenset("prove proof proving derive".split())
_PROOF_PHRASES = ("show that", "demonstrate that")
_REASONING_WORDS = frozenset(
    "why explain compare contrast analyse analyze evaluate trade-off trade-offs tradeoff tradeoffs justify "
    "implication implications design architecture strategy plan critique assess".split())
_REASONING_PREFIXES = ("reason",)
_REASONING_PHRASES = ("pros and cons", "step by step", "should i", "what if", "difference between")
_CREATIVE_WORDS = frozenset(
    "poem story stories haiku song lyrics limerick sonnet fiction novel imagine creative slogan joke "
    "screenplay rhyme rhymes tagline".split())
_LONG_CREATIVE = frozenset("story stories novel screenplay chapter essay".split())
_CONSTRAINT_WORDS = frozenset("must without exactly ensure constraint constraints thread-safe performance".split())
_CONSTRAINT_PREFIXES = ("optimi", "efficien", "scal")
_CONSTRAINT_PHRASES = ("at least", "at most", "edge case")
_BRIEF_WORDS = frozenset("briefly quick quickly tl;dr tldr simple".split())
_BRIEF_PHRASES = ("in one word", "in one sentence", "in one line", "short answer")
#: patterns look at most this much of a very long question (its length still counts in full)
_SCAN = 20_000


def _count(tokens: list[str], words: frozenset[str], prefixes: tuple[str, ...] = ()) -> int:
    if prefixes:
        return sum(1 for t in tokens if t in words or t.startswith(prefixes))
    return sum(1 for t in tokens if t in words)


def _phrases(lower: str, phrases: tuple[str, ...]) -> int:
    return sum(lower.count(p) for p in phrases)


def _asks_for_code(tokens: list[str], lower: str) -> bool:
    """A verb like "write" followed within a few words by "function", "script"…, or "in python"."""
    last_verb = -100
    for i, t in enumerate(tokens):
        if t in _CODE_VERBS:
            last_verb = i
        elif t in _CODE_OBJECTS and 0 < i - last_verb <= 8:
            return True
        elif t in _LANGUAGES and i > 0 and tokens[i - 1] == "in":
            return True
    return False


@dataclass(frozen=True, slots=True)
class Analysis:
    """What :func:`analyse` saw: ``complexity`` 1–10, a ``category`` of :data:`CATEGORIES`, ``cues``."""

    complexity: int
    category: str
    cues: tuple[str, ...] = ()

    def describe(self) -> str:
        return f"complexity {self.complexity}, {self.category}"


def _length_points(words: int) -> int:
    for points, limit in enumerate((6, 20, 60, 200, 600)):
        if words <= limit:
            return points
    return 5


def analyse(text: str) -> Analysis:
    """Complexity (1–10) and category of a question, from its length and cues. Pure and fast."""
    scan = text[:_SCAN]
    lower = scan.lower()
    tokens = _WORD.findall(lower)
    words = len(text.split())
    cues: list[str] = [f"{words} words"]
    complexity = 1 + _length_points(words)

    # code
    fence = "```" in scan or "~~~" in scan
    traceback = any(h in lower for h in _TRACEBACK_HINTS) and bool(_TRACEBACK.search(scan))
    code_lines = len(_CODE_LINE.findall(scan)) if any(c in scan for c in ";{}()=>") else 0
    code_words = _count(tokens, _CODE_WORDS, _CODE_PREFIXES)
    asks_code = _asks_for_code(tokens, lower)
    code = 3 * fence + 3 * traceback + min(code_lines, 3) + min(code_words, 2) + 2 * asks_code
    cues += [c for c, on in (("code block", fence), ("traceback", traceback), ("code lines", code_lines >= 2),
                             ("asks for code", asks_code)) if on]
    if code:
        complexity += 1 + (fence or traceback)
        if not (fence or traceback or asks_code) and code_words:
            cues.append("code words")

    # maths
    proof = bool(_count(tokens, _PROOF_WORDS) or _phrases(lower, _PROOF_PHRASES))
    math_terms = _count(tokens, _MATH_WORDS, _MATH_PREFIXES) + _phrases(lower, _MATH_PHRASES)
    if _MATH_HINT.search(scan):
        math_terms += len(_MATH_SYMBOLS.findall(scan))
    math = min(math_terms, 4) + (3 if proof and math_terms else 0)
    if math_terms:
        cues.append("maths")
        complexity += 1 + (4 if proof else 0) + (math_terms >= 2)
    if proof:
        cues.append("proof")

    # reasoning
    reasons = _count(tokens, _REASONING_WORDS, _REASONING_PREFIXES) + _phrases(lower, _REASONING_PHRASES)
    reasoning = min(reasons, 3) + (3 if proof and not math_terms else 0)
    if reasons:
        cues.append("reasoning")
        complexity += min(reasons, 2)
    if proof and not math_terms:
        complexity += 3

    # creative
    creative_hits = _count(tokens, _CREATIVE_WORDS)
    creative = 2 * min(creative_hits, 2)
    if creative_hits:
        cues.append("creative")
        complexity += any(t in _LONG_CREATIVE for t in tokens)

    constraints = _count(tokens, _CONSTRAINT_WORDS, _CONSTRAINT_PREFIXES) + _phrases(lower, _CONSTRAINT_PHRASES)
    if constraints:
        cues.append("constraints")
        complexity += min(constraints, 2)
    if scan.count("?") >= 2 or len(_LIST_ITEM.findall(scan)) >= 3:
        cues.append("several parts")
        complexity += 1
    if _count(tokens, _BRIEF_WORDS) or _phrases(lower, _BRIEF_PHRASES):
        cues.append("brief")
        complexity -= 1

    scores = {"code": code, "math": math, "reasoning": reasoning, "creative": creative}
    category = max(scores, key=lambda k: scores[k])  # ties: code, math, reasoning, creative
    if scores[category] == 0:
        category = "chat"
    return Analysis(max(1, min(10, complexity)), category, tuple(cues))


# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tier:
    """A named model that answers questions of complexity ``floor`` and up (to the next tier's)."""

    name: str
    model: str
    floor: int


@dataclass(frozen=True)
class RouterConfig:
    """Tiers (cheapest first), per-category models, and the cache and validation settings."""

    tiers: tuple[Tier, ...]
    #: category → model id
    categories: Mapping[str, str] = field(default_factory=dict)
    cache_size: int = 100
    cache_ttl: float = 3600
    validate: bool = False
    #: where the tiers came from, for messages ("built-in: …" or the config file)
    source: str = "built-in"

    def __post_init__(self) -> None:
        if not self.tiers:
            raise ValueError("a router needs at least one tier")
        object.__setattr__(self, "tiers", tuple(sorted(self.tiers, key=lambda t: t.floor)))

    @property
    def models(self) -> frozenset[str]:
        """Every model this configuration can route to."""
        return frozenset([t.model for t in self.tiers] + list(self.categories.values()))

    def tier_for(self, complexity: int) -> Tier:
        """The tier whose band holds ``complexity`` (the lowest tier below its floor)."""
        chosen = self.tiers[0]
        for tier in self.tiers:
            if tier.floor <= complexity:
                chosen = tier
        return chosen

    def route(self, analysis: Analysis) -> tuple[str, str]:
        """The model for ``analysis`` and why (``tier balanced`` or ``category code``)."""
        model = self.categories.get(analysis.category)
        if model is not None:
            return model, f"category {analysis.category}"
        tier = self.tier_for(analysis.complexity)
        return tier.model, f"tier {tier.name}"

    def better(self, model: str) -> str | None:
        """The next better tier's model after ``model`` (a different model), or None at the top.
        A model that is in no tier (a category's) is followed by the best tier."""
        floors = [t.floor for t in self.tiers if t.model == model]
        start = max(floors) if floors else None
        for tier in self.tiers:
            if (start is None or tier.floor > start) and tier.model != model:
                if start is None and tier is not self.tiers[-1]:
                    continue
                return tier.model
        return None


_KEYS = ("tiers", "bands", "categories", "cache_size", "cache_ttl", "validate")
_TIER_NAMES = ("fast", "balanced", "best")


def _model_id(value: Any, key: str, where: str) -> str:
    from ..providers import parse_model_id, provider_names

    if not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a model id like openai:gpt-4o-mini, not {value!r}")
    try:
        provider, _ = parse_model_id(value)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {key}: {exc}") from None
    if provider not in provider_names():
        raise ConfigError(f"{where}: {key}: unknown provider {provider!r} (choose one of {', '.join(provider_names())})")
    return value.strip()


def parse_router(table: Mapping[str, Any], *, where: str = "config.toml",
                 defaults: tuple[Tier, ...] | None = None, default_source: str = "built-in") -> RouterConfig:
    """A :class:`RouterConfig` from a ``[router]`` table; ``defaults`` are the tiers used when it
    has no ``tiers``. Every mistake is a ConfigError naming its key (``router.tiers.best``)."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: [router] must be a table")
    for key in table:
        if key not in _KEYS:
            raise ConfigError(f"{where}: unknown key router.{key} (known: {', '.join(_KEYS)})")

    source = default_source
    raw_tiers = table.get("tiers")
    if raw_tiers is None:
        if not defaults:
            raise ConfigError(f"{where}: router.tiers is missing")
        tiers = defaults
    else:
        if not isinstance(raw_tiers, Mapping) or not raw_tiers:
            raise ConfigError(f"{where}: router.tiers must be a table of name = \"provider:model\" "
                              f"(e.g. tiers = {{ fast = \"local:smollm2\", best = \"anthropic:claude-sonnet-4-6\" }})")
        models = {name: _model_id(value, f"router.tiers.{name}", where) for name, value in raw_tiers.items()}
        bands = table.get("bands")
        if bands is None:
            n = len(models)
            floors = {name: 1 + (i * 10) // n for i, name in enumerate(models)}
        else:
            if not isinstance(bands, Mapping):
                raise ConfigError(f"{where}: router.bands must be a table of tier = first complexity (1–10)")
            floors = {}
            for name, floor in bands.items():
                if name not in models:
                    raise ConfigError(f"{where}: router.bands.{name}: there is no tier {name!r} "
                                      f"(tiers: {', '.join(models)})")
                if isinstance(floor, bool) or not isinstance(floor, int) or not 1 <= floor <= 10:
                    raise ConfigError(f"{where}: router.bands.{name} must be a whole number from 1 to 10, not {floor!r}")
                if floor in floors.values():
                    raise ConfigError(f"{where}: router.bands.{name}: another tier already starts at {floor}")
                floors[name] = floor
            missing = [name for name in models if name not in floors]
            if missing:
                raise ConfigError(f"{where}: router.bands must give every tier its first complexity "
                                  f"(missing: {', '.join(missing)})")
        tiers = tuple(Tier(name, model, floors[name]) for name, model in models.items())
        source = where

    by_name = {t.name: t.model for t in tiers}
    categories: dict[str, str] = {}
    raw_categories = table.get("categories", {})
    if not isinstance(raw_categories, Mapping):
        raise ConfigError(f"{where}: router.categories must be a table of category = tier or \"provider:model\"")
    for category, target in raw_categories.items():
        key = f"router.categories.{category}"
        if category not in CATEGORIES:
            raise ConfigError(f"{where}: {key}: unknown category (known: {', '.join(CATEGORIES)})")
        categories[category] = by_name[target] if isinstance(target, str) and target in by_name else \
            _model_id(target, key, where)

    size = table.get("cache_size", 100)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"{where}: router.cache_size must be a whole number of at least 1, not {size!r}")
    ttl = table.get("cache_ttl", 3600)
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl <= 0:
        raise ConfigError(f"{where}: router.cache_ttl must be a positive number of seconds, not {ttl!r}")
    validate = table.get("validate", False)
    if not isinstance(validate, bool):
        raise ConfigError(f"{where}: router.validate must be true or false, not {validate!r}")
    return RouterConfig(tiers, categories, size, float(ttl), validate, source)


async def default_tiers() -> tuple[tuple[Tier, ...], str]:
    """The built-in tiers from what is set up here, and a short reason (see the module docstring)."""
    from ..providers import provider_class

    anthropic = provider_class("anthropic").has_key()
    openai = provider_class("openai").has_key()
    status = await provider_class("ollama").status(timeout=0.2)
    ollama = f"ollama:{status.models[0]}" if status.configured and status.models else None
    if ollama:
        fast = ollama
    elif openai:
        fast = "openai:gpt-4o-mini"
    elif anthropic:
        fast = "anthropic:claude-haiku-4-5"
    else:
        fast = "local:smollm2"
    balanced = "anthropic:claude-haiku-4-5" if anthropic else "openai:gpt-4.1-mini" if openai else fast
    best = "anthropic:claude-sonnet-4-6" if anthropic else "openai:gpt-4.1" if openai else balanced
    found = [what for what, on in (("ANTHROPIC_API_KEY", anthropic), ("OPENAI_API_KEY", openai),
                                   ("Ollama", ollama)) if on]
    reason = ("built-in tiers (" + ", ".join(found) + ")") if found else \
        "built-in tiers (no API key set and no Ollama: everything goes to local:smollm2)"
    return (Tier("fast", fast, 1), Tier("balanced", balanced, 4), Tier("best", best, 7)), reason


async def router_config(settings: "Settings") -> RouterConfig:
    """The router's configuration from ``settings.router`` (built-in tiers when it names none).
    Raises ConfigError naming the bad key."""
    table = settings.router or {}
    where = str(settings.source) if settings.source is not None else "config.toml"
    if isinstance(table, Mapping) and "tiers" not in table:
        defaults, reason = await default_tiers()
        return parse_router(table, where=where, defaults=defaults, default_source=reason)
    return parse_router(table, where=where)


def open_cache(config: RouterConfig, *, persist: bool = True) -> RouteCache:
    """The routing cache with ``config``'s limits: the file under the data dir, or memory only."""
    return RouteCache(default_path() if persist else None, size=config.cache_size, ttl=config.cache_ttl)


# ------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------

_REFUSAL = re.compile(
    r"^\W*(?:(?:i'?m |i am )?(?:sorry|afraid)[,.!]?\s*(?:but\s*)?)?[^.!?\n]{0,30}?"
    r"\b(?:i (?:can(?:no|['’])t|cannot|am unable to|['’]m unable to|won['’]t be able to|am not able to|"
    r"must decline)|as an ai\b)", re.IGNORECASE)
_MIN_CHARS = {1: 1, 2: 1, 3: 1, 4: 20, 5: 20, 6: 40, 7: 40, 8: 80, 9: 80, 10: 80}


def _looks_like_code(text: str) -> bool:
    if "```" in text or "~~~" in text:
        return True
    indented = sum(1 for line in text.splitlines() if line.startswith(("    ", "\t")) and line.strip())
    return indented >= 2 or len(_CODE_LINE.findall(text)) >= 2


def check_answer(text: str, analysis: Analysis, *, state: str = "completed",
                 error: StreamchatError | None = None) -> str | None:
    """Why an answer looks incomplete (a short reason), or None when it looks fine."""
    if state == "failed":
        return f"it failed: {error}" if error is not None else "it failed"
    body = text.strip()
    if not body:
        return "empty"
    if len(body) < 600 and _REFUSAL.search(body[:300]):
        return "a refusal"
    need = _MIN_CHARS[analysis.complexity]
    if len(body) < need:
        return f"{len(body)} characters for complexity {analysis.complexity}"
    if analysis.category == "code" and "asks for code" in analysis.cues and not _looks_like_code(body):
        return "no code in it"
    return None


# ------------------------------------------------------------------------------------------------
# The routed run
# ------------------------------------------------------------------------------------------------


def _question(request: "ChatRequest") -> str:
    for message in reversed(request.messages):
        if message.role == "user":
            return message.content
    return ""


class RoutedRun:
    """Analyse, pick a model (cache first), stream its answer; validate and retry if asked.

    A :class:`~streamchat.orchestrate.Run`: ``state``, ``text`` and ``error`` are those of the
    answer being shown (the last stream); ``streams`` holds every stream made (a validation retry
    adds one), each passed to ``on_stream`` before it starts. ``model_id`` is the model chosen
    (after a retry, the better one), ``analysis`` the question's, ``cached`` whether the route
    came from the cache. Providers are made here and closed by :meth:`aclose` (unless lent with
    ``providers``).
    """

    def __init__(self, request: "ChatRequest", *, config: RouterConfig, cache: RouteCache,
                 bus: EventBus | None = None, timeouts: "Timeouts | None" = None,
                 on_stream: "OnStream | None" = None, validate: bool | None = None,
                 lane: str | None = None, stage: str | None = None,
                 providers: "Mapping[str, Provider] | None" = None) -> None:
        self.request = request
        self.config = config
        self.cache = cache
        self.bus = bus if bus is not None else EventBus()
        self.timeouts = timeouts
        self.on_stream = on_stream
        self.validate = config.validate if validate is None else validate
        self.lane = lane
        self.stage = stage
        self.id = new_stream_id()
        self.error: StreamchatError | None = None
        self.model_id: str | None = None
        self.analysis: Analysis | None = None
        self.cached = False
        self.streams: list[Stream] = []
        #: (model, why it was not accepted) for each answer that was retried
        self.rejected: list[tuple[str, str]] = []
        #: model id → provider; ``providers`` lent by the caller (warm, kept across runs: ``bench``)
        #: are used as they are and left open by :meth:`aclose`
        self._providers: dict[str, "Provider"] = dict(providers or {})
        self._borrowed = frozenset(self._providers)
        self._state = "pending"  # pending | active | completed | cancelled | failed (paused: the stream's)
        self._paused = False
        self._cancelled = False
        self._started: float | None = None

    # ------------------------------------------------------------------ the Run protocol
    @property
    def state(self) -> str:
        if self._state in ("completed", "cancelled", "failed"):
            return self._state
        if self._paused:
            return "paused"
        return self._state

    @property
    def current(self) -> Stream | None:
        return self.streams[-1] if self.streams else None

    @property
    def text(self) -> str:
        stream = self.current
        return stream.text if stream is not None else ""

    @property
    def done(self) -> bool:
        return self._state in ("completed", "cancelled", "failed")

    def pause(self) -> bool:
        if self.done or self._paused:
            return False
        stream = self.current
        if stream is not None and not stream.done and not stream.pause():
            return False
        self._paused = True
        return True

    def resume(self) -> bool:
        if self.done or not self._paused:
            return False
        self._paused = False
        stream = self.current
        if stream is not None and not stream.done:
            stream.resume()
        return True

    def cancel(self) -> bool:
        if self.done:
            return False
        self._cancelled = True
        stream = self.current
        if stream is not None:
            stream.cancel()
        elif self._started is None:  # never started: over at once
            self._state = "cancelled"
        return True

    # ------------------------------------------------------------------ running
    async def _say(self, message: str) -> None:
        await self.bus.publish(Progress(stream_id=self.id, lane=self.lane, stage=self.stage, message=message))

    async def _cache_problem(self) -> None:
        problem = self.cache.take_problem()
        if problem is not None:
            await self._say(f"⚠️ {problem}")

    def _provider(self, model: str) -> "Provider":
        provider = self._providers.get(model)
        if provider is None:
            from ..providers import create_provider

            provider = self._providers[model] = create_provider(model, timeouts=self.timeouts)
        return provider

    async def run(self) -> ResponseSnapshot:
        """Route and answer; returns the shown answer's snapshot. Like a Stream, it never raises a
        StreamchatError: a failure ends it as ``failed`` with ``error`` set."""
        if self.done:
            return self._snapshot()
        self._started = time.monotonic()
        self._state = "active"
        try:
            await self._run()
        except BaseException:
            if not self.done:
                self._state = "cancelled"
            raise
        return self._snapshot()

    async def _run(self) -> None:
        await self._say("🔍 Analysing…")
        question = _question(self.request)
        analysis = self.analysis = analyse(question)
        key = cache_key(question, analysis.complexity, analysis.category)
        entry = self.cache.get(key)
        await self._cache_problem()
        if entry is not None and entry.model not in self.config.models:  # configured away since
            self.cache.forget(key)
            entry = None
        if entry is not None:
            model = entry.model
            self.cached = True
            await self._say("💾 cached route")
        else:
            model, _why = self.config.route(analysis)
        self.model_id = model
        await self._say(f"🎯 Routed to {model} ({analysis.describe()})")

        accepted = True
        while True:
            try:
                stream = Stream(self._provider(model), self.request, bus=self.bus, timeouts=self.timeouts,
                                lane=self.lane, stage=self.stage)
            except StreamchatError as exc:  # e.g. a provider that cannot be made here
                self.error, self._state = exc, "failed"
                await self._say(f"❌ {model}: {exc}")
                return
            if self.on_stream is not None:
                self.on_stream(stream)
            self.streams.append(stream)
            if self._paused:
                stream.pause()
            if self._cancelled:
                stream.cancel()
            await stream.run()
            if stream.state == "cancelled" or self._cancelled or not self.validate:
                break
            reason = check_answer(stream.text, analysis, state=stream.state, error=stream.error)
            if reason is None:
                break
            better = self.config.better(model)
            if better is None or len(self.rejected) >= MAX_RETRIES:
                accepted = False
                await self._say(f"⚠️ answer looked incomplete ({reason}); no better tier to retry on")
                break
            self.rejected.append((model, reason))
            await self._say(f"🔁 answer looked incomplete ({reason}); retrying on {better}")
            model = self.model_id = better

        self.error = stream.error
        if stream.state == "completed":
            if accepted and not (self.cached and model == entry.model):  # a hit that held needs no write
                self.cache.put(key, model, complexity=analysis.complexity, category=analysis.category)
                await self._cache_problem()
            elapsed = time.monotonic() - (self._started or time.monotonic())
            self._state = "completed"
            await self._say(f"✅ done in {elapsed:.1f} s")
        else:
            self._state = stream.state if stream.state in ("cancelled", "failed") else "failed"

    def _snapshot(self) -> ResponseSnapshot:
        stream = self.current
        if stream is not None:
            return stream.snapshot
        return ResponseSnapshot(stream_id=self.id, state=self.state, lane=self.lane, stage=self.stage,
                                error=self.error)

    async def aclose(self) -> None:
        """Close the providers this run made (their connections)."""
        providers = [p for model, p in self._providers.items() if model not in self._borrowed]
        self._providers = {}
        for provider in providers:
            try:
                await provider.aclose()
            except Exception as exc:  # closing is best effort
                log.debug("closing %s failed: %s", provider, exc)
