"""Progressive enhancement: one question answered in stages — a fast draft first, then better ones.

A :class:`Pipeline` is a sequence of :class:`Stage` s. The first (usually the embedded local model)
puts words on the screen within a second; each later stage gets the question *and the answer so far*
and improves on it (``refine``) or checks and corrects it (``verify``). Every stage is an ordinary
:class:`~streamchat.core.stream.Stream` on the pipeline's bus, with ``stage=`` set, so every front
end that shows a stream shows a pipeline, and the history records each stage's answer with its stage.

:class:`PipelineRun` drives one question through a pipeline and is a
:class:`~streamchat.orchestrate.Run` (``pause``/``resume``/``cancel`` act on the live stage):

* **Pre-warm.** Every stage's model is warmed ahead of its turn (:meth:`PipelineRun.warm`): the
  local model loads, SDKs are imported and HTTP connections opened, an Ollama model is loaded with
  ``keep_alive`` — so that the refine stage's request goes out on a warm connection the moment the
  draft is done. At start the first stage's model warms at once and the later ones all together
  as soon as its first token is out (see ``prewarm``: all at once about doubled the time to the first token);
  :meth:`PipelineRun.warm` before the run warms them all in parallel. Warm-up failures are only
  logged: the stage's own stream reports the real error.
* **Failures.** A stage that fails or times out (its ``timeout`` is the stage's total time) is
  reported as a :class:`~streamchat.core.events.Progress` event (``⚠ refine failed (rate limited);
  keeping the draft``) and the pipeline goes on with the best answer it has. The run is ``failed``
  only when no stage completed an answer; the last Progress event says which stage's answer is the
  answer (``✅ answer from refine (anthropic:…) in 2.1 s``), as does :attr:`PipelineRun.final_stage`.
* **Confidence.** Every stage asks for per-token confidence where its provider can give it
  (OpenAI/Ollama logprobs, the local model); a token that has none carries the stage's configured
  ``confidence`` instead (filled in on the way to the bus, see :class:`_StageBus`), so a front end
  can always tell a shaky draft from a checked answer.

Config (``config.toml``; the built-in ``default`` can be overridden by defining ``[pipelines.default]``)::

    [pipelines.fast]
    stages = [
      { name = "draft",  model = "local:smollm2", type = "draft", timeout = 20, confidence = 0.4 },
      { name = "refine", model = "openai:gpt-4.1-mini", type = "refine", max_tokens = 800 },
    ]

    # the same, as an array of tables
    [[pipelines.careful.stages]]
    name = "draft"
    model = "local:smollm2"
    [[pipelines.careful.stages]]
    name = "check"
    model = "anthropic:claude-sonnet-4-6"
    type = "verify"
    system = "You are a meticulous reviewer."
    temperature = 0.2
    options = { seed = 7 }          # passed to the provider as ChatRequest.options

Stage keys: ``model`` (required, ``provider:model``), ``name`` (default: the type; names must be
unique), ``type`` (``draft`` | ``refine`` | ``verify``; default ``draft`` for the first stage and
``refine`` after it), ``system`` (default: the question's system prompt), ``confidence`` (0..1, for
tokens without a provider confidence), ``timeout`` (seconds for the whole stage), ``max_tokens``,
``temperature`` and ``options`` (a table of provider options). A mistake is a
:class:`~streamchat.core.errors.ConfigError` naming the file and the key
(``…/config.toml: pipelines.fast.stages[1].model is missing``; stages are counted from 0).

The built-in ``default``: ``local:smollm2`` drafts, then the best configured cloud model refines
(as :func:`~streamchat.config.resolve_model` picks one: the configured default model, else Anthropic
if ``ANTHROPIC_API_KEY`` is set, else OpenAI if ``OPENAI_API_KEY``, else Ollama if its server
answers). With none of them it is the draft alone, and a Progress event says so.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import os
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ..core.bus import EventBus
from ..core.errors import ConfigError, StreamchatError
from ..core.events import Event, Progress, ResponseSnapshot, Token
from ..core.request import ChatRequest, Message
from ..core.stream import Stream

if TYPE_CHECKING:
    from ..config import Settings
    from ..providers.base import Provider, Timeouts
    from . import OnStream

__all__ = [
    "Stage",
    "Pipeline",
    "PipelineRun",
    "STAGE_KINDS",
    "STAGE_START",
    "pipeline_names",
    "load_pipeline",
    "parse_pipeline",
    "default_pipeline",
    "stage_request",
]

log = logging.getLogger("streamchat.pipeline")

STAGE_KINDS = ("draft", "refine", "verify")
#: the first character of the Progress message that announces a stage (front ends that show a
#: header per stage may skip these)
STAGE_START = "▶"
#: the most a warm-up may take before a stage starts without waiting for it any longer
WARM_LIMIT = 15.0
#: the local model the built-in default drafts with
DRAFT_MODEL = "local:smollm2"

_STAGE_KEYS = ("name", "model", "type", "system", "confidence", "timeout", "max_tokens", "temperature", "options")
_PIPELINE_KEYS = ("stages",)
_ids = itertools.count(1)


@dataclass(frozen=True)
class Stage:
    """One step of a pipeline. ``options``: request options (``max_tokens``, ``temperature``; any
    other key goes to the provider as ``ChatRequest.options``)."""

    name: str
    model: str
    kind: str = "draft"  # draft | refine | verify
    system: str | None = None
    confidence: float | None = None
    timeout: float | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Pipeline:
    """A named sequence of stages. ``source``: ``"built-in"`` or the config file it came from;
    ``notes``: things to tell the person when it runs (e.g. why the default is the draft alone)."""

    name: str
    stages: tuple[Stage, ...]
    source: str
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        """``draft (local:smollm2) → refine (openai:gpt-4.1-mini)``"""
        return " → ".join(f"{s.name} ({s.model})" for s in self.stages)


# ---------------------------------------------------------------------------------------------
# Config


def pipeline_names(settings: "Settings") -> list[str]:
    """The pipelines one can ask for: the built-in ``default`` and those of the config file."""
    return ["default", *sorted(name for name in settings.pipelines if name != "default")]


async def load_pipeline(name: str, settings: "Settings") -> Pipeline:
    """The pipeline called ``name``: from ``[pipelines.NAME]`` of the config, else the built-in
    ``default``. Raises ConfigError naming the bad key (and the file), or listing the known names."""
    where = str(settings.source) if settings.source is not None else "config.toml"
    if name in settings.pipelines:
        return parse_pipeline(name, settings.pipelines[name], where)
    if name == "default":
        return await default_pipeline(settings)
    known = ", ".join(pipeline_names(settings))
    from ..config import config_dir

    place = settings.source or config_dir() / "config.toml"
    raise ConfigError(f"unknown pipeline {name!r} (known: {known}; define one as [pipelines.{name}] in {place})")


async def default_pipeline(settings: "Settings") -> Pipeline:
    """The built-in ``default``: a local draft, refined by the best configured cloud model."""
    from ..config import resolve_model

    draft = Stage("draft", DRAFT_MODEL, "draft", confidence=0.5, timeout=60.0)
    model, reason = await resolve_model(None, settings)
    if model.startswith("local:"):
        note = ("ℹ no cloud model is configured (no ANTHROPIC_API_KEY or OPENAI_API_KEY, no Ollama server):"
                " the default pipeline is the local draft alone")
        return Pipeline("default", (draft,), "built-in", (note,))
    refine = Stage("refine", model, "refine", confidence=0.9)
    return Pipeline("default", (draft, refine), "built-in", (f"ℹ refine with {model} ({reason})",))


def parse_pipeline(name: str, table: Any, where: str) -> Pipeline:
    """Check one ``[pipelines.NAME]`` table (as TOML gives it) and build the pipeline."""
    key = f"pipelines.{name}"

    def fail(message: str) -> ConfigError:
        return ConfigError(f"{where}: {message}")

    if not isinstance(table, dict):
        raise fail(f"{key} must be a table with a stages list")
    unknown = [k for k in table if k not in _PIPELINE_KEYS]
    if unknown:
        raise fail(f"{key} has unknown key {unknown[0]!r} (known: {', '.join(_PIPELINE_KEYS)})")
    stages_raw = table.get("stages")
    if stages_raw is None:
        raise fail(f"{key}.stages is missing (a list of stages, e.g. "
                   f'stages = [{{ name = "draft", model = "{DRAFT_MODEL}" }}])')
    if not isinstance(stages_raw, list) or not stages_raw:
        raise fail(f"{key}.stages must be a non-empty list of stage tables")
    stages: list[Stage] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(stages_raw):
        stage = _parse_stage(raw, f"{key}.stages[{i}]", first=i == 0, fail=fail)
        if stage.name in seen:
            raise fail(f"{key}.stages[{i}].name: duplicate stage name {stage.name!r} "
                       f"(also stages[{seen[stage.name]}]); give each stage its own name")
        seen[stage.name] = i
        stages.append(stage)
    return Pipeline(name, tuple(stages), where)


def _parse_stage(raw: Any, key: str, *, first: bool, fail) -> Stage:
    if not isinstance(raw, dict):
        raise fail(f"{key} must be a table like {{ name = \"draft\", model = \"{DRAFT_MODEL}\" }}, not {raw!r}")
    label = f" (stage {raw['name']!r})" if isinstance(raw.get("name"), str) else ""
    unknown = [k for k in raw if k not in _STAGE_KEYS]
    if unknown:
        raise fail(f"{key} has unknown key {unknown[0]!r}{label} (known: {', '.join(_STAGE_KEYS)})")

    def text(name: str) -> str | None:
        value = raw.get(name)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise fail(f"{key}.{name} must be non-empty text, not {value!r}{label}")
        return value

    def number(name: str, low: float, high: float | None, *, open_low: bool) -> float | None:
        value = raw.get(name)
        if value is None:
            return None
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            ok = (value > low if open_low else value >= low) and (high is None or value <= high)
        if not ok:
            bounds = {("timeout", None): "a positive number of seconds"}.get((name, high))
            if bounds is None:
                bounds = f"a number from {low:g} to {high:g}" if high is not None else f"a number of at least {low:g}"
            raise fail(f"{key}.{name} must be {bounds}, not {value!r}{label}")
        return float(value)

    model = text("model")
    if model is None:
        raise fail(f"{key}.model is missing{label} (e.g. model = \"{DRAFT_MODEL}\")")
    from ..providers import parse_model_id, provider_class

    try:
        provider_class(parse_model_id(model)[0])
    except ConfigError as err:
        raise fail(f"{key}.model: {err}") from None
    kind = text("type") or ("draft" if first else "refine")
    if kind not in STAGE_KINDS:
        raise fail(f"{key}.type must be one of {', '.join(STAGE_KINDS)}, not {kind!r}{label}")
    name = text("name") or kind
    system = text("system")
    confidence = number("confidence", 0.0, 1.0, open_low=False)
    timeout = number("timeout", 0.0, None, open_low=True)
    options: dict[str, Any] = {}
    extra = raw.get("options")
    if extra is not None:
        if not isinstance(extra, dict):
            raise fail(f"{key}.options must be a table (e.g. options = {{ seed = 7 }}), not {extra!r}{label}")
        options.update(extra)
    max_tokens = raw.get("max_tokens")
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens <= 0:
            raise fail(f"{key}.max_tokens must be a positive whole number, not {max_tokens!r}{label}")
        options["max_tokens"] = max_tokens
    temperature = number("temperature", 0.0, 2.0, open_low=False)
    if temperature is not None:
        options["temperature"] = temperature
    return Stage(name, model.strip(), kind, system, confidence, timeout, options)


# ---------------------------------------------------------------------------------------------
# Prompts

REFINE_PROMPT = """\
Improve the draft answer to the question below. The draft was written in a hurry by a small, fast \
model: it may be wrong, incomplete or badly organised, so trust your own knowledge over it.

