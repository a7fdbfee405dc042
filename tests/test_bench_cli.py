"""``streamchat bench``: the measuring (``orchestrate.bench``) in-process against the loopback wire
server, the report (``cli.bench.run_bench``) in-process with string outputs, and a few real
``streamchat bench`` processes for what only a process shows (usage errors, Ctrl+C).

Timing is asserted only where the server makes it certain: a "slow" answer cannot end before the
server has slept between its tokens; everything else is counts, order and outcome.
"""

from __future__ import annotations

import asyncio
import io
import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import cli_env
from streamchat.cli.bench import run_bench
from streamchat.config import Settings
from streamchat.core.errors import AuthenticationError, ConfigError
from streamchat.core.request import ChatRequest
from streamchat.orchestrate.bench import Bench, exit_code, model_contestant
from streamchat.testing.wire import WireServer

pytestmark = pytest.mark.timeout(90)


def models(*ids: str) -> list:
    request = ChatRequest.from_prompt("hi", max_tokens=256)
    return [model_contestant(m, request) for m in ids]


async def bench_of(*ids: str, runs: int = 2, **kw) -> tuple[Bench, dict]:
    bench = Bench(models(*ids), runs, **kw)
    try:
        summaries = await bench.run()
    finally:
        await bench.aclose()
    return bench, {s.name: s for s in summaries}


def scenarios(server: WireServer) -> list[str]:
    """The scenario (model name) of every chat request the server received, in order."""
    return [r.body["model"] for r in list(server.requests) if r.method == "POST" and isinstance(r.body, dict)]


