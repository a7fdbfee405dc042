"""Benchmarks: the same question answered N times by several contestants (A/B), measured.

A *contestant* is a name and a factory that makes one :class:`~streamchat.orchestrate.Run` on a
given bus (:data:`RunFactory`) — a plain :class:`~streamchat.core.stream.Stream` for a model
(:func:`model_contestant`), a pipeline (:func:`pipeline_contestant`), the router
(:func:`route_contestant`) … anything that answers. Everything measured
comes from the run's bus events, through a handler (:class:`RunMeter`), so every kind of
contestant is measured the same way:

* **time to first token** — from the moment the run is started to the first :class:`Token` of any
  of its streams (for a pipeline: the first token of any stage, which is what a person sees first;
  a retry's wait before the first token is in it, as a person waits for it too);
* **tokens** and **tokens/s** of *the answer* — the stream that completed last (a pipeline's final
  stage; the one stream of a model): ``(tokens − 1) / (end − first token)``, the definition
  ``Stream.stats()`` and ``streamchat stats`` use;
* **duration** — start to end of the whole run; **retries**; the **error** of a failed run.

How runs are scheduled, and why:

* Runs go **one after another**, never two at once, so contestants do not compete for the CPU,
  the network or a local model and disturb each other's figures.
* Contestants are **interleaved round-robin** (A B A B …, not A A … B B …): a drift on the machine
  or at the provider during the benchmark (a busy CPU, thermal throttling, a provider getting
  loaded) then hits every contestant alike instead of making whichever ran last look worse.
* Each contestant is **warmed up** first: its SDK imported and client made (a local model loaded)
  — a failure there (no API key …) stops the benchmark before anything is sent — and then one
  untimed *cold* run each (round-robin too), which opens the connection that later runs reuse.
  Its figures are kept apart (:attr:`Summary.cold`) and left out of the medians: a first request
  pays for TCP/TLS set-up and imports that no later one does, and one outlier in five runs would
  skew a p95. ``warmup=False`` skips the cold run (one request fewer per contestant, e.g. on a paid
  API); the first timed run then includes the set-up. (A pipeline or the router makes its
  providers per run and a pipeline warms its stages' models at each start, as when a person asks
  through it: for them the cold run pays the imports and a local model's load.)

The summary figures (medians, p95) are over the runs that completed; failed runs count in the
error rate, with their errors by kind. A run interrupted by :meth:`Bench.stop` (Ctrl+C) is kept in
:attr:`Bench.interrupted` but counted nowhere.

Nothing here prints: ``streamchat bench`` (``cli/bench.py``) shows the progress and the table.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from ..core.bus import EventBus
from ..core.errors import StreamchatError
from ..core.events import TERMINAL_EVENTS, Completed, Event, Retrying, StreamStarted, Token
from ..history.stats import Distribution

if TYPE_CHECKING:
    from ..core.request import ChatRequest
    from ..providers.base import Provider, Timeouts
    from . import Run
    from .pipeline import Pipeline
    from .router import RouterConfig

__all__ = ["Bench", "Contestant", "RunFactory", "RunMeter", "RunRecord", "Summary", "exit_code", "model_contestant",
           "pipeline_contestant", "route_contestant", "summarise"]

log = logging.getLogger("streamchat.bench")

#: makes one run of a contestant, publishing on the given bus
RunFactory = Callable[[EventBus], "Run"]


@dataclass
class Contestant:
    """One side of the comparison: ``make(bus)`` gives a fresh run each time.

    ``warm`` (optional) gets it ready before anything is timed — raising a StreamchatError there
    stops the benchmark before anything is sent; ``aclose`` releases what it holds at the end."""

    name: str
    make: RunFactory
    kind: str = "model"  # model | pipeline | route
    warm: Callable[[], Awaitable[Any]] | None = None
    aclose: Callable[[], Awaitable[Any]] | None = None


def model_contestant(model_id: str, request: "ChatRequest", *, timeouts: "Timeouts | None" = None,
                     name: str | None = None) -> Contestant:
    """A plain model: each run is a :class:`Stream` of ``request``. One provider (one SDK client)
    serves every run, so later runs reuse its connection as a chat session would.
    Raises ConfigError for a bad model id or an unknown provider."""
    from ..core.stream import Stream
    from ..providers import create_provider

    provider = create_provider(model_id, timeouts=timeouts)

    def make(bus: EventBus) -> "Run":
        return Stream(provider, request, bus=bus, timeouts=timeouts)

    return Contestant(name or model_id, make, "model", warm=provider.warm, aclose=provider.aclose)


def _pool(models: "list[str]", timeouts: "Timeouts | None") -> "dict[str, Provider]":
    """One provider per model, shared by every run of a contestant — as a model contestant's is,
    so that no contestant pays for a new connection per run where another does not."""
    from ..providers import create_provider

    return {model: create_provider(model, timeouts=timeouts) for model in dict.fromkeys(models)}


def _pool_warm(pool: "dict[str, Provider]") -> Callable[[], Awaitable[Any]]:
    async def warm() -> None:
        await asyncio.gather(*(provider.warm() for provider in pool.values()))

    return warm


def _pool_close(pool: "dict[str, Provider]") -> Callable[[], Awaitable[Any]]:
    async def aclose() -> None:
        await asyncio.gather(*(provider.aclose() for provider in pool.values()), return_exceptions=True)

    return aclose


def pipeline_contestant(pipeline: "Pipeline", request: "ChatRequest", *, timeouts: "Timeouts | None" = None,
                        name: str | None = None) -> Contestant:
    """A pipeline (``orchestrate.pipeline``): each run is a :class:`PipelineRun`, on the stages'
    providers shared by all its runs (warmed before anything is timed)."""
    from .pipeline import PipelineRun

    pool = _pool([stage.model for stage in pipeline.stages], timeouts)

    def make(bus: EventBus) -> "Run":
        return PipelineRun(pipeline, request, bus=bus, timeouts=timeouts, providers=pool)

    return Contestant(name or f"pipeline:{pipeline.name}", make, "pipeline", warm=_pool_warm(pool),
                      aclose=_pool_close(pool))


def route_contestant(config: "RouterConfig", request: "ChatRequest", *, timeouts: "Timeouts | None" = None,
                     name: str | None = None) -> Contestant:
    """The router (``orchestrate.router``): each run is a :class:`RoutedRun`, on providers shared
    by all its runs (every model it can route to, warmed first). Its routing cache is its own, in
    memory, with the config's limits: a benchmark neither reads nor changes the person's routes.
    The cold run fills it, so timed runs measure routing with a warm cache."""
    from .router import RoutedRun, open_cache

    cache = open_cache(config, persist=False)
    pool = _pool(list(config.models), timeouts)

    def make(bus: EventBus) -> "Run":
        return RoutedRun(request, config=config, cache=cache, bus=bus, timeouts=timeouts, providers=pool)

    return Contestant(name or "route", make, "route", warm=_pool_warm(pool), aclose=_pool_close(pool))


# ------------------------------------------------------------------------------------------------
# Measuring one run
# ------------------------------------------------------------------------------------------------


@dataclass
class _StreamFigures:
    first_token: float | None = None
    last_token: float | None = None
    tokens: int = 0
    end: float | None = None
    completed: bool = False


class RunMeter:
    """A bus handler that measures one run from its events (register it before the run starts).

    ``t0`` is when the run started (monotonic, the clock of ``Event.t``)."""

    def __init__(self, t0: float | None = None) -> None:
        self.t0 = t0 if t0 is not None else time.monotonic()
        self.streams: dict[str, _StreamFigures] = {}
        self.order: list[str] = []  # stream ids by first appearance
        self.first_token: float | None = None
        self.retries = 0
        self._last_completed: str | None = None

    def _figures(self, stream_id: str) -> _StreamFigures:
        figures = self.streams.get(stream_id)
        if figures is None:
            figures = self.streams[stream_id] = _StreamFigures()
            self.order.append(stream_id)
        return figures

    def on_event(self, event: Event) -> None:
        kind = type(event)
        if kind is Token:
            figures = self._figures(event.stream_id)
            if figures.first_token is None:
                figures.first_token = event.t
                if self.first_token is None:
                    self.first_token = event.t
            figures.last_token = event.t
            figures.tokens += event.count
        elif kind is StreamStarted:
            self._figures(event.stream_id)
        elif kind is Retrying:
            self.retries += 1
        elif isinstance(event, TERMINAL_EVENTS):
            figures = self._figures(event.stream_id)
            figures.end = event.t
            if kind is Completed:
                figures.completed = True
                self._last_completed = event.stream_id

    @property
    def tokens(self) -> int:
        """Tokens of the answer so far (live, for a progress display)."""
        answer = self.answer
        return answer.tokens if answer is not None else 0

    @property
    def answer(self) -> _StreamFigures | None:
        """The stream that is the answer: the last to complete; else the last one that began."""
        if self._last_completed is not None:
            return self.streams[self._last_completed]
        return self.streams[self.order[-1]] if self.order else None

    def record(self, contestant: str, index: int, state: str, error: StreamchatError | None,
               end: float) -> "RunRecord":
        answer = self.answer
        tokens = answer.tokens if answer is not None else 0
        rate = None
        if answer is not None and answer.first_token is not None and tokens > 1:
            stop = answer.end if answer.end is not None else answer.last_token
            span = (stop or answer.first_token) - answer.first_token
            if span > 0:
                rate = (tokens - 1) / span
        return RunRecord(
            contestant=contestant,
            index=index,
            state=state,
            ttft=self.first_token - self.t0 if self.first_token is not None else None,
            tokens=tokens,
            tokens_per_s=rate,
            duration=max(0.0, end - self.t0),
            streams=len(self.order),
            tokens_all=sum(f.tokens for f in self.streams.values()),
            retries=self.retries,
            error=error,
        )


@dataclass(frozen=True)
class RunRecord:
    """The figures of one run. ``index`` 0 is the contestant's cold (warm-up) run."""

    contestant: str
    index: int
    state: str  # completed | failed | cancelled
    ttft: float | None
    tokens: int
    tokens_per_s: float | None
    duration: float
    streams: int = 1
    tokens_all: int = 0  # over every stream of the run (a pipeline's stages), not only the answer
    retries: int = 0
    error: StreamchatError | None = None

    @property
    def ok(self) -> bool:
        return self.state == "completed"

    def to_dict(self) -> dict[str, Any]:
        return {
            "contestant": self.contestant,
            "run": self.index,
            "state": self.state,
            "ttft_s": self.ttft,
            "tokens": self.tokens,
            "tokens_per_s": self.tokens_per_s,
            "duration_s": self.duration,
            "streams": self.streams,
            "tokens_all_streams": self.tokens_all,
            "retries": self.retries,
            "error": self.error.to_dict() if self.error is not None else None,
        }