<question>
{question}
</question>

<draft>
{answer}
</draft>

Write the best answer to the question. Keep what the draft gets right, correct what it gets wrong \
and add what is missing. Reply with the answer itself, as if you were answering the question \
directly: do not mention the draft or these instructions."""

VERIFY_PROMPT = """\
Check the answer to the question below as a careful reviewer would.

<question>
{question}
</question>

<answer>
{answer}
</answer>

Look for factual errors, mistakes in reasoning, arithmetic or code, and anything important that \
is missing. If the answer is correct and complete, repeat it unchanged. Otherwise reply with the \
corrected answer. Reply with the final answer only, as if you were answering the question \
directly: no review notes, and no mention of the earlier answer or of this check."""


def stage_request(stage: Stage, base: ChatRequest, previous: str | None, *, confidence: bool = False) -> ChatRequest:
    """The request a stage sends: the question for a draft; for refine/verify, the question with
    the previous stage's answer as context.

    Why the prompts look as they do:

    * The question and the earlier answer go into **one user turn, inside tags**, not as a fake
      assistant turn: the strong model must not take a small model's words for its own (it would
      defend them), and tags keep the draft *data* — instructions that appear inside it are quoted,
      not obeyed. The draft is said to be hasty so that the model trusts itself over it.
    * The reply must be a **standalone answer** ("do not mention the draft"): it replaces the draft
      on screen and in the history, and a ``--continue`` sends it back as what was said.
    * ``verify`` repeats a correct answer unchanged rather than saying "looks good": the last stage's
      text is always the answer, whatever it found.
    * Earlier turns of the conversation stay as turns before it, so follow-up questions work; the
      instructions live in the user turn so that any system prompt (the stage's, else the
      question's) still applies.
    * Without a previous answer (the draft failed) a refine/verify stage simply answers the question.
    """
    options = dict(stage.options)
    max_tokens = int(options.pop("max_tokens", base.max_tokens))
    temperature = options.pop("temperature", base.temperature)
    messages = base.messages
    if stage.kind != "draft" and previous and previous.strip() and messages and messages[-1].role == "user":
        template = REFINE_PROMPT if stage.kind == "refine" else VERIFY_PROMPT
        tag = "draft" if stage.kind == "refine" else "answer"
        answer = previous.strip().replace(f"</{tag}>", f"</ {tag}>")  # the tag cannot be closed early
        question = messages[-1].content.strip()
        messages = messages[:-1] + (Message("user", template.format(question=question, answer=answer)),)
    return ChatRequest(
        messages=messages,
        system=stage.system if stage.system is not None else base.system,
        max_tokens=max_tokens,
        temperature=temperature,
        confidence=base.confidence or confidence,
        options={**base.options, **options},
    )


# ---------------------------------------------------------------------------------------------
# Running


class _StageBus:
    """What a stage's Stream publishes to: the pipeline's bus, with the stage's confidence put on
    tokens that carry none (the provider gave no per-token confidence). Anything else — subscribe,
    register … — is the real bus's."""

    __slots__ = ("_bus", "_confidence", "_on_first_token")

    def __init__(self, bus: EventBus, confidence: float | None,
                 on_first_token: Callable[[], Any] | None = None) -> None:
        self._bus = bus
        self._confidence = confidence
        self._on_first_token = on_first_token

    async def publish(self, event: Event) -> None:
        if type(event) is Token:
            if self._confidence is not None and event.confidence is None:
                event = replace(event, confidence=self._confidence)
            if self._on_first_token is not None:
                callback, self._on_first_token = self._on_first_token, None
                callback()
        await self._bus.publish(event)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bus, name)


