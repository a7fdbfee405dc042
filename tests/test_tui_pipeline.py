"""``streamchat --pipeline NAME``: the app answers in stages, one lane per stage, against the wire
server. The pipeline (``orchestrate.pipeline.PipelineRun``) runs the stage streams; the app shows
each in its lane as it starts, and the keys act on the run."""

from __future__ import annotations

import pytest

from streamchat.config import Settings
from streamchat.history import HistoryStore
from streamchat.orchestrate.pipeline import load_pipeline
from streamchat.testing.wire import NORMAL_TEXT
from streamchat.tui import make_app

from test_tui import SIZE, answers, chat, press, until

pytestmark = pytest.mark.usefixtures("provider_env")


async def pipeline_app(draft: str, refine: str, **kw):
    settings = Settings(pipelines={"two": {"stages": [
        {"name": "draft", "model": draft, "confidence": 0.4},
        {"name": "refine", "model": refine, "type": "refine"},
    ]}})
    pipeline = await load_pipeline("two", settings)
    return make_app(settings, [], reason=None, freeze_gc=False, pipeline=pipeline, **kw)


async def send(pilot, text: str) -> None:
    screen = chat(pilot.app)
    screen.prompt.value = text
    await press(pilot, "enter")
    await until(pilot, lambda: screen.last_turn is not None and screen._pipeline_run is not None,
                what="the pipeline to start")


def slow_text(server) -> str:
    return "".join(server.tokens_for("slow"))


async def test_each_stage_streams_into_its_own_lane_and_the_refine_gets_the_draft(server, tmp_path):
    server.slow_rate, server.slow_tokens = 200, 40
    store = HistoryStore(tmp_path / "h.db")
    app = await pipeline_app("anthropic:normal", "openai:slow", store=store)
    async with app.run_test(size=SIZE) as pilot:
        screen = chat(app)
        stats = [str(s.border_title) for s in screen.query("LaneStats")]
        assert stats == ["draft · anthropic:normal", "refine · openai:slow"]
        await send(pilot, "Why is the sky blue?")
        draft, refine = answers(app)
        await until(pilot, lambda: refine.state == "done", what="the refine stage to finish")
        assert draft.state == "done" and draft.text == NORMAL_TEXT
        assert refine.text == slow_text(server)
        refine_request = server.requests[-1].body["messages"][-1]["content"]
        assert "Why is the sky blue?" in refine_request and NORMAL_TEXT in refine_request
        await until(pilot, lambda: not screen.streaming and screen.focused is screen.prompt,
                    what="the run's end, and the prompt to take focus back")
        status = screen.query_one("#status")
        await until(pilot, lambda: "answer from refine" in str(status.right.render()), what="the run's last word")
        assert draft.pieces[0][2] == "draft" and refine.pieces[0][2] == "refine"
        assert draft.pieces[0][1] == 0.4  # anthropic gives no confidence: the stage's
        await app.action_quit()
    messages = store.messages(store.last_conversation().id)
    assert [(m.role, m.stage, m.state) for m in messages] == [
        ("user", None, "complete"), ("assistant", "draft", "complete"), ("assistant", "refine", "complete")]
    store.close()


async def test_escape_stops_the_pipeline_no_later_stage_starts(server):
    server.slow_rate, server.slow_tokens = 40, 200
    app = await pipeline_app("openai:slow", "anthropic:normal")
    async with app.run_test(size=SIZE) as pilot:
        screen = chat(app)
        await send(pilot, "hi")
        draft, refine = answers(app)
        await until(pilot, lambda: len(draft.pieces) >= 3, what="the draft's first words")
        assert refine.state == "waiting"
        await press(pilot, "escape")
        # (the run ends at once; its view shows how it ended in the next frame)
        await until(pilot, lambda: not screen.streaming and draft.state == "cancelled",
                    what="the pipeline to stop")
        assert draft.text and slow_text(server).startswith(draft.text)
        assert refine.state == "idle" and not refine.text  # never ran
        assert [r.body["model"] for r in server.requests if r.path.endswith("/messages")] == []
        assert screen.last_turn.answers[1].state == "skipped"


async def test_space_pauses_the_live_stage_and_the_run(server):
    server.slow_rate, server.slow_tokens = 40, 80
    app = await pipeline_app("openai:slow", "anthropic:normal")
    async with app.run_test(size=SIZE) as pilot:
        screen = chat(app)
        await send(pilot, "hi")
        draft, refine = answers(app)
        await until(pilot, lambda: len(draft.pieces) >= 2, what="the draft's first words")
        await press(pilot, "space")
        await until(pilot, lambda: draft.state == "paused", timeout=2, what="paused")
        assert screen.paused and screen._pipeline_run.state == "paused"
        await pilot.pause(0.3)
        held = draft.text
        await pilot.pause(0.4)
        assert draft.text == held
        await press(pilot, "space")
        await until(pilot, lambda: refine.state == "done", what="the rest of the pipeline")
        assert refine.text == NORMAL_TEXT


async def test_a_failed_stage_is_shown_and_the_draft_stands(server):
    app = await pipeline_app("anthropic:normal", "openai:500")
    async with app.run_test(size=SIZE) as pilot:
        screen = chat(app)
        await send(pilot, "hi")
        draft, refine = answers(app)
        await until(pilot, lambda: not screen.streaming and refine.state == "failed", what="the failed refine")
        assert draft.state == "done" and draft.text == NORMAL_TEXT
        assert screen._pipeline_run.final_stage.name == "draft"
        await until(pilot, lambda: any("refine failed" in str(n.message) for n in app._notifications),
                    what="the notice of the failed stage")


async def test_r_runs_every_stage_again(server):
    app = await pipeline_app("anthropic:normal", "openai:normal")
    async with app.run_test(size=SIZE) as pilot:
        screen = chat(app)
        await send(pilot, "hi")
        draft, refine = answers(app)
        await until(pilot, lambda: not screen.streaming and refine.state == "done", what="the first answer")
        first_run, requests = screen._pipeline_run, len(server.requests)
        screen.scroller.focus()
        await press(pilot, "r")
        await until(pilot, lambda: screen._pipeline_run is not first_run and not screen.streaming
                    and refine.state == "done", what="the second answer")
        assert len(server.requests) - requests >= 2
        assert draft.text == NORMAL_TEXT and refine.text == NORMAL_TEXT
