"""The history through the command line: ``streamchat ask`` (recording, ``--continue``,
``--conversation``, ``--resume``, ``--no-history``), ``resume``, ``history …`` and ``stats``, each a
real ``python -m streamchat`` process against the loopback wire server and a real SQLite file.

Includes the hard cases: ``kill -9`` in the middle of a slow answer (the partial is read back, and
at most a moment of it is lost), resuming after a restart, and two processes recording at once.
The Ollama SDK is used where any provider would do: it imports fastest.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from conftest import cli_env
from streamchat.core.errors import ConnectionLostError
from streamchat.core.request import ChatRequest
from streamchat.core.stream import Stream
from streamchat.history import EXIT_HISTORY, HistoryRecorder, HistoryStore
from streamchat.history.render import to_markdown
from streamchat.providers import create_provider
from streamchat.testing.wire import CUTOFF_CONTINUATION, CUTOFF_FIRST, NORMAL_TOKENS, WireServer

from test_history_store import hold_lock, release

NORMAL_TEXT = "".join(NORMAL_TOKENS)
pytestmark = pytest.mark.timeout(90)


def env_for(server: WireServer, tmp_path: Path) -> dict[str, str]:
    """``cli_env``, with a terminal width that keeps rich from wrapping what the tests look for."""
    return cli_env(server, tmp_path, {"COLUMNS": "250"})


def home(tmp_path: Path) -> Path:
    return tmp_path / "streamchat-home"  # what cli_env and provider_env use


def streamchat(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamchat", *args], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def run_all(env: dict[str, str], *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess]:
    """Independent commands at once (each process mostly starts up: two cores, a few at a time)."""
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda args: streamchat(env, *args), commands))


def one_error_line(result: subprocess.CompletedProcess) -> str:
    err = result.stderr
    assert "Traceback" not in err and err.startswith("error: ") and err.count("\n") == 1, result
    return err


def chat_requests(server: WireServer, model: str) -> list[Any]:
    return [r for r in list(server.requests)
            if r.method == "POST" and isinstance(r.body, dict) and r.body.get("model") == model]


def turns(request: Any) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in request.body["messages"]]


def start(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "streamchat", *args], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def read_until(proc: subprocess.Popen, enough: Any, limit: float = 30) -> list[tuple[float, bytes]]:
    """Read stdout (with arrival times) until ``enough(chunks)`` or EOF."""
    chunks: list[tuple[float, bytes]] = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        data = os.read(proc.stdout.fileno(), 65536)
        if not data:
            break
        chunks.append((time.monotonic(), data))
        if enough(chunks):
            break
    return chunks


# ------------------------------------------------------------------------------------------------
# kill -9


def test_kill_9_mid_answer_loses_at_most_a_moment(server: WireServer, tmp_path: Path) -> None:
    server.slow_tokens = 250  # 10 s at 25 tokens/s: killed long before the end
    env = env_for(server, tmp_path)
    proc = start(env, "ask", "-m", "ollama:slow", "tell me slowly")
    try:
        chunks = read_until(proc, lambda c: c[-1][0] - c[0][0] >= 1.3)  # 1.3 s of answer
        proc.kill()  # SIGKILL: no handler, no flush, no goodbye
        killed_at = time.monotonic()
        proc.wait(10)
        rest = proc.stdout.read()  # what it wrote before dying and we had not read yet
    finally:
        if proc.poll() is None:
            proc.kill()
    printed = (b"".join(data for _, data in chunks) + rest).decode()
    full = "".join(server.tokens_for("slow"))
    assert proc.returncode == -signal.SIGKILL and printed and full.startswith(printed)

    with HistoryStore(home(tmp_path) / "history.db") as store:
        conversation = store.last_conversation()
        question, answer = store.messages(conversation.id)
    assert question.text == "tell me slowly"
    assert answer.state == "cut_off" and answer.resumable and conversation.last_state == "cut_off"
    assert answer.text and printed.startswith(answer.text)
    # The loss window: everything printed a second before the kill is stored (the writer commits
    # every 0.1 s; the bound is loose for a loaded machine — the benchmark measures the real one).
    before = b"".join(data for t, data in chunks if t <= killed_at - 1.0).decode()
    assert len(answer.text) >= len(before) > 0, (len(answer.text), len(before), len(printed))

    shown, listed = run_all(env, ("history", "show", "last"), ("history", "list"))
    assert shown.returncode == 0, shown
    assert "✂ cut off" in shown.stdout and "Continue it with streamchat resume --conversation 1." in shown.stdout
    assert "cut off" in listed.stdout


# ------------------------------------------------------------------------------------------------
# resume, continue


def test_resume_after_a_restart_joins_the_answer(server: WireServer, tmp_path: Path) -> None:
    env = env_for(server, tmp_path)
    first = streamchat(env, "ask", "-m", "ollama:cutoff", "The primary colours of light?")
    assert first.returncode == ConnectionLostError.exit_code and first.stdout == CUTOFF_FIRST + "\n", first
    shown = streamchat(env, "history", "show", "last")
    assert "⚠ failed" in shown.stdout and "Continue it with streamchat resume --conversation 1." in shown.stdout, shown

    resumed = streamchat(env, "ask", "--continue", "--resume")  # a new process: only the history knows
    assert resumed.returncode == 0, resumed
    assert resumed.stdout == CUTOFF_FIRST + CUTOFF_CONTINUATION + "\n"  # the partial, then the rest
    assert resumed.stderr == "using ollama:cutoff (as in conversation 1)\n"
    original, continuation = chat_requests(server, "cutoff")
    assert turns(original) == [("user", "The primary colours of light?")]
    assert turns(continuation) == [("user", "The primary colours of light?"), ("assistant", CUTOFF_FIRST)]

    with HistoryStore(home(tmp_path) / "history.db") as store:
        answer = store.messages(1)[-1]
        records = store.streams(message_id=answer.id)
    assert (answer.state, answer.text) == ("complete", CUTOFF_FIRST + CUTOFF_CONTINUATION)
    assert [(r.continues, r.state, r.error_kind) for r in records] == [
        (False, "failed", ConnectionLostError.kind), (True, "complete", None)]

    again = streamchat(env, "resume")
    assert again.returncode == 2 and "nothing to resume" in one_error_line(again)


def test_continue_sends_the_earlier_turns(server: WireServer, tmp_path: Path) -> None:
    env = env_for(server, tmp_path)
    assert streamchat(env, "ask", "-m", "ollama:normal", "-s", "Be brief.", "first question").returncode == 0
    second = streamchat(env, "ask", "-c", "second question")  # the model and system prompt go on too
    assert second.returncode == 0 and second.stdout == NORMAL_TEXT + "\n", second
    assert second.stderr == "using ollama:normal (as in conversation 1)\n"
    third = streamchat(env, "ask", "--conversation", "1", "-m", "ollama:echo", "third question")
    assert third.returncode == 0 and third.stdout == "third question\n", third

    first_req, second_req = chat_requests(server, "normal")
    (third_req,) = chat_requests(server, "echo")
    assert turns(first_req) == [("system", "Be brief."), ("user", "first question")]
    assert turns(second_req) == [("system", "Be brief."), ("user", "first question"), ("assistant", NORMAL_TEXT),
                                 ("user", "second question")]
    assert turns(third_req) == turns(second_req)[:] + [("assistant", NORMAL_TEXT), ("user", "third question")]

    with HistoryStore(home(tmp_path) / "history.db") as store:
        (conversation,) = store.conversations()
        assert conversation.message_count == 6 and conversation.last_model == "ollama:echo"

    missing, both, prompt_too = run_all(
        env, ("ask", "--conversation", "7", "-m", "ollama:normal", "hi"),
        ("ask", "--no-history", "-c", "-m", "ollama:normal", "hi"), ("ask", "--resume", "a prompt"))
    assert missing.returncode == 2 and "no conversation 7" in one_error_line(missing) and missing.stdout == ""
    assert both.returncode == 2 and "--no-history" in one_error_line(both)
    assert prompt_too.returncode == 2 and "no prompt" in one_error_line(prompt_too)


def test_no_history_writes_nothing(server: WireServer, tmp_path: Path) -> None:
    env = env_for(server, tmp_path)
    done = streamchat(env, "ask", "--no-history", "-m", "ollama:normal", "hi")
    assert done.returncode == 0 and done.stdout == NORMAL_TEXT + "\n" and done.stderr == ""
    assert not (home(tmp_path) / "history.db").exists()
    nothing = streamchat(env, "resume")
    assert nothing.returncode == 2 and "no conversation" in one_error_line(nothing)


# ------------------------------------------------------------------------------------------------
# history …, stats


async def test_history_and_stats_commands(server: WireServer, provider_env: dict, tmp_path: Path) -> None:
    # Three conversations recorded in this process with real streams: complete, failed, cut off.
    store = HistoryStore()
    recorder = HistoryRecorder(store)
    for model in ("ollama:normal", "ollama:error-mid", "ollama:drop-mid"):
        provider = create_provider(model)
        cid = store.create_conversation(f"about {model}")
        store.add_message(cid, "user", f"about {model}")
        stream = Stream(provider, ChatRequest.from_prompt("hi"))
        recorder.attach(stream.bus).track(stream, conversation_id=cid)
        await stream.run()
        await provider.aclose()
    await recorder.aclose()
    env = env_for(server, tmp_path)
    out = tmp_path / "two.json"

    reads = {
        "list": ("history", "list"),
        "list json": ("history", "list", "--json"),
        "show": ("history", "show", "2"),
        "md": ("history", "export", "1", "--format", "md"),
        "json": ("history", "export", "last", "--format", "json", "-o", str(out)),
        "search": ("history", "search", "LOOPBACK"),
        "stats": ("stats",),
        "stats json": ("stats", "--json"),
        "missing": ("history", "show", "99"),
    }
    done = dict(zip(reads, run_all(env, *reads.values())))
    missing = done.pop("missing")
    assert missing.returncode == 2 and missing.stdout == "" and "no conversation 99" in one_error_line(missing)
    for key, result in done.items():
        assert result.returncode == 0 and result.stderr == "", (key, result)

    rows = {line.split()[0]: line for line in done["list"].stdout.splitlines()[1:]}
    assert set(rows) == {"1", "2", "3"} and "failed" in rows["2"] and "complete" in rows["1"]
    listed = json.loads(done["list json"].stdout)
    assert [(c["id"], c["last_state"]) for c in listed] == [(3, "failed"), (2, "failed"), (1, "complete")]
    partial = "".join(server.tokens_for("error-mid"))
    assert "⚠ failed" in done["show"].stdout and partial in done["show"].stdout
    with HistoryStore() as reader:
        assert done["md"].stdout == to_markdown(reader.conversation(1), reader.messages(1))
        exported = reader.export(3)
    assert json.loads(out.read_text()) == exported
    found = [line.split()[0] for line in done["search"].stdout.splitlines()[1:]]
    assert sorted(found) == ["1", "2", "3"] and "loopback" in done["search"].stdout  # any case matches

    stats_text = done["stats"].stdout
    for needle in ("ollama:normal", "ollama:error-mid", "TTFT median", "time to first token", "tokens/s", "█",
                   "errors: provider 1 (100%)", "errors: connection 1 (100%)"):
        assert needle in stats_text, (needle, stats_text)
    figures = {s["model"]: s for s in json.loads(done["stats json"].stdout)}
    assert set(figures) == {"ollama:normal", "ollama:error-mid", "ollama:drop-mid"}
    normal = figures["ollama:normal"]
    assert normal["ended"]["complete"] == 1 and normal["error_rate"] == 0
    assert normal["ttft_s"]["count"] == 1 and normal["ttft_s"]["median"] > 0
    assert sum(b[2] for b in normal["histograms"]["ttft_s"]) == 1
    assert figures["ollama:error-mid"]["errors"] == {"provider": {"count": 1, "rate": 1.0}}

    imported, deleted = run_all(env, ("history", "import", str(out)), ("history", "delete", "1"))
    assert imported.returncode == 0 and imported.stdout == "imported as conversation 4 (2 messages)\n", imported
    assert deleted.returncode == 0 and deleted.stdout == "deleted conversation 1 (2 messages)\n", deleted
    again = streamchat(env, "history", "export", "4", "--format", "json")
    reimported = json.loads(again.stdout)
    assert reimported["conversation"].pop("id") == 4 and exported["conversation"].pop("id") == 3
    assert reimported == exported  # the round trip through the command line
    with HistoryStore() as reader:
        assert [c.id for c in reader.conversations()] == [4, 3, 2]
        assert len(reader.model_stats("ollama:normal")) == 1  # the figures stay
    store.close()


# ------------------------------------------------------------------------------------------------
# a history that cannot be used


def test_a_history_that_cannot_be_used_gives_one_line_and_stays_as_it_was(server: WireServer, tmp_path: Path) -> None:
    """Damaged, from a newer streamchat, locked by another program: each is one line, exit code 7,
    and the file is not changed. (Three histories, their commands run at once.)"""
    env = {name: env_for(server, tmp_path / name) for name in ("damaged", "newer", "locked")}
    damaged, newer, locked = (home(tmp_path / name) / "history.db" for name in env)
    damaged.write_bytes(b"SQLite format 2\x00 - or rather, a scribbled-over file\n" * 100)
    HistoryStore(newer).close()
    db = sqlite3.connect(newer, isolation_level=None)
    db.execute("INSERT INTO schema_migrations VALUES (99, 'm099_future', 'x')")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    HistoryStore(locked).close()
    before = {path: path.read_bytes() for path in (damaged, newer)}
    holder = hold_lock(locked, "exclusive")
    try:
        with ThreadPoolExecutor(5) as pool:
            runs = {key: pool.submit(streamchat, env[name], *args) for key, name, args in (
                ("damaged list", "damaged", ("history", "list")),
                ("damaged ask", "damaged", ("ask", "-m", "ollama:normal", "hi")),
                ("damaged ask --no-history", "damaged", ("ask", "--no-history", "-m", "ollama:normal", "hi")),
                ("newer list", "newer", ("history", "list")),
                ("locked list", "locked", ("history", "list")),
            )}
            done = {key: run.result() for key, run in runs.items()}
    finally:
        release(holder)

    for key in ("damaged list", "damaged ask"):
        result = done[key]
        assert result.returncode == EXIT_HISTORY and result.stdout == "", result
        message = one_error_line(result)
        assert "damaged" in message and str(damaged) in message and "--no-history" in message
    assert len(chat_requests(server, "normal")) == 1  # the ask that failed sent nothing; --no-history did
    assert done["damaged ask --no-history"].returncode == 0
    assert done["damaged ask --no-history"].stdout == NORMAL_TEXT + "\n"
    assert sorted(p.name for p in damaged.parent.iterdir() if p.name.startswith("history")) == ["history.db"]
    assert done["newer list"].returncode == EXIT_HISTORY and "newer streamchat" in one_error_line(done["newer list"])
    assert done["locked list"].returncode == EXIT_HISTORY
    assert "locked by another program" in one_error_line(done["locked list"])
    for path, data in before.items():
        assert path.read_bytes() == data


def test_two_processes_recording_at_once(server: WireServer, tmp_path: Path) -> None:
    """Two ``ask`` processes stream into one blank history (racing to create it) while this process
    writes conversations of its own as fast as it can."""
    server.slow_tokens = 30  # 1.2 s each
    env = env_for(server, tmp_path)
    procs = [start(env, "ask", "-m", "ollama:slow", f"question {i}") for i in range(2)]
    path = home(tmp_path) / "history.db"
    deadline = time.monotonic() + 30
    written = 0
    with HistoryStore(path, timeout=10) as store:
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            cid = store.create_conversation(f"mine {written}")
            store.add_message(cid, "user", "x" * 100)
            written += 1
        outputs = [p.communicate(timeout=30) for p in procs]
        full = "".join(server.tokens_for("slow"))
        assert [p.returncode for p in procs] == [0, 0], outputs
        assert all(out.decode() == full + "\n" for out, _ in outputs)
        theirs = [c for c in store.conversations(limit=None) if c.title.startswith("question")]
        assert sorted(c.title for c in theirs) == ["question 0", "question 1"]
        for c in theirs:
            assert [(m.role, m.state) for m in store.messages(c.id)] == [("user", "complete"), ("assistant", "complete")]
            assert store.messages(c.id)[1].text == full
        assert len(store.conversations(limit=None)) == written + 2 and written > 10
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
