"""The history store on real SQLite files: migrations from a blank file, refusals that leave a file
untouched (newer schema, not ours, damaged, locked), queries, the state of answers whose writer
died, export/import round trips, search, delete, statistics, and writers in other processes."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from streamchat.core.events import StreamStats
from streamchat.core.request import Message
from streamchat.history import (
    MIGRATIONS,
    HistoryCorruptError,
    HistoryError,
    HistoryLockedError,
    HistoryNotFoundError,
    HistorySchemaError,
    HistoryStore,
)
from streamchat.history.errors import EXIT_HISTORY
from streamchat.history.render import to_markdown
from streamchat.history.stats import Distribution, histogram, percentile

ROOT = Path(__file__).resolve().parents[1]


def raw(path: Path) -> sqlite3.Connection:
    """A plain autocommit connection, for looking under the store (or doing what it never would)."""
    return sqlite3.connect(path, isolation_level=None)


def tables(path: Path) -> set[str]:
    db = raw(path)
    try:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        db.close()


def run_python(code: str, *, timeout: float = 30) -> subprocess.CompletedProcess:
    """Python in another process (a real second writer / a process that then exits)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, check=True)


def hold_lock(path: Path, how: str) -> subprocess.Popen:
    """Another process that holds ``path`` locked until its stdin closes. ``how``: "write" (a write
    transaction: readers go on, writers wait) or "exclusive" (nobody else gets in at all)."""
    setup = ("db.execute('PRAGMA locking_mode = EXCLUSIVE'); db.execute('BEGIN EXCLUSIVE')" if how == "exclusive"
             else "db.execute('BEGIN IMMEDIATE')")
    code = f"""
import sqlite3, sys
db = sqlite3.connect({str(path)!r}, isolation_level=None)
{setup}
db.execute("UPDATE conversations SET title = title")
print("held", flush=True)
sys.stdin.read()
db.execute("ROLLBACK")
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def release(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    proc.wait(10)


@pytest.fixture
def store(tmp_path: Path):
    s = HistoryStore(tmp_path / "history.db")
    yield s
    s.close()


# ------------------------------------------------------------------------------------------------
# migrations


@pytest.mark.parametrize("blank", ["missing", "empty file"])
def test_migrations_from_a_blank_file(tmp_path: Path, blank: str) -> None:
    path = tmp_path / "deep" / "history.db"
    if blank == "empty file":
        path.parent.mkdir()
        path.write_bytes(b"")
    with HistoryStore(path) as s:
        applied = s.migrations_applied()
        assert [(v, n) for v, n, _ in applied] == [(m.version, m.name) for m in MIGRATIONS]
        assert s.schema_version == len(MIGRATIONS) >= 2
    assert {"conversations", "messages", "streams", "schema_migrations"} <= tables(path)
    with raw(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with HistoryStore(path) as again:  # opening again applies nothing twice
        assert again.migrations_applied() == applied


def test_an_older_history_is_migrated_keeping_its_data(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)")
    MIGRATIONS[0].apply(db)  # a history written by a streamchat that knew only the first migration
    db.execute("INSERT INTO schema_migrations VALUES (1, ?, '2025-01-01T00:00:00Z')", (MIGRATIONS[0].name,))
    db.execute("INSERT INTO conversations (title, created_at, updated_at) VALUES ('old', 1, 1)")
    db.execute("INSERT INTO messages (conversation_id, role, text, state, created_at, updated_at) "
               "VALUES (1, 'user', 'kept?', 'complete', 1, 1)")
    db.close()
    with HistoryStore(path) as s:
        assert s.schema_version == len(MIGRATIONS)
        assert s.migrations_applied()[0][2] == "2025-01-01T00:00:00Z"  # the old record is untouched
        assert [m.text for m in s.messages(1)] == ["kept?"]
        assert s.streams() == []  # the new table is there


def _snapshot(path: Path) -> bytes:
    return path.read_bytes()


def test_a_newer_schema_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    with HistoryStore(path) as s:
        s.create_conversation("from the future")
    with raw(path) as db:
        db.execute("INSERT INTO schema_migrations VALUES (?, 'm999_time_travel', 'x')", (len(MIGRATIONS) + 1,))
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = _snapshot(path)
    with pytest.raises(HistorySchemaError) as info:
        HistoryStore(path)
    message = str(info.value)
    assert "newer streamchat" in message and "\n" not in message
    assert info.value.exit_code == EXIT_HISTORY
    assert _snapshot(path) == before


def test_an_unknown_migration_name_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    HistoryStore(path).close()
    with raw(path) as db:
        db.execute("UPDATE schema_migrations SET name = 'm001_something_else' WHERE version = 1")
    with pytest.raises(HistorySchemaError, match="unknown schema"):
        HistoryStore(path)


def test_a_database_that_is_not_ours_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    with raw(path) as db:
        db.execute("CREATE TABLE recipes (name TEXT)")
        db.execute("INSERT INTO recipes VALUES ('soup')")
    before = _snapshot(path)
    with pytest.raises(HistoryError, match="not a streamchat history"):
        HistoryStore(path)
    assert _snapshot(path) == before and tables(path) == {"recipes"}


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_file_gives_one_line_and_is_never_rewritten(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "history.db"
    if damage == "garbage":
        path.write_bytes(b"this is not a database, it is a shopping list\n" * 200)
    else:  # a real history whose header survived and whose pages did not
        with HistoryStore(path) as s:
            for i in range(200):
                cid = s.create_conversation(f"conversation {i}")
                s.add_message(cid, "user", "words " * 200)
        with raw(path) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        data = bytearray(path.read_bytes())
        for offset in range(4096, len(data), 4096):  # scribble over the start of every page but the first
            data[offset:offset + 64] = b"\xff" * 64
        path.write_bytes(bytes(data))
    before = _snapshot(path)
    with pytest.raises(HistoryCorruptError) as info:
        with HistoryStore(path) as s:
            s.conversations(limit=None)
            for c in s.conversations(limit=None):
                s.messages(c.id)
    message = str(info.value)
    assert "damaged" in message and "untouched" in message and "\n" not in message
    assert info.value.exit_code == EXIT_HISTORY
    assert _snapshot(path) == before


def test_a_locked_database_says_so_within_the_timeout(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    HistoryStore(path).close()
    holder = hold_lock(path, "exclusive")
    try:
        with pytest.raises(HistoryLockedError) as info:
            HistoryStore(path, timeout=0.3)
        assert "locked" in str(info.value) and "--no-history" in str(info.value)
        assert info.value.retryable
    finally:
        release(holder)
    HistoryStore(path).close()  # and usable again once the other program let go


# ------------------------------------------------------------------------------------------------
# queries


def test_conversations_messages_and_context(store: HistoryStore) -> None:
    cid = store.create_conversation("  Why is\nthe sky blue?  ", system="Be brief.")
    store.add_message(cid, "user", "Why is the sky blue?")
    a1 = store.add_message(cid, "assistant", "Rayleigh scattering.", provider="ollama", model="m")
    store.add_message(cid, "user", "And sunsets?")
    store.add_message(cid, "assistant", "", provider="ollama", model="m", state="failed", error_kind="timeout")
    store.add_message(cid, "user", "Hello?")
    c = store.conversation(cid)
    assert c.title == "Why is the sky blue?" and c.system == "Be brief."
    assert c.message_count == 5 and c.last_state == "failed" and c.last_model == "ollama:m"
    assert store.last_conversation() == c
    # the empty failed answer is left out; the two questions around it become one turn
    assert store.context(cid) == (
        Message("user", "Why is the sky blue?"),
        Message("assistant", "Rayleigh scattering."),
        Message("user", "And sunsets?\n\nHello?"),
    )
    assert store.context(cid, before=a1) == (Message("user", "Why is the sky blue?"),)
    # several answers to one question (stages, lanes, a retry): the last complete one is sent
    store.add_message(cid, "assistant", "A draft.", stage="draft")
    store.add_message(cid, "assistant", "The refined answer.", stage="refine")
    store.add_message(cid, "assistant", "A cut-off lane", lane="2", state="cancelled")
    assert store.context(cid)[-1] == Message("assistant", "The refined answer.")
    with pytest.raises(HistoryNotFoundError):
        store.conversation(cid + 1)
    with pytest.raises(HistoryNotFoundError):
        store.add_message(cid + 1, "user", "nobody")


def test_resume_info(store: HistoryStore) -> None:
    cid = store.create_conversation("q")
    with pytest.raises(HistoryNotFoundError, match="empty"):
        store.resume_info(cid)
    store.add_message(cid, "user", "q1")
    info = store.resume_info(cid)  # a question without an answer: answer it afresh
    assert info.message is None and info.partial == "" and info.context == (Message("user", "q1"),)
    store.add_message(cid, "assistant", "a1", provider="openai", model="x")
    with pytest.raises(HistoryNotFoundError, match="complete"):
        store.resume_info(cid)
    store.add_message(cid, "user", "q2")
    mid = store.add_message(cid, "assistant", "half an ans", provider="anthropic", model="y", state="failed",
                            error_kind="connection", error_message="dropped")
    info = store.resume_info(cid)
    assert info.message.id == mid and info.partial == "half an ans" and info.model_id == "anthropic:y"
    assert info.context == (Message("user", "q1"), Message("assistant", "a1"), Message("user", "q2"))


def test_an_answer_whose_writer_died_reads_cut_off_until_reaped(store: HistoryStore) -> None:
    cid = store.create_conversation("q")
    store.add_message(cid, "user", "q")
    # another process starts an answer, writes some of it, and ends without finishing it
    run_python(f"""
        from streamchat.history import HistoryStore
        s = HistoryStore({str(store.path)!r})
        mid = s.start_answer({cid}, provider="ollama", model="slow")
        s.begin_stream(mid, "s-dead", provider="ollama", model="slow")
        s.append_text(mid, "every word that arrived")
    """)
    (answer,) = [m for m in store.messages(cid) if m.role == "assistant"]
    assert answer.state == "cut_off" and answer.text == "every word that arrived" and answer.resumable
    assert "ended" in answer.error_message
    assert store.conversation(cid).last_state == "cut_off"
    assert store.streams()[0].state == "cut_off"
    with raw(store.path) as db:
        assert db.execute("SELECT state FROM messages WHERE id = ?", (answer.id,)).fetchone()[0] == "streaming"
    assert store.reap() == 1
    with raw(store.path) as db:
        assert db.execute("SELECT state FROM messages WHERE id = ?", (answer.id,)).fetchone()[0] == "cut_off"
        assert db.execute("SELECT state FROM streams").fetchone()[0] == "cut_off"
    assert store.reap() == 0
    # an answer this (living) process writes is streaming, and reaping leaves it alone
    live = store.start_answer(cid, provider="ollama", model="slow")
    assert store.message(live).state == "streaming" and store.reap() == 0


def test_search_matches_any_case_and_takes_wildcards_literally(store: HistoryStore) -> None:
    cid = store.create_conversation("search")
    store.add_message(cid, "user", "What does 100% mean_here?")
    store.add_message(cid, "assistant", "It means " + "all of it. " * 20 + "EVERYTHING, really.",
                      provider="openai", model="x")
    store.add_message(cid, "user", "1000 means something else")
    hits = store.search("everything")
    assert [(h.role, h.model_id) for h in hits] == [("assistant", "openai:x")]
    assert "EVERYTHING" in hits[0].snippet and hits[0].snippet.startswith("…")
    assert [h.role for h in store.search("100%")] == ["user"]  # % is a character, not a wildcard
    assert len(store.search("mean_")) == 1  # _ too
    assert store.search("nowhere") == [] and store.search("  ") == []


def _recorded_conversation(store: HistoryStore) -> int:
    """A conversation with a complete and a cut-off answer and their stream figures."""
    cid = store.create_conversation("colours", system="Be exact.")
    store.add_message(cid, "user", "The primary colours of light?")
    mid = store.start_answer(cid, provider="anthropic", model="cutoff")
    row = store.begin_stream(mid, "s1", provider="anthropic", model="cutoff")
    store.append_text(mid, "Red, green")
    store.finish_answer(mid, state="failed", text="Red, green", error_kind="connection", error_message="dropped")
    store.finish_stream(row, state="failed", error_kind="connection",
                        stats=StreamStats(tokens=3, chars=10, ttft=0.25, tokens_per_s=40.0, elapsed=0.3))
    row = store.begin_stream(mid, "s2", provider="anthropic", model="cutoff", continues="Red, green")
    store.finish_answer(mid, state="complete", text="Red, green and blue.", finish_reason="end_turn")
    store.finish_stream(row, state="complete", stats=StreamStats(tokens=3, chars=10, ttft=0.2, tokens_per_s=50.0,
                                                                 elapsed=0.25, retries=1))
    store.add_message(cid, "user", "Say it in French")
    mid = store.start_answer(cid, provider="ollama", model="slow")
    row = store.begin_stream(mid, "s3", provider="ollama", model="slow")
    store.stream_progress(row, tokens=2, chars=11, ttft=0.5)
    store.finish_answer(mid, state="cancelled", text="Rouge, vert")
    store.finish_stream(row, state="cancelled", stats=StreamStats(tokens=2, chars=11, elapsed=0.6))
    return cid


def test_export_import_round_trip(store: HistoryStore, tmp_path: Path) -> None:
    cid = _recorded_conversation(store)
    exported = store.export(cid)
    assert json.loads(json.dumps(exported)) == exported  # JSON-ready as it is
    assert [m["state"] for m in exported["messages"]] == ["complete", "complete", "complete", "cancelled"]
    assert [len(m["streams"]) for m in exported["messages"]] == [0, 2, 0, 1]
    with HistoryStore(tmp_path / "other.db") as other:  # into another history, and back into this one
        for target in (other, store):
            new_id = target.import_conversation(exported)
            again = target.export(new_id)
            assert again["conversation"]["id"] == new_id
            for data in (again, exported):
                data["conversation"].pop("id")
            assert again == exported
            exported["conversation"]["id"] = cid


def test_import_refuses_what_is_not_an_export(store: HistoryStore) -> None:
    from streamchat.core.errors import ConfigError

    for bad in ({"format": "something"}, {"format": "streamchat-conversation", "version": 1},
                {"format": "streamchat-conversation", "version": 1, "conversation": {"title": "t", "created_at": 1,
                 "updated_at": 1}, "messages": [{"role": "system", "text": "x", "state": "complete"}]}):
        with pytest.raises(ConfigError):
            store.import_conversation(bad)
    assert store.conversations() == []  # nothing half-imported


def test_markdown_marks_answers_that_did_not_end(store: HistoryStore) -> None:
    cid = _recorded_conversation(store)
    md = to_markdown(store.conversation(cid), store.messages(cid))
    assert md.startswith("# colours\n")
    assert "*System prompt:* Be exact." in md
    assert "## Assistant · `anthropic:cutoff`\n\nRed, green and blue." in md
    assert "## Assistant · `ollama:slow`\n\nRouge, vert\n\n> **■ cancelled**" in md
    assert f"`streamchat resume --conversation {cid}`" in md  # the last answer can be resumed
    assert md.count("> **") == 1


def test_delete_removes_the_text_and_keeps_the_figures(store: HistoryStore) -> None:
    cid = _recorded_conversation(store)
    keep = store.create_conversation("another")
    assert store.delete_conversation(cid) == 4
    assert [c.id for c in store.conversations()] == [keep]
    assert store.search("green") == []
    assert len(store.streams()) == 3 and all(s.message_id is None for s in store.streams())
    with pytest.raises(HistoryNotFoundError):
        store.delete_conversation(cid)


def test_model_stats(store: HistoryStore) -> None:
    _recorded_conversation(store)
    by_model = {s.model_id: s for s in store.model_stats()}
    a = by_model["anthropic:cutoff"]
    assert (a.streams, a.completed, a.failed, a.retries, a.tokens) == (2, 1, 1, 1, 6)
    assert a.errors == {"connection": 1} and a.error_rate() == 0.5 and a.error_rate("connection") == 0.5
    assert a.ttft.median == pytest.approx(0.225) and a.tokens_per_s.high == 50.0
    o = by_model["ollama:slow"]
    # cancelled is not an error; its first token time (kept while it ran) still counts
    assert (o.streams, o.cancelled, o.failed, o.error_rate(), o.ttft.median) == (1, 1, 0, 0.0, 0.5)
    assert o.tokens_per_s is None
    assert [s.model_id for s in store.model_stats("ollama:slow")] == ["ollama:slow"]
    cid = store.create_conversation("live")
    row = store.begin_stream(store.start_answer(cid, provider="local", model="m"), "s4", provider="local", model="m")
    (live,) = store.model_stats("local:m")  # a stream this living process is writing: not ended
    assert (live.streams, live.streaming, live.ended, live.error_rate()) == (1, 1, 0, 0.0)
    assert row


def test_percentiles_and_histograms() -> None:
    assert percentile([3.0], 95) == 3.0
    assert percentile([1.0, 2.0], 50) == 1.5
    assert percentile(range(1, 101), 95) == pytest.approx(95.05)
    d = Distribution.of([0.5, 0.1, 0.3, float("nan")])
    assert (d.count, d.median, d.low, d.high) == (3, 0.3, 0.1, 0.5)
    assert Distribution.of([]) is None
    linear = histogram([1, 2, 2, 3, 4], bins=3)
    assert [b.count for b in linear] == [1, 2, 2] and linear[0].low == 1 and linear[-1].high == 4
    spread = histogram([0.01, 0.02, 0.2, 2.0, 10.0], bins=3)  # > 10× apart: log-spaced bins
    assert [b.count for b in spread] == [2, 1, 2]
    assert spread[1].low == pytest.approx(0.1) and spread[1].high == pytest.approx(1.0)
    assert histogram([2.0, 2.0]) == [histogram([2.0])[0].__class__(2.0, 2.0, 2)]
    assert histogram([]) == []


# ------------------------------------------------------------------------------------------------
# two processes writing at once


def test_processes_that_open_a_new_history_at_the_same_moment_all_get_it(tmp_path: Path) -> None:
    """Both switch the blank file to WAL; SQLite fails the loser's switch at once ("database is
    locked", no busy wait): half of such pairs failed before the open was tried again."""
    opener = f"""
        import sys, time
        from streamchat.history import HistoryStore
        start = float(sys.argv[1])
        for i in range(12):
            while time.time() < start + 0.05 * i:  # the same moment in both processes
                pass
            HistoryStore({str(tmp_path)!r} + f"/h{{i}}.db", timeout=10).close()
    """
    start = str(time.time() + 1.0)  # both processes are started and imported by then
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(opener), start], cwd=ROOT,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        assert proc.wait(60) == 0, proc.stderr.read()
    for i in range(12):
        with HistoryStore(tmp_path / f"h{i}.db") as store:
            assert store.schema_version == len(MIGRATIONS)