@dataclass
class Summary:
    """One contestant's figures over its timed runs (medians and p95 over the completed ones)."""

    name: str
    kind: str
    runs: int  # timed runs that ended (completed or failed)
    ok: int
    failed: int
    ttft: Distribution | None
    tokens_per_s: Distribution | None
    duration: Distribution | None
    tokens: Distribution | None
    retries: int
    #: error kind → the failed runs of that kind, most frequent first
    errors: dict[str, list[RunRecord]] = field(default_factory=dict)
    cold: RunRecord | None = None

    @property
    def error_rate(self) -> float | None:
        return self.failed / self.runs if self.runs else None

    @property
    def all_failed(self) -> bool:
        return self.runs > 0 and self.ok == 0

    @property
    def main_error(self) -> StreamchatError | None:
        """The most frequent error (the first of its kind), if any run failed."""
        for records in self.errors.values():
            return records[0].error
        return None


def summarise(contestant: Contestant, records: list[RunRecord], cold: RunRecord | None = None) -> Summary:
    ended = [r for r in records if r.state in ("completed", "failed")]
    done = [r for r in ended if r.ok]
    failed = [r for r in ended if not r.ok]
    by_kind: dict[str, list[RunRecord]] = {}
    for kind, _ in Counter(r.error.kind if r.error else "error" for r in failed).most_common():
        by_kind[kind] = [r for r in failed if (r.error.kind if r.error else "error") == kind]
    return Summary(
        name=contestant.name,
        kind=contestant.kind,
        runs=len(ended),
        ok=len(done),
        failed=len(failed),
        ttft=Distribution.of(r.ttft for r in done if r.ttft is not None),
        tokens_per_s=Distribution.of(r.tokens_per_s for r in done if r.tokens_per_s is not None),
        duration=Distribution.of(r.duration for r in done),
        tokens=Distribution.of(float(r.tokens) for r in done),
        retries=sum(r.retries for r in ended),
        errors=by_kind,
        cold=cold,
    )


