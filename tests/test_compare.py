"""``streamchat compare``: N lanes on one question, in parallel, over real loopback HTTP (each SDK
parsing the wire server's real format), the merge strategies' decisions, the comparison
(similarity, cost), the history, and the command line (in-process for the output shapes, plus a
few real processes: a terminal, Ctrl+C, a usage error).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli_env

from streamchat.cli.compare import run_compare
from streamchat.config import Settings
from streamchat.core.bus import EventBus
from streamchat.core.errors import ConfigError, ProviderError
from streamchat.core.events import (
    Cancelled,
    Completed,
    Failed,
    Progress,
    StreamStarted,
    Token,
)
from streamchat.core.request import ChatRequest
from streamchat.history import HistoryStore
from streamchat.orchestrate import Run
from streamchat.orchestrate.compare import STRATEGIES, Compare, MergeState, similarity
from streamchat.orchestrate.cost import cost_of, format_cost, price_of
from streamchat.providers import create_provider
from streamchat.testing.terminal import run_on_terminal
from streamchat.testing.wire import NORMAL_TOKENS

NORMAL_TEXT = "".join(NORMAL_TOKENS)
pytestmark = pytest.mark.timeout(90)


def ready(*model_ids: str):
    """Providers with their SDK imported and client made (so waits below time only the streams)."""
    providers = [create_provider(m) for m in model_ids]
    for provider in providers:
        provider.prepare()
    return providers


def compare_of(*model_ids: str, **kw) -> tuple[Compare, list]:
    """A Compare over ``model_ids`` and a list that every event on its bus is appended to."""
    bus = EventBus()
    seen: list = []
    bus.register(type("Log", (), {"on_event": lambda self, e: seen.append(e)})())
    return Compare(ready(*model_ids), ChatRequest.from_prompt("hi"), bus=bus, **kw), seen


async def wait_for(predicate, timeout=20.0, interval=0.01):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)


def lane_tokens(events, lane):
    return [e for e in events if isinstance(e, Token) and e.lane == lane]


# ------------------------------------------------------------------------------------------------
# Lanes in parallel


async def test_lanes_really_overlap_in_time(server, provider_env):
    server.slow_tokens = 40  # ~1.6 s each at 25 tokens/s
    compare, seen = compare_of("openai:slow", "anthropic:slow")
    snapshots = await compare.run()
    assert [s.state for s in snapshots] == ["completed", "completed"]
    assert [s.lane for s in snapshots] == ["1", "2"]
    first_end = next(i for i, e in enumerate(seen) if isinstance(e, Completed))
    before = seen[:first_end]
    # both lanes had streamed several tokens before either completed
    assert sum(e.count for e in lane_tokens(before, "1")) >= 5
    assert sum(e.count for e in lane_tokens(before, "2")) >= 5
    assert snapshots[0].text == snapshots[1].text == "".join(server.tokens_for("slow"))


async def test_a_fast_lane_is_not_delayed_by_a_slow_one_and_one_lane_can_be_cancelled(server, provider_env):
    # lane 2 gets its response head, then nothing at all: lane 1 must still finish, at its pace
    compare, seen = compare_of("anthropic:normal", "openai:stall-start")
    task = asyncio.ensure_future(compare.run())
    await wait_for(lambda: compare.lane("1").stream.done)
    stalled = compare.lane(2).stream
    assert compare.lane("1").stream.state == "completed" and compare.lane("1").stream.text == NORMAL_TEXT
    assert not stalled.done and stalled.stats().tokens == 0
    assert compare.state == "active"
    assert compare.cancel("2")
    snapshots = await asyncio.wait_for(task, 15)
    assert [s.state for s in snapshots] == ["completed", "cancelled"]
    assert compare.state == "completed" and compare.error is None and not compare.cancelled
    assert [type(e) for e in seen if e.lane == "2" and not isinstance(e, Token)] == [StreamStarted, Cancelled]


async def test_a_failing_lane_does_not_stop_the_others(server, provider_env):
    compare, _ = compare_of("openai:error-mid", "anthropic:500", "ollama:normal")
    snapshots = await compare.run()
    assert [s.state for s in snapshots] == ["failed", "failed", "completed"]
    assert snapshots[0].text  # the partial before the error is kept
    assert snapshots[2].text == NORMAL_TEXT
    assert compare.state == "completed" and compare.error is None
    table = compare.comparison()
    assert [r.state for r in table.lanes] == ["failed", "failed", "completed"]
    assert table.lanes[1].error and "HTTP 500" in table.lanes[1].error


async def test_when_every_lane_fails_the_error_is_the_first_lanes(server, provider_env):
    compare, _ = compare_of("anthropic:500", "openai:error-mid")
    await compare.run()
    assert compare.state == "failed"
    assert compare.error is compare.lane("1").stream.error
    assert isinstance(compare.error, ProviderError) and "HTTP 500" in str(compare.error)


async def test_pause_and_resume_one_lane_or_all(server, provider_env):
    server.slow_tokens = 40
    compare, _ = compare_of("openai:slow", "anthropic:slow")
    task = asyncio.ensure_future(compare.run())
    one, two = compare.lane("1").stream, compare.lane("2").stream
    await wait_for(lambda: one.stats().tokens >= 3 and two.stats().tokens >= 3)
    assert compare.pause("1") and one.state == "paused" and two.state == "active"
    assert compare.state == "active"  # one lane still streams
    at_pause = one.stats().tokens
    await wait_for(lambda: two.done)
    assert two.state == "completed" and not one.done
    assert one.stats().tokens <= at_pause + 2  # at most what was already on its way
    assert compare.state == "paused"  # every live lane is paused
    assert compare.resume() and one.state == "active"
    snapshots = await asyncio.wait_for(task, 20)
    assert [s.state for s in snapshots] == ["completed", "completed"]
    assert not compare.pause()  # nothing left to pause


async def test_cancel_all_keeps_the_partials(server, provider_env):
    server.slow_tokens = 200
    compare, seen = compare_of("openai:slow", "anthropic:slow")
    task = asyncio.ensure_future(compare.run())
    await wait_for(lambda: all(lane.stream.stats().tokens >= 2 for lane in compare.lanes))
    assert compare.cancel()
    snapshots = await asyncio.wait_for(task, 15)
    assert [s.state for s in snapshots] == ["cancelled", "cancelled"]
    assert all(s.text for s in snapshots) and compare.state == "cancelled" and compare.cancelled
    ends = [e for e in seen if isinstance(e, Cancelled)]
    assert sorted(e.lane for e in ends) == ["1", "2"] and all(e.partial for e in ends)


async def test_on_stream_sees_every_stream_before_it_starts_and_providers_are_closed(server, provider_env):
    compare, seen = compare_of("openai:normal", "ollama:normal")
    assert isinstance(compare, Run) and compare.state == "pending"
    before: list[tuple[str, int]] = []
    compare.on_stream = lambda stream: before.append((stream.lane, len(seen)))
    await compare.run()
    assert before == [("1", 0), ("2", 0)]
    assert all(lane.provider._client is None for lane in compare.lanes)


async def test_fastest_then_best_shows_the_fast_lane_then_the_preferred_one(server, provider_env):
    server.slow_tokens, server.slow_rate = 6, 4.0  # the first token after 0.25 s, the last after 1.5 s
    compare, seen = compare_of("anthropic:normal", "openai:slow", merge="fastest-then-best", prefer="openai:slow")
    assert compare.preferred.name == "2" and [lane.priority for lane in compare.lanes] == [1, 0]
    await compare.run()
    assert compare.merge.changes == [("1", "fastest"), ("2", "the preferred answer is complete")]
    assert compare.merge.shown == "2" and compare.text == compare.lane("2").stream.text
    progress = [e for e in seen if isinstance(e, Progress)]
    assert [(e.lane, e.stream_id) for e in progress] == [("1", compare.id), ("2", compare.id)]
    assert "openai:slow" in progress[1].message


async def test_bad_input_is_refused_before_anything_streams(server, provider_env):
    request = ChatRequest.from_prompt("hi")
    with pytest.raises(ConfigError, match="two or more"):
        Compare(["openai:normal"], request)
    with pytest.raises(ConfigError, match="side-by-side, first-token-wins, fastest-then-best"):
        Compare(["openai:normal", "ollama:normal"], request, merge="best-of")
    with pytest.raises(ConfigError, match="unknown provider"):
        Compare(["openai:normal", "nope:model"], request)
    with pytest.raises(ConfigError, match="--prefer"):
        Compare(["openai:normal", "ollama:normal"], request, prefer="anthropic:normal")
    with pytest.raises(ConfigError, match="no lane 3"):
        Compare(["openai:normal", "ollama:normal"], request).pause("3")
    assert not [r for r in server.requests if r.method == "POST"]


# ------------------------------------------------------------------------------------------------
# The merge strategies' decisions (pure)


def tok(lane, text="x"):
    return Token(stream_id=f"s{lane}", lane=lane, text=text, index=0)


def done(lane, text="x"):
    return Completed(stream_id=f"s{lane}", lane=lane, text=text)


def failed(lane):
    return Failed(stream_id=f"s{lane}", lane=lane, error=ProviderError("boom"))


def test_side_by_side_shows_every_lane_and_never_switches():
    merge = MergeState("side-by-side", ["1", "2", "3"])
    events = [tok("2"), tok("1"), done("2"), failed("1"), tok("3"), done("3")]
    assert [merge.feed(e) for e in events] == [None] * len(events)
    assert merge.shown is None and merge.visible == ("1", "2", "3") and merge.first_tokens == ["2", "1", "3"]


def test_first_token_wins_keeps_the_first_lane_to_answer():
    merge = MergeState("first-token-wins", ["1", "2", "3"], labels={"2": "ollama:x"}, source_id="c1")
    assert merge.feed(Token(stream_id="s2", lane="2", text="", index=0)) is None  # no text: no answer yet
    assert merge.visible == ()
    progress = merge.feed(tok("2"))
    assert isinstance(progress, Progress) and progress.lane == "2" and progress.stream_id == "c1"
    assert progress.message == "showing lane 2 (ollama:x): first to answer"
    assert [merge.feed(e) for e in (tok("1"), done("1"), tok("2"), done("2"), tok("3"))] == [None] * 5
    assert merge.shown == "2" and merge.visible == ("2",)


def test_first_token_wins_falls_back_when_the_shown_lane_fails():
    merge = MergeState("first-token-wins", ["1", "2", "3"])
    merge.feed(tok("3"))
    merge.feed(tok("1"))
    merge.feed(tok("2"))
    progress = merge.feed(failed("3"))
    assert progress is not None and merge.shown == "1" and merge.reason == "lane 3 failed"
    assert merge.feed(failed("2")) is None  # not the shown lane


def test_fastest_then_best_switches_to_the_preferred_lane_once_it_completes():
    merge = MergeState("fastest-then-best", ["1", "2", "3"], preferred="1")
    assert merge.feed(tok("3")).lane == "3"
    assert merge.feed(tok("1")) is None
    assert merge.feed(done("3")) is None  # the fast lane completing changes nothing
    assert merge.feed(done("1")).lane == "1"
    assert merge.changes == [("3", "fastest"), ("1", "the preferred answer is complete")]
    assert merge.feed(done("2")) is None and merge.shown == "1"


def test_fastest_then_best_edge_cases():
    merge = MergeState("fastest-then-best", ["1", "2"], preferred="2")
    merge.feed(tok("2"))  # the preferred lane is also the fastest: nothing more to switch
    assert merge.feed(done("2")) is None and merge.changes == [("2", "fastest")]

    merge = MergeState("fastest-then-best", ["1", "2"], preferred="2")
    merge.feed(tok("1"))
    assert merge.feed(done("2", text="")) is None  # an empty answer is not the best one
    assert merge.shown == "1"

    merge = MergeState("fastest-then-best", ["1", "2", "3"], preferred="3")
    merge.feed(tok("1"))
    merge.feed(tok("2"))
    merge.feed(tok("3"))
    assert merge.feed(failed("1")).lane == "3"  # the fast lane failed: the preferred one, which has text
    assert merge.feed(failed("3")).lane == "2"


def test_unknown_strategy():
    with pytest.raises(ConfigError) as info:
        MergeState("fastest", ["1", "2"])
    assert all(name in str(info.value) for name in STRATEGIES)


# ------------------------------------------------------------------------------------------------
# Similarity and cost


def test_similarity():
    assert similarity("The cat sat on the mat.", "The cat sat on the mat.") == 1.0
    assert similarity("the cat sat", "a dog ran") == 0.0
    assert similarity("The CAT, sat!", "the cat sat") == 1.0  # case and punctuation do not count
    assert similarity("", "") == 1.0 and similarity("words", "") == 0.0
    assert similarity("one two three four", "one two three five") == pytest.approx(0.75)
    assert 0 < similarity("red green blue", "blue green red") < 1  # order counts


def test_cost():
    usage = {"input_tokens": 1_000_000, "output_tokens": 2_000_000}
    assert cost_of("anthropic", "claude-haiku-4-5", usage) == pytest.approx(1.0 + 10.0)
    assert cost_of("openai", "gpt-4o-mini-2024-07-18", usage) == pytest.approx(0.15 + 1.2)  # dated name
    assert price_of("openai", "gpt-4o") == (2.50, 10.00)  # not gpt-4o-mini's, nor gpt-4.1's
    assert cost_of("openai", "slow", usage) is None  # unknown model
    assert cost_of("anthropic", "claude-haiku-4-5", None) is None  # no usage reported
    assert cost_of("ollama", "llama3.2:1b", None) == 0.0 and cost_of("local", "smollm2", usage) == 0.0
    assert [format_cost(c) for c in (None, 0.0, 0.000042, 1.5)] == ["—", "$0", "$0.000042", "$1.5000"]


# ------------------------------------------------------------------------------------------------
# The command, in-process (stdout is not a terminal here: the piped output)


async def compare_cli(*models, **kw) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    options = dict(settings=Settings(), models=list(models), out=out, err=err)
    options.update(kw)
    code = await run_compare("What is streaming?", **options)
    return code, out.getvalue(), err.getvalue()


async def test_piped_output_has_every_lane_the_table_and_the_history(server, provider_env):
    server.slow_tokens = 20
    code, out, err = await compare_cli("openai:slow", "anthropic:normal", "ollama:500")
    assert code == 0, err
    slow = "".join(server.tokens_for("slow"))
    # fastest first: each answer under its header as it ends
    assert out.index("── lane 2 · anthropic:normal · completed ──\n" + NORMAL_TEXT + "\n") < \
        out.index("── lane 1 · openai:slow (preferred) · completed ──\n" + slow + "\n")
    assert "── lane 3 · ollama:500 · failed ──" in out
    table = out[out.index("lane  model"):].splitlines()
    assert table[1].split()[:2] == ["1*", "openai:slow"] and table[1].split()[-1] == "ref"
    assert table[2].split()[:2] == ["2", "anthropic:normal"]
    assert table[3].split()[:2] == ["3", "ollama:500"] and "failed" in table[3]
    assert "word-level difflib ratio" in out
    assert err.startswith("error: lane 3 (ollama:500): ") and err.count("\n") == 1

    with HistoryStore(Path(provider_env["STREAMCHAT_HOME"]) / "history.db") as store:
        conversation = store.last_conversation()
        messages = store.messages(conversation.id)
    assert [(m.role, m.lane) for m in messages[:1]] == [("user", None)] and messages[0].text == "What is streaming?"
    answers = {m.lane: m for m in messages[1:]}
    assert len(messages) == 4 and set(answers) == {"1", "2", "3"}
    assert answers["1"].text == slow and answers["1"].model_id == "openai:slow"
    assert answers["2"].text == NORMAL_TEXT and answers["3"].state == "failed"


async def test_piped_first_token_wins_streams_only_the_shown_lane(server, provider_env):
    code, out, err = await compare_cli("openai:stall-start", "ollama:normal", merge="first-token-wins",
                                       history=False, timeout=1.5)
    # lane 1 never answers and runs out of time; lane 2 completed, so the command succeeds
    assert code == 0, err
    assert out.startswith("── lane 2 · ollama:normal · first to answer ──\n" + NORMAL_TEXT + "\n")
    assert "lane 1 · openai:stall-start (preferred) ·" not in out  # only in the table
    assert "2>" in out and "timed out" in err


async def test_json_lines_are_tagged_by_lane_and_end_with_the_comparison(server, provider_env):
    code, out, err = await compare_cli("openai:normal", "anthropic:normal", json_mode=True, history=False,
                                       merge="first-token-wins")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    *events, last = lines
    assert {e["lane"] for e in events} == {"1", "2"}
    assert {e["type"] for e in events} >= {"start", "token", "complete", "progress"}
    # (the merge's "now showing lane N" progress is published from a task: it may follow the end)
    assert [e["type"] for e in events if e["lane"] == "1" and e["type"] != "progress"][-1] == "complete"
    assert last["type"] == "comparison" and last["strategy"] == "first-token-wins"
    assert [r["lane"] for r in last["lanes"]] == ["1", "2"]
    assert all(r["state"] == "completed" and r["tokens"] == 15 for r in last["lanes"])
    assert last["lanes"][1]["agreement"] == 1.0 and last["preferred"] == "1"
    assert last["shown"] in ("1", "2") and last["similarity"] == "word-level difflib ratio"


async def test_every_lane_failing_gives_the_first_lanes_exit_code(server, provider_env):
    code, _, err = await compare_cli("anthropic:401", "openai:500", history=False)
    assert code == 3  # authentication: lane 1's error
    assert err.splitlines()[0].startswith("error: lane 1 (anthropic:401): authentication failed")
    assert len(err.splitlines()) == 2


async def test_cli_bad_input_is_a_config_error(server, provider_env):
    with pytest.raises(ConfigError, match="two or more"):
        await compare_cli("openai:normal")
    with pytest.raises(ConfigError, match="choose one of side-by-side"):
        await compare_cli("openai:normal", "ollama:normal", merge="nope")
    with pytest.raises(ConfigError, match="not of the form"):
        await compare_cli("openai:normal", "gpt-4o")


# ------------------------------------------------------------------------------------------------
# Real processes


def streamchat_args(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamchat", *args]


def test_on_a_terminal_the_lanes_show_live_then_the_table(server, tmp_path):
    env = cli_env(server, tmp_path, {"COLUMNS": "120", "LINES": "30"})
    code, screen, err = run_on_terminal(
        streamchat_args("compare", "hi", "-m", "openai:normal", "-m", "ollama:normal", "--no-history"), env,
        timeout=60)
    assert code == 0, (screen, err)
    assert "Traceback" not in screen + err and err == ""
    assert "1 · openai:normal ★" in screen and "2 · ollama:normal" in screen
    assert screen.count("Hello! This is the loopback wire server") >= 2
    for column in ("ttft", "tok/s", "agree", "ref"):
        assert column in screen


def test_ctrl_c_cancels_every_lane_keeps_the_partials_and_exits_130(server, tmp_path):
    server.slow_tokens = 1000  # 40 s: far longer than the test
    env = cli_env(server, tmp_path)
    proc = subprocess.Popen(streamchat_args("compare", "tell me", "-m", "ollama:slow", "-m", "openai:normal"),
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        seen = b""
        deadline = time.monotonic() + 30
        while b"lane 2 \xc2\xb7 openai:normal" not in seen and time.monotonic() < deadline:
            data = os.read(proc.stdout.fileno(), 65536)
            if not data:
                break
            seen += data
        assert b"lane 2" in seen, seen
        time.sleep(0.5)  # lane 1 streams on
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = (seen + rest).decode()
    assert proc.returncode == 130, (out, err)
    assert "── lane 1 · ollama:slow (preferred) · cancelled ──\n" in out
    partial = out.split("· cancelled ──\n")[1].split("\n")[0]
    assert partial and "".join(server.tokens_for("slow")).startswith(partial)
    assert "cancelled" in out[out.index("lane  model"):]
    assert err.decode().endswith("cancelled (the partial answers are kept)\n") and b"Traceback" not in err
    with HistoryStore(tmp_path / "streamchat-home" / "history.db") as store:
        messages = store.messages(store.last_conversation().id)
    states = {m.lane: m.state for m in messages if m.role == "assistant"}
    assert states == {"1": "cancelled", "2": "complete"}
    assert next(m.text for m in messages if m.lane == "1") == partial


def test_an_unknown_merge_strategy_is_one_line_and_exit_2(server, tmp_path):
    result = subprocess.run(streamchat_args("compare", "hi", "-m", "openai:normal", "-m", "ollama:normal",
                                            "--merge", "best"),
                            env=cli_env(server, tmp_path), stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: unknown merge strategy 'best': choose one of side-by-side, ")
    assert result.stderr.count("\n") == 1