async def bench_cli(*ids: str, runs: int = 2, json_mode: bool = False) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await run_bench("hi", settings=Settings(), models=list(ids), pipelines=[], route=False, runs=runs,
                           system=None, timeout=None, max_tokens=None, json_mode=json_mode, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------------------------------------
# Measuring
# ------------------------------------------------------------------------------------------------


async def test_fast_and_slow_model_figures_and_round_robin_order(server, provider_env):
    server.slow_tokens, server.slow_rate = 20, 40.0  # 19 gaps of 25 ms: at least 0.475 s an answer
    bench, s = await bench_of("openai:normal", "anthropic:slow", runs=2)
    fast, slow = s["openai:normal"], s["anthropic:slow"]

    # A B (cold), then A B, A B — one request at a time, interleaved
    assert scenarios(server) == ["normal", "slow"] * 3
    assert [(r.contestant, r.index) for r in bench.history] == [
        ("openai:normal", 0), ("anthropic:slow", 0), ("openai:normal", 1), ("anthropic:slow", 1),
        ("openai:normal", 2), ("anthropic:slow", 2)]
    # the cold run is kept apart: two timed runs each
    assert fast.cold is not None and fast.cold.index == 0 and fast.cold.ok
    assert (fast.runs, fast.ok, fast.failed, fast.error_rate) == (2, 2, 0, 0.0)
    assert (slow.runs, slow.ok, slow.failed, slow.error_rate) == (2, 2, 0, 0.0)

    for record in bench.history:
        scenario = "normal" if record.contestant == "openai:normal" else "slow"
        assert record.tokens == len(server.tokens_for(scenario))
        assert record.state == "completed" and record.error is None and record.streams == 1
        assert record.ttft is not None and 0 < record.ttft <= record.duration
    assert [r.tokens for r in bench.history] == [15, 20] * 3

    # the slow one streams at the server's pace: lower tokens/s, and no answer before the gaps passed
    assert slow.tokens_per_s.median < fast.tokens_per_s.median
    assert slow.tokens_per_s.high < 40.0 * 3
    assert slow.duration.low >= 19 / 40.0 - 0.01
    assert fast.ttft.count == 2 and fast.tokens.median == 15
    assert exit_code(list(s.values())) == 0


async def test_erroring_contestants_have_full_error_rates_and_do_not_stop_the_others(server, provider_env):
    bench, s = await bench_of("openai:401", "openai:500", "ollama:error-mid", "openai:normal", runs=2,
                              warmup=False)
    assert scenarios(server) == ["401", "500", "error-mid", "normal"] * 2
    ok = s["openai:normal"]
    assert (ok.runs, ok.ok, ok.error_rate) == (2, 2, 0.0)
    for name, kind in (("openai:401", "auth"), ("openai:500", "provider"), ("ollama:error-mid", "provider")):
        summary = s[name]
        assert (summary.runs, summary.ok, summary.failed, summary.error_rate) == (2, 0, 2, 1.0), name
        assert summary.all_failed and list(summary.errors) == [kind]
        assert summary.ttft is None and summary.tokens_per_s is None  # medians are of completed runs
        assert summary.cold is None
    # an error in the middle of the answer keeps what came before it in the run's figures
    mid = [r for r in bench.history if r.contestant == "ollama:error-mid"]
    assert [r.tokens for r in mid] == [5, 5] and all(r.ttft is not None for r in mid)
    assert "500" in str(s["openai:500"].main_error)
    # the exit code is that of the first contestant whose every run failed: 401 → authentication
    assert exit_code(list(s.values())) == AuthenticationError.exit_code == 3


async def test_stop_cancels_the_run_in_progress_and_keeps_what_ran(server, provider_env):
    server.slow_tokens, server.slow_rate = 400, 40.0  # 10 s: it is stopped long before

    async def stop_when_streaming(meter):
        while meter.tokens < 3:
            await asyncio.sleep(0.01)
        bench.stop()

    tasks = []

    def started(contestant, index, meter):
        if contestant.name == "openai:slow":
            tasks.append(asyncio.ensure_future(stop_when_streaming(meter)))

    bench = Bench(models("openai:normal", "openai:slow"), 3, warmup=False, on_run_start=started)
    try:
        summaries = {x.name: x for x in await bench.run()}
    finally:
        await bench.aclose()
    assert bench.stopped
    assert scenarios(server) == ["normal", "slow"]  # nothing started after the stop
    assert bench.interrupted is not None and bench.interrupted.state == "cancelled"
    assert 3 <= bench.interrupted.tokens < 400
    assert [(r.contestant, r.index) for r in bench.history] == [("openai:normal", 1)]
    assert summaries["openai:slow"].runs == 0 and summaries["openai:normal"].ok == 1
    deadline = time.monotonic() + 10  # the server notices at its next write
    while not server.responses()[-1].client_gone:
        assert time.monotonic() < deadline, "the stopped answer's response was not closed"
        await asyncio.sleep(0.02)


# ------------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------------


async def test_piped_table_and_exit_code(server, provider_env):
    code, out, err = await bench_cli("openai:normal", "ollama:error-mid", runs=2)
    assert code == 1  # every run of error-mid failed: its error's exit code
    assert err == "error: every run of ollama:error-mid failed\n"
    assert "\x1b[" not in out and "━" not in out  # piped: no colours, no progress bar
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["contestant", "runs", "ok", "errors"]
    assert "TTFT median" in lines[0] and "tok/s median" in lines[0] and "cold TTFT" in lines[0]
    rows = {line.split()[0]: line.split() for line in lines[1:3]}
    assert rows["openai:normal"][1:5] == ["2", "2", "0", "(0%)"]
    assert rows["ollama:error-mid"][1:5] == ["2", "0", "2", "(100%)"]
    assert rows["ollama:error-mid"][5:] == ["-"] * 4 + ["failed"]
    assert lines[3].startswith("ollama:error-mid: 2 of 2 runs failed (provider): ollama reported an error")
    assert len(lines) == 4


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_on_a_terminal_a_progress_bar_then_a_boxed_table(server, provider_env, monkeypatch):
    monkeypatch.setenv("COLUMNS", "150")
    out, err = Terminal(), Terminal()
    code = await run_bench("hi", settings=Settings(), models=["openai:normal", "openai:500"], pipelines=[],
                           route=False, runs=2, system=None, timeout=None, max_tokens=None, json_mode=False,
                           out=out, err=err)
    assert code == 1
    progress = err.getvalue()
    assert "openai:normal" in progress and "openai:500" in progress and "━" in progress  # the bars
    assert progress.rstrip().endswith("error: every run of openai:500 failed")
    table = out.getvalue()
    assert "─" in table and "contestant" in table and "\x1b[" in table  # a rule under the header, colours
    assert "2 (100%)" in table


async def test_json_has_every_run_and_the_summary(server, provider_env):
    code, out, err = await bench_cli("openai:normal", "openai:normal", runs=2, json_mode=True)
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["order"] == ["openai:normal", "openai:normal #2"]  # an A/A run shows the noise
    assert (data["runs_per_contestant"], data["warmup"], data["interrupted"]) == (2, True, False)
    first = data["contestants"][0]
    assert {k: first[k] for k in ("name", "kind", "runs", "ok", "failed", "error_rate", "errors")} == {
        "name": "openai:normal", "kind": "model", "runs": 2, "ok": 2, "failed": 0, "error_rate": 0.0,
        "errors": {}}
    assert set(first["ttft_s"]) == {"count", "median", "p95", "min", "max"}
    assert first["tokens"]["median"] == 15 and first["tokens_per_s"]["count"] == 2
    assert first["cold"]["run"] == 0 and first["cold"]["state"] == "completed"
    runs = data["runs"]
    assert [(r["contestant"], r["run"]) for r in runs] == [
        ("openai:normal", 0), ("openai:normal #2", 0), ("openai:normal", 1), ("openai:normal #2", 1),
        ("openai:normal", 2), ("openai:normal #2", 2)]
    assert set(runs[0]) == {"contestant", "run", "state", "ttft_s", "tokens", "tokens_per_s", "duration_s",
                            "streams", "tokens_all_streams", "retries", "error"}


async def test_json_errors_say_kind_code_and_message(server, provider_env):
    code, out, err = await bench_cli("openai:500", runs=1, json_mode=True)
    assert code == 1 and err == "error: every run of openai:500 failed\n"
    data = json.loads(out)
    errors = data["contestants"][0]["errors"]
    assert list(errors) == ["provider"] and errors["provider"]["count"] == 1
    assert errors["provider"]["exit_code"] == 1 and "HTTP 500" in errors["provider"]["message"]
    assert [r["error"]["kind"] for r in data["runs"]] == ["provider", "provider"]


@pytest.mark.parametrize("bad", ["nonsense", "nope:model"])
async def test_a_bad_model_id_stops_before_anything_is_sent(server, provider_env, bad):
    with pytest.raises(ConfigError):
        await bench_cli("openai:normal", bad)
    assert scenarios(server) == []


async def test_a_missing_key_stops_before_anything_is_sent(server, provider_env, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(AuthenticationError, match="ANTHROPIC_API_KEY"):
        await bench_cli("openai:normal", "anthropic:normal")
    assert scenarios(server) == []


# ------------------------------------------------------------------------------------------------
# The command
# ------------------------------------------------------------------------------------------------


def streamchat(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamchat", "bench", *args], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)


def test_bad_input_is_one_line_and_exit_2(server, tmp_path: Path):
    env = cli_env(server, tmp_path)
    with ThreadPoolExecutor(2) as pool:
        bad_model, no_model = pool.map(lambda args: streamchat(env, *args),
                                       [("-m", "openai:normal", "-m", "bogus", "hi"), ("hi",)])
    for result, says in ((bad_model, "'bogus' is not of the form PROVIDER:MODEL"), (no_model, "nothing to measure")):
        assert result.returncode == 2, result
        assert result.stdout == "" and "Traceback" not in result.stderr
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1 and says in result.stderr
    assert scenarios(server) == []


def test_ctrl_c_prints_the_table_of_what_ran_and_exits_130(server, tmp_path: Path):
    server.slow_tokens, server.slow_rate = 40, 40.0  # 1 s a run
    proc = subprocess.Popen([sys.executable, "-m", "streamchat", "bench", "-m", "openai:slow", "-n", "5", "--no-warmup",
                             "hi"],
                            env=cli_env(server, tmp_path), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while len(scenarios(server)) < 2:  # the first run is done, the second under way
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err == "cancelled after 1 timed run\n"
    lines = out.splitlines()
    assert lines[0].startswith("contestant") and "cold TTFT" not in lines[0]  # --no-warmup: no cold run
    assert lines[1].split()[:5] == ["openai:slow", "1", "1", "0", "(0%)"]
    assert lines[2] == "(stopped early: 1 of 5 timed runs)"
    assert len(scenarios(server)) == 2  # nothing started after Ctrl+C


# ------------------------------------------------------------------------------------------------
# Strategies: a pipeline and the router as contestants
# ------------------------------------------------------------------------------------------------

STRATEGY_SETTINGS = dict(
    pipelines={"ab": {"stages": [{"name": "draft", "model": "anthropic:normal"},
                                 {"name": "refine", "model": "openai:slow"}]}},
    router={"tiers": {"fast": "openai:multibyte", "best": "anthropic:long"}},  # "hi" is simple: fast
)


async def test_a_pipeline_and_the_router_are_measured_like_a_model(server, provider_env):
    server.slow_tokens, server.slow_rate = 12, 40.0
    out, err = io.StringIO(), io.StringIO()
    code = await run_bench("hi", settings=Settings(**STRATEGY_SETTINGS), models=["ollama:echo"], pipelines=["ab"],
                           route=True, runs=2, system=None, timeout=None, max_tokens=None, json_mode=True,
                           out=out, err=err)
    assert (code, err.getvalue()) == (0, "")
    data = json.loads(out.getvalue())
    assert data["order"] == ["ollama:echo", "pipeline:ab", "route"]
    # round-robin, a pipeline run being its two stages one after the other
    assert scenarios(server) == ["echo", "normal", "slow", "multibyte"] * 3
    kinds = {c["name"]: c["kind"] for c in data["contestants"]}
    assert kinds == {"ollama:echo": "model", "pipeline:ab": "pipeline", "route": "route"}
    for c in data["contestants"]:
        assert (c["runs"], c["ok"], c["error_rate"]) == (2, 2, 0.0), c
    pipeline_runs = [r for r in data["runs"] if r["contestant"] == "pipeline:ab"]
    multibyte = len(server.tokens_for("multibyte"))
    for r in pipeline_runs:
        # the answer is the refine stage's; the first token was the draft's
        assert (r["streams"], r["tokens"], r["tokens_all_streams"]) == (2, 12, 15 + 12)
        assert r["ttft_s"] <= r["duration_s"] - 11 / 40.0  # long before the refinement could end
    for r in (r for r in data["runs"] if r["contestant"] == "route"):
        assert (r["streams"], r["tokens"], r["state"]) == (1, multibyte, "completed")


async def test_an_unknown_pipeline_stops_before_anything_is_sent(server, provider_env):
    with pytest.raises(ConfigError, match="unknown pipeline 'nope'"):
        await run_bench("hi", settings=Settings(**STRATEGY_SETTINGS), models=["openai:normal"], pipelines=["nope"],
                        route=False, runs=1, system=None, timeout=None, max_tokens=None, json_mode=False,
                        out=io.StringIO(), err=io.StringIO())
    assert scenarios(server) == []