# ------------------------------------------------------------------------------------------------
# The benchmark
# ------------------------------------------------------------------------------------------------


class Bench:
    """Runs ``runs`` timed runs of every contestant, round-robin, one run at a time.

    ``on_run_start(contestant, index, meter)`` and ``on_run_end(record)`` let a front end show
    progress (``index`` 0 is the cold run). :meth:`stop` (Ctrl+C) cancels the run in progress
    and starts no other; :meth:`run` then returns what was measured so far."""

    def __init__(
        self,
        contestants: list[Contestant],
        runs: int,
        *,
        warmup: bool = True,
        on_run_start: Callable[[Contestant, int, RunMeter], Any] | None = None,
        on_run_end: Callable[[RunRecord], Any] | None = None,
    ) -> None:
        if runs < 1:
            raise ValueError("a benchmark needs at least one run per contestant")
        if not contestants:
            raise ValueError("a benchmark needs at least one contestant")
        if len({c.name for c in contestants}) != len(contestants):
            raise ValueError("contestants need distinct names")
        self.contestants = contestants
        self.runs = runs
        self.warmup = warmup
        self.on_run_start = on_run_start
        self.on_run_end = on_run_end
        self.records: dict[str, list[RunRecord]] = {c.name: [] for c in contestants}
        self.cold: dict[str, RunRecord] = {}
        #: every finished run in the order it ran (cold runs included)
        self.history: list[RunRecord] = []
        #: the run that stop() cut short, if any (counted nowhere)
        self.interrupted: RunRecord | None = None
        self.stopped = False
        self._current: "Run | None" = None

    def stop(self) -> None:
        """Cancel the run in progress and start no other."""
        self.stopped = True
        current = self._current
        if current is not None and not current.done:
            current.cancel()

    async def prepare(self) -> None:
        """Warm every contestant (SDK import, client, a local model). A StreamchatError here —
        no API key, say — is raised: nothing has been sent yet."""
        for contestant in self.contestants:
            if contestant.warm is not None:
                await contestant.warm()

    async def run(self) -> list[Summary]:
        """Prepare, then the cold runs, then the timed rounds. Returns the summaries."""
        await self.prepare()
        rounds = ([0] if self.warmup else []) + list(range(1, self.runs + 1))
        for index in rounds:
            for contestant in self.contestants:
                if self.stopped:
                    return self.summaries()
                await self._one(contestant, index)
        return self.summaries()

    async def _one(self, contestant: Contestant, index: int) -> RunRecord:
        bus = EventBus()
        meter = RunMeter()
        bus.register(meter)
        error: StreamchatError | None = None
        run = contestant.make(bus)
        self._current = run
        if self.on_run_start is not None:
            self.on_run_start(contestant, index, meter)
        meter.t0 = time.monotonic()
        try:
            await run.run()
            state, error = run.state, run.error
        except StreamchatError as exc:  # an orchestrator that raises rather than failing its run
            state, error = "failed", exc
        except Exception as exc:  # a bug in a contestant: say so in its row, go on with the others
            log.exception("bench run of %s crashed", contestant.name)
            state, error = "failed", StreamchatError(f"internal error in {contestant.name}: {exc!r}")
        finally:
            self._current = None
        end = time.monotonic()
        await _close(run)
        if state not in ("completed", "failed", "cancelled"):  # a Run that returned before its end
            state = "failed"
            error = error or StreamchatError(f"{contestant.name} returned while still {run.state}")
        if state == "failed" and error is None:
            error = StreamchatError("failed without saying why")
        record = meter.record(contestant.name, index, state, error, end)
        if state == "cancelled" and self.stopped:
            self.interrupted = record
        else:
            self.history.append(record)
            if index == 0:
                self.cold[contestant.name] = record
            else:
                self.records[contestant.name].append(record)
        if self.on_run_end is not None:
            self.on_run_end(record)
        return record

    def summaries(self) -> list[Summary]:
        return [summarise(c, self.records[c.name], self.cold.get(c.name)) for c in self.contestants]

    async def aclose(self) -> None:
        for contestant in self.contestants:
            if contestant.aclose is not None:
                try:
                    await contestant.aclose()
                except Exception:  # closing must not hide the results
                    log.debug("closing %s failed", contestant.name, exc_info=True)


async def _close(run: "Run") -> None:
    """Orchestrators that make providers per run (a pipeline, the router) close them in ``aclose``."""
    close = getattr(run, "aclose", None)
    if close is None:
        return
    try:
        await close()
    except Exception:  # closing is best effort; the figures are already taken
        log.debug("closing a run of %s failed", getattr(run, "id", "?"), exc_info=True)


def exit_code(summaries: list[Summary]) -> int:
    """0 when every contestant completed at least one timed run; otherwise the exit code of the
    most frequent error of the first contestant (in the order given) whose every run failed — so a
    script can tell "one side is broken" (and how: 3 auth, 4 rate limited …) from "one side had
    some errors" (exit 0; the error rate is in the table)."""
    for summary in summaries:
        if summary.all_failed:
            error = summary.main_error
            return error.exit_code if error is not None else 1
    return 0