def _reason(err: StreamchatError | None, timeouts: "Timeouts | None" = None) -> str:
    """A few words on why a stage failed."""
    if err is None:
        return "no answer"
    short = {"rate_limited": "rate limited", "overloaded": "overloaded", "auth": "not authorised",
             "connection": "connection lost"}.get(err.kind)
    if err.kind == "timeout":
        which = getattr(err, "which", "total")
        seconds = getattr(timeouts, which, None) if timeouts is not None else None
        after = f" {seconds:g} s" if seconds is not None else ""
        short = {"first_token": f"no answer within{after}", "idle": f"stopped sending for{after}",
                 "connect": "could not connect in time"}.get(which, f"timed out after{after}" if after else "timed out")
    text = str(err)
    if short is None:
        return text if len(text) <= 120 else text[:119] + "…"
    return short


class PipelineRun:
    """One question through a pipeline; a :class:`~streamchat.orchestrate.Run`.

    ``text`` is the best answer so far: the last completed stage's answer (before any: the longest
    partial, the live stage's included); ``final_stage`` the stage it came from. ``stage`` is the name
    of the stage running now (after the run: of the last one that ran). ``streams``: every stage's
    Stream so far, in order.

    ``providers`` (model id → provider) lends the run providers to use instead of making its own
    (the app's, already warmed): the run neither warms nor closes them. ``on_stream`` may return an
    awaitable: the stage's stream starts once it is done.

    ``prewarm`` — how the stages' models are warmed when the run starts:

    * ``"staged"`` (default, also ``True``): the first stage's model at once; every later stage's,
      all in parallel, as soon as the first stage's first token is out (or it ended). Measured
      (``benchmarks/bench_pipeline.py``): warming everything at once makes the embedded model's
      load share two cores and the GIL with the cloud SDKs' imports, which about doubled the time
      to the first visible token (medians of two runs, fresh processes: ~0.7 s → 1.3–1.7 s);
      staged, it stays at ~0.7 s and the refine stage's hand-over still drops from ~0.8–0.9 s
      to ~0.3 s, as its SDK import and connection happen while the draft streams.
    * ``"parallel"``: every stage's at once (right when no stage is local and CPU-bound).
    * ``"none"`` (also ``False``): each stage gets ready when it starts (to measure what warming saves).

    :meth:`warm`, called before :meth:`run` (a front end at start-up), always warms all at once.
    """

    def __init__(self, pipeline: Pipeline, request: ChatRequest, *, bus: EventBus | None = None,
                 timeouts: "Timeouts | None" = None, on_stream: "OnStream | None" = None,
                 lane: str | None = None, prewarm: bool | str = "staged",
                 providers: "Mapping[str, Provider] | None" = None) -> None:
        from ..providers.base import Timeouts

        if not pipeline.stages:
            raise ConfigError(f"pipeline {pipeline.name!r} has no stages")
        self.pipeline = pipeline
        self.request = request
        self.bus = bus if bus is not None else EventBus()
        self.timeouts = timeouts or Timeouts()
        self.on_stream = on_stream
        self.lane = lane
        if prewarm is True:
            prewarm = "staged"
        elif prewarm is False:
            prewarm = "none"
        if prewarm not in ("staged", "parallel", "none"):
            raise ValueError(f"prewarm must be 'staged', 'parallel' or 'none', not {prewarm!r}")
        self.prewarm = prewarm
        self.id = f"p{os.getpid():x}-{int(time.time() * 1000):x}-{next(_ids)}"
        self.state = "pending"
        self.error: StreamchatError | None = None
        self.stage: str | None = None
        self.final_stage: Stage | None = None
        self.streams: list[Stream] = []
        #: seconds each stage's warm-up took (filled in as they finish)
        self.warm_seconds: dict[str, float] = {}
        #: stage name → why its warm-up failed (only logged otherwise)
        self.warm_errors: dict[str, str] = {}
        #: model id → provider; ``providers`` given by the caller (a front end that already warmed
        #: them) are used as they are and left open by :meth:`aclose`
        self._providers: dict[str, "Provider"] = dict(providers or {})
        self._borrowed = frozenset(self._providers)
        self._warming: dict[str, asyncio.Task] = {}  # by model id: stages of one model share it
        self._live: Stream | None = None
        self._paused = False
        self._cancelled = False
        self._best: tuple[Stage, str] | None = None  # the last completed stage and its answer
        self._partial: tuple[Stage, str] | None = None  # the longest partial, if none completed
        self._task: asyncio.Task | None = None
        self._t0: float | None = None
        self._stop = asyncio.Event()  # set by cancel(): ends a wait for a warm-up

    # ------------------------------------------------------------------ the Run protocol
    @property
    def text(self) -> str:
        if self._best is not None:
            return self._best[1]
        partial = self._partial[1] if self._partial is not None else ""
        live = self._live.text if self._live is not None else ""  # no answer yet: the words so far
        return live if len(live) > len(partial) else partial

    @property
    def done(self) -> bool:
        return self.state in ("completed", "cancelled", "failed")

    def pause(self) -> bool:
        """Pause the live stage (a stage that starts while paused starts paused)."""
        if self.done or self._paused:
            return False
        self._paused = True
        if self.state == "active":
            self.state = "paused"
        if self._live is not None:
            self._live.pause()
        return True

    def resume(self) -> bool:
        if self.done or not self._paused:
            return False
        self._paused = False
        if self.state == "paused":
            self.state = "active"
        if self._live is not None:
            self._live.resume()
        return True

    def cancel(self) -> bool:
        """Stop: the live stage ends as cancelled (partial kept), no further stage starts."""
        if self.done or self._cancelled:
            return False
        self._cancelled = True
        self._stop.set()
        if self._live is not None:
            self._live.cancel()
        elif self._task is None:  # never started
            self.state = "cancelled"
        return True

    @property
    def snapshot(self) -> ResponseSnapshot:
        stage = self.final_stage
        provider = model = None
        if stage is not None:
            provider, _, model = stage.model.partition(":")
        tokens = 0
        for stream in self.streams:
            if stage is not None and stream.stage == stage.name:
                tokens = stream.stats().tokens
        return ResponseSnapshot.with_text(
            self.text, stream_id=self.id, state=self.state, provider=provider, model=model, lane=self.lane,
            stage=stage.name if stage is not None else None, tokens=tokens, error=self.error,
        )

    # ------------------------------------------------------------------ warm-up
    def _provider(self, stage: Stage) -> "Provider":
        provider = self._providers.get(stage.model)
        if provider is None:
            from ..providers import create_provider

            provider = self._providers[stage.model] = create_provider(stage.model, timeouts=self.timeouts)
        return provider

    def _warm_task(self, stage: Stage) -> asyncio.Task | None:
        if stage.model in self._borrowed:  # lent: the lender warmed it (once, not per question)
            return None
        task = self._warming.get(stage.model)
        if task is None:
            try:
                provider = self._provider(stage)
            except StreamchatError as err:  # a bad model id: the stage itself reports it
                self.warm_errors[stage.name] = str(err)
                return None
            task = self._warming[stage.model] = asyncio.ensure_future(_warm(provider))
        return task

    def _warm_rest(self) -> None:
        """Start warming every stage not warming yet (idempotent)."""
        if self.prewarm == "none" or self._cancelled:
            return
        for stage in self.pipeline.stages:
            self._warm_task(stage)

    async def warm(self) -> dict[str, float]:
        """Warm every stage's model, all at once; seconds per stage (a stage whose warm-up failed
        is in ``warm_errors`` too). Safe to call before or during :meth:`run`: a model is warmed once."""
        tasks = {stage.name: self._warm_task(stage) for stage in self.pipeline.stages}
        live = [t for t in tasks.values() if t is not None]
        if live:
            await asyncio.wait(live)
        for name, task in tasks.items():
            self._note_warm(name, task)
        return {name: self.warm_seconds[name] for name in tasks if name in self.warm_seconds}

    def _note_warm(self, name: str, task: asyncio.Task | None) -> None:
        if task is None or not task.done() or task.cancelled():
            return
        seconds, error = task.result()
        self.warm_seconds[name] = seconds
        if error is not None:
            self.warm_errors[name] = error

    # ------------------------------------------------------------------ running
    async def run(self) -> ResponseSnapshot:
        """Run the stages in order and return the final snapshot. Never raises a StreamchatError
        (stage failures are Progress events; see ``state`` and ``error``)."""
        if self._task is not None or self.state != "pending":
            if self.state == "cancelled" and self._t0 is None:
                await self._say(f"⏹ cancelled before {self.pipeline.stages[0].name} started")
            return self.snapshot
        self._task = asyncio.current_task()
        self._t0 = time.monotonic()
        self.state = "paused" if self._paused else "active"
        try:
            for note in self.pipeline.notes:
                await self._say(note)
            if self.prewarm == "parallel":
                self._warm_rest()
            elif self.prewarm == "staged":
                self._warm_task(self.pipeline.stages[0])
            stages = self.pipeline.stages
            for i, stage in enumerate(stages):
                if self._cancelled:
                    break
                await self._run_stage(i, stage)
        except asyncio.CancelledError:  # cancelled from outside: the live stream kept its partial
            self._cancelled = True
            self.state = "cancelled"
            raise
        await self._finish()
        return self.snapshot

    async def _run_stage(self, i: int, stage: Stage) -> None:
        self.stage = stage.name
        n = len(self.pipeline.stages)
        try:
            provider = self._provider(stage)
        except StreamchatError as err:
            await self._stage_failed(i, stage, err)
            return
        await self._say(f"{STAGE_START} {stage.name} ({stage.model}) {i + 1}/{n}", stage=stage.name, fraction=i / n)
        warming = self._warming.get(stage.model)
        if warming is not None and not warming.done():  # do not open a second connection meanwhile
            stop = asyncio.ensure_future(self._stop.wait())
            try:
                limit = min(WARM_LIMIT, stage.timeout) if stage.timeout is not None else WARM_LIMIT
                await asyncio.wait({warming, stop}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
            if self._cancelled:
                return
        self._note_warm(stage.name, warming)
        previous = self._best[1] if self._best is not None else None
        request = stage_request(stage, self.request, previous, confidence=provider.supports_confidence)
        stage_bus = _StageBus(self.bus, stage.confidence, self._warm_rest if i == 0 else None)
        stream = Stream(provider, request, bus=stage_bus,  # type: ignore[arg-type]
                        timeouts=self._stage_timeouts(stage), lane=self.lane, stage=stage.name)
        self.streams.append(stream)
        if self.on_stream is not None:
            ready = self.on_stream(stream)
            if inspect.isawaitable(ready):  # a front end getting its view ready for the stream
                await ready
        if self._paused:
            stream.pause()
        self._live = stream
        try:
            await stream.run()
        finally:
            self._live = None
            if i == 0:
                self._warm_rest()  # the first stage ended without a token: warm the rest now
        text = stream.text
        if stream.state == "completed" and text.strip():
            self._best = (stage, text)
            self.final_stage = stage
            return
        if text.strip() and (self._partial is None or len(text) >= len(self._partial[1])):
            self._partial = (stage, text)
        if stream.state == "cancelled":
            return
        error = stream.error if stream.state == "failed" else StreamchatError(f"{stage.name} gave an empty answer")
        await self._stage_failed(i, stage, error, stream.timeouts)

    async def _stage_failed(self, i: int, stage: Stage, error: StreamchatError | None,
                            timeouts: "Timeouts | None" = None) -> None:
        self.error = error
        stages = self.pipeline.stages
        if self._best is not None:
            then = f"keeping the {self._best[0].name}"
        elif i + 1 < len(stages):
            then = f"going on with {stages[i + 1].name}"
        else:
            then = "no stage produced an answer"
        await self._say(f"⚠ {stage.name} failed ({_reason(error, timeouts)}); {then}", stage=stage.name)

    async def _finish(self) -> None:
        elapsed = time.monotonic() - (self._t0 or time.monotonic())
        if self._best is None and self._partial is not None:
            self.final_stage = self._partial[0]
        if self._cancelled:
            self.state = "cancelled"
            kept = f"; keeping the {self.final_stage.name}" if self.final_stage is not None and self.text else ""
            await self._say(f"⏹ cancelled during {self.stage}{kept}", stage=self.stage)
        elif self._best is not None:
            self.state = "completed"
            self.error = None  # a stage failed, but the pipeline answered
            stage = self._best[0]
            await self._say(f"✅ answer from {stage.name} ({stage.model}) in {elapsed:.1f} s", stage=stage.name,
                            fraction=1.0)
        else:
            self.state = "failed"
            if self.error is None:
                self.error = StreamchatError(f"no stage of pipeline {self.pipeline.name!r} produced an answer")

    def _stage_timeouts(self, stage: Stage) -> "Timeouts":
        t = self.timeouts
        if stage.timeout is None:
            return t

        def cap(value: float | None) -> float:
            return stage.timeout if value is None else min(value, stage.timeout)

        return replace(t, connect=cap(t.connect), first_token=cap(t.first_token), idle=cap(t.idle), total=cap(t.total))

    async def _say(self, message: str, *, stage: str | None = None, fraction: float | None = None) -> None:
        await self.bus.publish(Progress(stream_id=self.id, lane=self.lane, stage=stage, message=message,
                                        fraction=fraction))

    async def aclose(self) -> None:
        """Close every stage's provider (its connections); stop warm-ups still going."""
        for task in self._warming.values():
            if not task.done():
                task.cancel()
        providers = [p for model, p in self._providers.items() if model not in self._borrowed]
        self._providers = {}
        for provider in providers:
            try:
                await provider.aclose()
            except Exception:
                log.debug("closing %s failed", provider.model_id, exc_info=True)


# ---------------------------------------------------------------------------------------------
# Warming one provider


async def _warm(provider: "Provider") -> tuple[float, str | None]:
    """Warm ``provider``; returns (seconds, why it failed or None). Never raises."""
    t0 = time.perf_counter()
    error = None
    try:
        await asyncio.wait_for(_warm_provider(provider), WARM_LIMIT)
    except asyncio.TimeoutError:
        error = f"warm-up took longer than {WARM_LIMIT:g} s"
    except StreamchatError as err:
        error = str(err)
    except Exception as exc:  # the SDK's own error from the connection warm-up
        error = f"{type(exc).__name__}: {exc}"
    if error is not None:
        log.info("warming %s: %s", provider.model_id, error)
    return time.perf_counter() - t0, error


async def _warm_provider(provider: "Provider") -> None:
    """``provider.warm()`` (SDK import and client; the local model loads and primes), then — for
    the built-in HTTP providers, whose ``warm()`` does not touch the network — one small request on
    the SDK's own client, so the TCP (and TLS) connection is open in its pool when the stage sends:
    the model list (OpenAI, Anthropic), or an Ollama load request (empty ``messages``) with a
    ``keep_alive``, which loads the model into memory."""
    from ..providers.base import Provider as Base

    await provider.warm()
    if type(provider).warm is not Base.warm:  # the adapter warms in its own way (e.g. local)
        return
    client = provider.client
    if provider.name == "openai":
        await client.models.list()
    elif provider.name == "anthropic":
        await client.models.list(limit=1)
    elif provider.name == "ollama":
        await client.chat(model=provider.model, messages=[], stream=False, keep_alive="10m")