def test_two_writer_processes_do_not_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "history.db"  # blank: they also race to create the schema
    writer = f"""
        import sys
        from streamchat.core.events import StreamStats
        from streamchat.history import HistoryStore
        me = sys.argv[1]
        s = HistoryStore({str(path)!r}, timeout=10)
        for i in range(150):
            cid = s.create_conversation(f"{{me}} {{i}}")
            s.add_message(cid, "user", f"question {{i}} from {{me}}")
            mid = s.start_answer(cid, provider="p", model=me)
            row = s.begin_stream(mid, f"{{me}}-{{i}}", provider="p", model=me)
            for k in range(5):
                s.append_text(mid, f"{{k}} ")
            s.finish_answer(mid, state="complete", text="0 1 2 3 4 ")
            s.finish_stream(row, state="complete", stats=StreamStats(tokens=5, chars=10, ttft=0.1))
    """
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(writer), name], cwd=ROOT,
                              stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    for proc in procs:
        assert proc.wait(60) == 0, proc.stderr.read()
    with HistoryStore(path) as s:
        conversations = s.conversations(limit=None)
        assert len(conversations) == 300
        assert all(c.message_count == 2 and c.last_state == "complete" for c in conversations)
        assert {m.text for c in conversations for m in s.messages(c.id) if m.role == "assistant"} == {"0 1 2 3 4 "}
        assert sorted(st.model_id for st in s.model_stats()) == ["p:a", "p:b"]
        assert all(st.streams == 150 for st in s.model_stats())
    with raw(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == len(MIGRATIONS)


def test_the_store_can_be_used_from_worker_threads(store: HistoryStore) -> None:
    import asyncio

    async def main() -> list[int]:
        cid = await asyncio.to_thread(store.create_conversation, "threads")
        return await asyncio.gather(*(asyncio.to_thread(store.add_message, cid, "user", str(i)) for i in range(20)))

    ids = asyncio.run(main())
    assert len(set(ids)) == 20
    assert sorted(int(m.text) for m in store.messages(store.last_conversation().id)) == list(range(20))


def test_history_lives_in_the_data_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMCHAT_HOME", str(tmp_path / "home"))
    with HistoryStore() as s:
        assert s.path == tmp_path / "home" / "history.db"
    assert (tmp_path / "home" / "history.db").is_file()
    assert os.environ["STREAMCHAT_HOME"] == str(tmp_path / "home")
