"""The router: the local analysis, tiers from the config, the LRU+TTL routing cache (memory and
file), RoutedRun against the loopback wire server (progress in order, the answer, a validation
retry on a better tier) and the command line (``ask --route``, ``route stats``, ``route clear``).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DEAD_OLLAMA_HOST, cli_env

from streamchat.config import Settings
from streamchat.core.bus import EventBus
from streamchat.core.errors import ConfigError
from streamchat.core.events import Progress, StreamStarted, Token
from streamchat.core.request import ChatRequest
from streamchat.orchestrate import Run
from streamchat.orchestrate.route_cache import RouteCache, RouteCacheError, cache_key
from streamchat.orchestrate.router import (
    RoutedRun,
    analyse,
    check_answer,
    default_tiers,
    parse_router,
    router_config,
)
from streamchat.testing.wire import NORMAL_TOKENS, WireServer

NORMAL_TEXT = "".join(NORMAL_TOKENS)
TRACEBACK = """Why does my script crash?

Traceback (most recent call last):
  File "app.py", line 12, in <module>
    main()
  File "app.py", line 8, in main
    print(config["port"])
KeyError: 'port'
"""


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Events:
    """A bus handler that keeps every event, in order."""

    def __init__(self, bus: EventBus) -> None:
        self.events: list = []
        bus.register(self)

    def on_event(self, event) -> None:
        self.events.append(event)

    def progress(self) -> list[str]:
        return [e.message for e in self.events if isinstance(e, Progress)]


# ------------------------------------------------------------------------------------------------
# analyse


def test_analyse_spreads_questions_over_complexity_and_category():
    hi, capital = analyse("hi"), analyse("What's the capital of France?")
    assert (hi.complexity, hi.category) == (1, "chat")
    assert capital.complexity <= 2 and capital.category == "chat"

    crash = analyse(TRACEBACK)
    assert crash.category == "code" and "traceback" in crash.cues
    assert crash.complexity >= hi.complexity + 3

    proof = analyse("Prove that there are infinitely many primes.")
    assert proof.category == "math" and "proof" in proof.cues and proof.complexity >= 7

    design = analyse("Design a rate limiter that must be thread-safe and scale to many nodes. Compare token "
                     "bucket and sliding window and explain the trade-offs step by step.")
    assert design.category == "reasoning" and design.complexity >= 6

    assert analyse("Write a haiku about autumn").category == "creative"
    code = analyse("Write a Python function that parses ISO dates")
    assert code.category == "code" and "asks for code" in code.cues
    # longer questions weigh more; brevity weighs less
    assert analyse("Explain clearly why the sky is blue").complexity > analyse("Explain briefly why the sky is blue").complexity
    assert analyse("hello " * 700).complexity > hi.complexity
    # pure: the same text, the same analysis
    assert analyse(TRACEBACK) == crash


def test_check_answer_flags_incomplete_answers():
    chat, code, hard = analyse("hi"), analyse("Write a Python function that reverses a list"), analyse(
        "Prove that there are infinitely many primes.")
    assert check_answer("", chat) == "empty"
    assert check_answer("x", chat, state="failed").startswith("it failed")
    assert check_answer("I'm sorry, but I can't help with that.", chat) == "a refusal"
    assert check_answer("Yes.", hard) is not None  # far too short for complexity 8
    assert check_answer("Use the reversed built-in, it is simple and fast.", code) == "no code in it"
    assert check_answer("```python\ndef rev(xs):\n    return xs[::-1]\n```", code) is None
    assert check_answer("Hello! How can I help?", chat) is None


# ------------------------------------------------------------------------------------------------
# configuration


def test_tiers_bands_and_categories_pick_the_model():
    config = parse_router({"tiers": {"fast": "ollama:a", "balanced": "openai:b", "best": "anthropic:c"}})
    assert [(t.name, t.floor) for t in config.tiers] == [("fast", 1), ("balanced", 4), ("best", 7)]
    assert config.route(analyse("hi")) == ("ollama:a", "tier fast")
    assert config.route(analyse(TRACEBACK))[0] == "openai:b"
    assert config.route(analyse("Prove that there are infinitely many primes."))[0] == "anthropic:c"
    assert config.better("ollama:a") == "openai:b" and config.better("anthropic:c") is None

    banded = parse_router({"tiers": {"best": "anthropic:c", "fast": "ollama:a"}, "bands": {"fast": 1, "best": 3},
                           "categories": {"creative": "best", "code": "openai:x"}, "cache_size": 5,
                           "cache_ttl": 60, "validate": True})
    assert [t.name for t in banded.tiers] == ["fast", "best"]  # ordered by band, not as written
    assert banded.tier_for(2).name == "fast" and banded.tier_for(3).name == "best"
    assert banded.route(analyse("Write a haiku about autumn")) == ("anthropic:c", "category creative")
    assert banded.route(analyse(TRACEBACK)) == ("openai:x", "category code")
    assert banded.better("openai:x") == "anthropic:c"  # a category's model: then the best tier
    assert (banded.cache_size, banded.cache_ttl, banded.validate) == (5, 60.0, True)


@pytest.mark.parametrize("table, key", [
    ({"tiers": {"fast": "local:smollm2"}, "tier": {}}, "router.tier"),
    ({"tiers": {"fast": "smollm2"}}, "router.tiers.fast"),
    ({"tiers": {"best": "nosuch:model"}}, "router.tiers.best"),
    ({"tiers": {"fast": 3}}, "router.tiers.fast"),
    ({"tiers": {}}, "router.tiers"),
    ({"tiers": {"fast": "local:smollm2"}, "bands": {"fast": 11}}, "router.bands.fast"),
    ({"tiers": {"fast": "local:smollm2", "best": "openai:x"}, "bands": {"fast": 1}}, "router.bands"),
    ({"tiers": {"fast": "local:smollm2"}, "bands": {"slow": 2}}, "router.bands.slow"),
    ({"tiers": {"fast": "local:smollm2"}, "categories": {"poetry": "fast"}}, "router.categories.poetry"),
    ({"tiers": {"fast": "local:smollm2"}, "categories": {"code": "better"}}, "router.categories.code"),
    ({"tiers": {"fast": "local:smollm2"}, "cache_size": 0}, "router.cache_size"),
    ({"tiers": {"fast": "local:smollm2"}, "cache_ttl": "1h"}, "router.cache_ttl"),
    ({"tiers": {"fast": "local:smollm2"}, "validate": "yes"}, "router.validate"),
])
async def test_config_errors_name_the_key(table, key):
    settings = Settings(router=table, source=Path("/x/config.toml"))
    with pytest.raises(ConfigError) as caught:
        await router_config(settings)
    message = str(caught.value)
    assert f"{key} " in message or f"{key}:" in message, message
    assert message.startswith("/x/config.toml: ") and "\n" not in message


async def test_builtin_tiers_follow_what_is_set_up(provider_env, monkeypatch):
    # keys for both clouds, Ollama (the wire server) answering: a cheap, a middle and a best model
    tiers, reason = await default_tiers()
    assert tiers[0].model.startswith("ollama:")
    assert [t.model for t in tiers[1:]] == ["anthropic:claude-haiku-4-5", "anthropic:claude-sonnet-4-6"]
    assert "ANTHROPIC_API_KEY" in reason and "Ollama" in reason
    # offline: everything goes to the embedded model
    for name in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("OLLAMA_HOST", DEAD_OLLAMA_HOST)
    config = await router_config(Settings())
    assert {t.model for t in config.tiers} == {"local:smollm2"}
    assert "local:smollm2" in config.source


# ------------------------------------------------------------------------------------------------
# the cache


def test_cache_hit_miss_expiry_and_stats():
    clock = Clock()
    cache = RouteCache(None, size=10, ttl=60, clock=clock)
    key = cache_key("Hello   World", 1, "chat")
    assert key == cache_key("hello world", 1, "chat") != cache_key("hello world", 2, "chat")
    assert cache.get(key) is None
    cache.put(key, "openai:a", complexity=1, category="chat")
    clock.t += 59
    assert cache.get(key).model == "openai:a"
    assert cache.get(key).hits == 2
    cache.put(key, "openai:a", complexity=1, category="chat")  # the same route again keeps its age
    clock.t += 2  # 61 s after it was stored: gone
    assert cache.get(key) is None and len(cache) == 0
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["size"], stats["max_size"], stats["ttl"]) == (2, 2, 0, 10, 60)
    assert stats["models"] == {"openai:a": {"routes": 0, "hits": 2}} and stats["hit_rate"] == 0.5


def test_cache_evicts_the_least_recently_used_and_clears():
    cache = RouteCache(None, size=2, clock=Clock())
    a, b, c = (cache_key(t, 1, "chat") for t in "abc")
    cache.put(a, "m:a", complexity=1, category="chat")
    cache.put(b, "m:b", complexity=1, category="chat")
    assert cache.get(a) is not None  # a is now the most recent: b goes first
    cache.put(c, "m:c", complexity=1, category="chat")
    assert [e.model for e in cache.entries()] == ["m:a", "m:c"]
    assert cache.get(b) is None
    assert cache.clear() == 2
    assert len(cache) == 0 and cache.stats()["hits"] == 0 and cache.stats()["misses"] == 0


def test_cache_persists_across_instances_and_processes(tmp_path):
    path, clock = tmp_path / "route-cache.json", Clock()
    first = RouteCache(path, clock=clock)
    key = cache_key("q", 3, "code")
    first.put(key, "ollama:x", complexity=3, category="code")
    first.get(key)
    second = RouteCache(path, clock=clock)  # another streamchat, later
    assert second.get(key).model == "ollama:x"
    assert second.stats()["models"]["ollama:x"] == {"routes": 1, "hits": 2}
    other = cache_key("other", 1, "chat")
    second.put(other, "openai:y", complexity=1, category="chat")
    assert first.get(other).model == "openai:y"  # re-read: the file changed under it
    assert RouteCache(path, size=1, clock=clock).stats()["size"] == 1  # smaller limit: LRU trimmed
    assert not list(tmp_path.glob(".route-cache-*"))  # no temp files left behind
    assert json.loads(path.read_text())["version"] == 1


def test_a_damaged_cache_file_is_one_line_and_routing_goes_on(tmp_path):
    path = tmp_path / "route-cache.json"
    path.write_text("{not json")
    cache = RouteCache(path)
    assert cache.problem is not None and "damaged" in cache.problem and "\n" not in cache.problem
    key = cache_key("q", 1, "chat")
    assert cache.get(key) is None
    cache.put(key, "m:a", complexity=1, category="chat")  # memory only now
    assert cache.get(key).model == "m:a" and path.read_text() == "{not json"
    assert cache.take_problem() == cache.problem and cache.take_problem() is None  # said once
    with pytest.raises(RouteCacheError):
        cache.check()
    path.write_text(json.dumps({"version": 1, "entries": [{"key": "k"}]}))
    assert "damaged" in RouteCache(path).problem  # JSON, but not a cache
    cache = RouteCache(path)
    cache.clear()  # starts it afresh
    assert cache.problem is None and RouteCache(path).problem is None


# ------------------------------------------------------------------------------------------------
# RoutedRun on the wire


def wire_config(**table):
    return parse_router({"tiers": {"fast": "openai:normal", "balanced": "ollama:normal", "best": "anthropic:slow"},
                         **table})


async def test_routed_run_publishes_progress_then_the_answer(provider_env):
    cache = RouteCache(None)
    bus = EventBus()
    seen = Events(bus)
    started: list[str] = []
    run = RoutedRun(ChatRequest.from_prompt("hi"), config=wire_config(), cache=cache, bus=bus,
                    on_stream=lambda stream: started.append(stream.state))
    assert isinstance(run, Run) and run.state == "pending"
    snapshot = await run.run()
    await run.aclose()
    assert run.state == "completed" and run.text == NORMAL_TEXT == snapshot.text
    assert run.model_id == "openai:normal" and not run.cached and run.analysis.complexity == 1
    assert started == ["pending"]  # on_stream saw the stream before it started
    kinds = [type(e).__name__ for e in seen.events]
    assert kinds[:3] == ["Progress", "Progress", "StreamStarted"] and kinds[-2:] == ["Completed", "Progress"]
    assert seen.progress()[:2] == ["🔍 Analysing…", "🎯 Routed to openai:normal (complexity 1, chat)"]
    assert seen.progress()[-1].startswith("✅ done in ")
    start = next(e for e in seen.events if isinstance(e, StreamStarted))
    assert (start.provider, start.model) == ("openai", "normal")

    # the same question again: the cached route
    again = RoutedRun(ChatRequest.from_prompt("Hi"), config=wire_config(), cache=cache)
    seen_again = Events(again.bus)
    await again.run()
    await again.aclose()
    assert again.cached and again.model_id == "openai:normal" and again.text == NORMAL_TEXT
    assert seen_again.progress()[:3] == ["🔍 Analysing…", "💾 cached route",
                                         "🎯 Routed to openai:normal (complexity 1, chat)"]
    assert cache.stats()["models"]["openai:normal"]["hits"] == 1


async def test_validation_retries_on_a_better_tier(provider_env, server):
    config = parse_router({"tiers": {"fast": "openai:empty", "best": "anthropic:normal"}, "validate": True})
    cache = RouteCache(None)
    run = RoutedRun(ChatRequest.from_prompt("hi"), config=config, cache=cache)
    seen = Events(run.bus)
    await run.run()
    await run.aclose()
    assert run.state == "completed" and run.text == NORMAL_TEXT and run.model_id == "anthropic:normal"
    assert [(s.provider.name, s.state, s.text) for s in run.streams] == [
        ("openai", "completed", ""), ("anthropic", "completed", NORMAL_TEXT)]
    assert run.rejected == [("openai:empty", "empty")]
    progress = seen.progress()
    assert progress[1] == "🎯 Routed to openai:empty (complexity 1, chat)"
    assert progress[2] == "🔁 answer looked incomplete (empty); retrying on anthropic:normal"
    order = [e.message if isinstance(e, Progress) else type(e).__name__ for e in seen.events
             if not isinstance(e, Token)]
    assert order.index("🔁 answer looked incomplete (empty); retrying on anthropic:normal") == order.index("Completed") + 1
    # the route that worked is remembered: next time straight to the better tier
    entry = cache.entries()[0]
    assert entry.model == "anthropic:normal"
    # without validation the empty answer is the answer
    plain = RoutedRun(ChatRequest.from_prompt("hello"), config=parse_router(
        {"tiers": {"fast": "openai:empty", "best": "anthropic:normal"}}), cache=RouteCache(None))
    await plain.run()
    await plain.aclose()
    assert plain.state == "completed" and plain.text == "" and len(plain.streams) == 1


async def test_routed_run_pauses_and_cancels_its_stream(provider_env, server):
    server.slow_rate, server.slow_tokens = 20, 200
    config = parse_router({"tiers": {"fast": "ollama:slow"}})
    run = RoutedRun(ChatRequest.from_prompt("hi"), config=config, cache=RouteCache(None))
    task = asyncio.ensure_future(run.run())
    for _ in range(500):
        if run.text:
            break
        await asyncio.sleep(0.01)
    assert run.pause() and run.state == "paused" and run.current.state == "paused"
    assert run.resume() and run.state == "active"
    assert run.cancel()
    await asyncio.wait_for(task, 10)
    await run.aclose()
    assert run.state == "cancelled" and run.text and not run.cancel()
    assert len(run.cache) == 0  # a cancelled answer teaches the cache nothing


# ------------------------------------------------------------------------------------------------
# the command line


def streamchat(env, *args, timeout=60):
    return subprocess.run([sys.executable, "-m", "streamchat", *args], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(90)
def test_cli_ask_route_stats_and_clear(server: WireServer, tmp_path):
    env = cli_env(server, tmp_path)
    home = Path(env["STREAMCHAT_HOME"])
    (home / "config.toml").write_text(
        '[router]\ntiers = { fast = "ollama:normal", best = "ollama:echo" }\n', encoding="utf-8")
    first = streamchat(env, "ask", "--route", "hi")
    assert first.returncode == 0, first.stderr
    assert first.stdout == NORMAL_TEXT + "\n"
    lines = first.stderr.splitlines()
    assert lines[:2] == ["🔍 Analysing…", "🎯 Routed to ollama:normal (complexity 1, chat)"]
    assert lines[-1].startswith("✅ done in ") and len(lines) == 3

    again = streamchat(env, "ask", "--route", "--continue", "--json", "hi")
    assert again.returncode == 0, again.stderr
    events = [json.loads(line) for line in again.stdout.splitlines()]
    assert [e["message"] for e in events if e["type"] == "progress"][:3] == [
        "🔍 Analysing…", "💾 cached route", "🎯 Routed to ollama:normal (complexity 1, chat)"]
    assert events[-1]["type"] == "progress" and any(e["type"] == "complete" for e in events)
    sent = [r for r in server.requests if r.scenario == "normal"][-1].body["messages"]  # --continue: context
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]

    stats = streamchat(env, "route", "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    data = json.loads(stats.stdout)
    assert (data["size"], data["hits"], data["misses"], data["max_size"]) == (1, 1, 1, 100)
    assert data["models"] == {"ollama:normal": {"routes": 1, "hits": 1}}

    cleared = streamchat(env, "route", "clear")
    assert (cleared.returncode, cleared.stdout) == (0, "forgot 1 cached route\n")
    from streamchat.history import HistoryStore

    with HistoryStore(home / "history.db") as store:
        conversation = store.last_conversation()
        assert conversation.last_model == "ollama:normal"
        assert [m.role for m in store.messages(conversation.id)] == ["user", "assistant", "user", "assistant"]


async def test_cli_commands_in_process(provider_env, tmp_path):
    """The text of ``route stats``, a bad [router] (ConfigError naming the key: exit 2 in the CLI),
    and a damaged cache file (one line from stats; clear starts it afresh)."""
    import io

    from streamchat.cli.route import run_route_clear, run_route_stats, run_routed_ask

    settings = Settings(router={"tiers": {"fast": "openai:normal"}})
    out, err = io.StringIO(), io.StringIO()
    code = await run_routed_ask("hi", None, settings=settings, system=None, timeout=None, json_mode=False,
                                confidence=False, max_tokens=None, temperature=None, out=out, err=err,
                                continue_last=False, conversation=None)
    assert code == 0 and out.getvalue() == NORMAL_TEXT + "\n"
    out = io.StringIO()
    assert await run_route_stats(settings=settings, json_mode=False, out=out) == 0
    text = out.getvalue()
    assert "1 of 100, each kept for 1 h" in text and "1 misses" in text
    assert any(line.split() == ["openai:normal", "1", "0"] for line in text.splitlines())

    bad = Settings(router={"tiers": {"fast": "openai:normal"}, "cache_size": -1})
    with pytest.raises(ConfigError, match="router.cache_size") as caught:
        await run_routed_ask("hi", None, settings=bad, system=None, timeout=None, json_mode=False,
                             confidence=False, max_tokens=None, temperature=None, out=out, err=err,
                             continue_last=False, conversation=None)
    assert caught.value.exit_code == 2

    cache_file = Path(provider_env["STREAMCHAT_HOME"]) / "route-cache.json"
    cache_file.write_text("garbage")
    with pytest.raises(RouteCacheError, match="damaged"):
        await run_route_stats(settings=settings, json_mode=False, out=io.StringIO())
    out, err = io.StringIO(), io.StringIO()  # an ask still answers, and says so once
    assert await run_routed_ask("hi", None, settings=settings, system=None, timeout=None, json_mode=False,
                                confidence=False, max_tokens=None, temperature=None, out=out, err=err,
                                continue_last=False, conversation=None) == 0
    assert out.getvalue() == NORMAL_TEXT + "\n"
    assert sum("routing cache" in line for line in err.getvalue().splitlines()) == 1
    out = io.StringIO()
    assert await run_route_clear(settings=settings, out=out) == 0
    assert "started afresh" in out.getvalue()
    assert await run_route_stats(settings=settings, json_mode=True, out=io.StringIO()) == 0
