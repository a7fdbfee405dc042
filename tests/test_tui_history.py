"""The app keeps every word in the history (real SQLite): answers as they grow, a stopped or
failed one with its state, the partial of a stream still running at ctrl+q; and a conversation
reopened from the history screen goes on — ``c`` continues its cut-off answer."""

from __future__ import annotations

import pytest
from textual.widgets import OptionList

from streamchat.config import Settings
from streamchat.core.request import join_continuation
from streamchat.history import HistoryStore
from streamchat.testing.wire import CUTOFF_CONTINUATION, CUTOFF_FIRST, NORMAL_TEXT
from streamchat.tui import make_app
from streamchat.tui.history import HistoryScreen, StatsScreen
from test_tui import SIZE, answers, ask, chat, last_answer, press, slow_text, until

pytestmark = pytest.mark.usefixtures("provider_env")


@pytest.fixture
def store(tmp_path):
    with HistoryStore(tmp_path / "history.db") as store:
        yield store


def app_with(store, *models: str):
    return make_app(Settings(), list(models), reason="test", store=store, freeze_gc=False)


def answers_in(store, conversation_id):
    return [m for m in store.messages(conversation_id) if m.role == "assistant"]


async def test_answers_are_recorded_and_a_stopped_one_keeps_its_partial(server, store):
    server.slow_rate, server.slow_tokens = 25, 200
    app = app_with(store, "openai:normal")
    async with app.run_test(size=SIZE) as pilot:
        await ask(pilot, "first question")
        await until(pilot, lambda: last_answer(app).state == "done", what="the answer")
        app.switch_model(0, "openai:slow")
        await ask(pilot, "second question")
        view = last_answer(app)
        await until(pilot, lambda: len(view.pieces) >= 5, what="a few tokens")
        await press(pilot, "escape")
        await until(pilot, lambda: view.state == "cancelled", what="the cancel")
        partial = view.text
        await app.recorder.flush()
        (conversation,) = store.conversations()
        assert conversation.title == "first question"
        users = [m.text for m in store.messages(conversation.id) if m.role == "user"]
        assert users == ["first question", "second question"]
        first, second = answers_in(store, conversation.id)
        assert (first.state, first.text, first.model_id) == ("complete", NORMAL_TEXT, "openai:normal")
        assert (second.state, second.text, second.model_id) == ("cancelled", partial, "openai:slow")
        assert partial and slow_text(server).startswith(partial)


async def test_ctrl_q_while_streaming_records_the_partial_before_quitting(server, store):
    server.slow_rate, server.slow_tokens = 25, 200
    app = app_with(store, "ollama:slow", "anthropic:slow")
    async with app.run_test(size=SIZE) as pilot:
        await ask(pilot, "quit soon")
        await until(pilot, lambda: all(len(v.pieces) >= 3 for v in answers(app)), what="tokens in both lanes")
        await press(pilot, "ctrl+q")
        await until(pilot, lambda: not app.is_running, what="the app to quit")
    (conversation,) = store.conversations()
    stored = answers_in(store, conversation.id)
    assert sorted(m.lane for m in stored) == ["1", "2"]
    for message in stored:
        assert message.state == "cancelled"
        assert message.text and slow_text(server).startswith(message.text)


async def test_a_reopened_cut_off_answer_continues_with_c(server, store):
    """A conversation whose answer was cut off (a process killed mid-answer, say) is reopened
    from the history screen: the lane takes its model, c sends the partial back, and the history
    gets the joined answer."""
    cid = store.create_conversation("colours?")
    store.add_message(cid, "user", "colours?")
    store.add_message(cid, "assistant", CUTOFF_FIRST, provider="ollama", model="cutoff", state="cut_off")
    store.create_conversation("another one")
    app = app_with(store, "openai:normal")
    async with app.run_test(size=SIZE) as pilot:
        await press(pilot, "ctrl+o")
        await until(pilot, lambda: isinstance(app.screen, HistoryScreen), what="the history screen")
        listing = app.screen.query_one(OptionList)
        await until(pilot, lambda: listing.option_count == 2, what="the conversations listed")
        await until(pilot, lambda: app.screen.focused is listing, what="the list")  # or the keys are lost
        assert "another one" in str(listing.get_option_at_index(0).prompt)  # newest first
        await press(pilot, "down", "enter")
        await until(pilot, lambda: not isinstance(app.screen, HistoryScreen) and answers(app)
                    and last_answer(app).state == "cancelled", what="the reopened chat")
        assert app.providers[0].model_id == "ollama:cutoff"
        view = last_answer(app)
        assert view.text == CUTOFF_FIRST and view.has_class("-cut")
        # reopened, focus goes to the answer, so that c works at once
        await until(pilot, lambda: chat(app).focused is chat(app).scroller, what="the answer keys")
        await press(pilot, "c")
        await until(pilot, lambda: view.state == "done", what="the continued answer")
        joined = join_continuation(CUTOFF_FIRST, CUTOFF_CONTINUATION)
        assert view.text == joined
        messages = server.requests[-1].body["messages"]
        assert messages[-1] == {"role": "assistant", "content": CUTOFF_FIRST.rstrip()}  # the partial went back
        await app.recorder.flush()
        (answer,) = answers_in(store, cid)
        assert (answer.state, answer.text) == ("complete", joined)


async def test_history_search_and_stats_screens(server, store):
    app = app_with(store, "anthropic:normal")
    async with app.run_test(size=SIZE) as pilot:
        await ask(pilot, "tell me about rayleigh")
        await until(pilot, lambda: last_answer(app).state == "done", what="the answer")
        await app.recorder.flush()
        await press(pilot, "ctrl+o")
        await until(pilot, lambda: isinstance(app.screen, HistoryScreen), what="the history screen")
        screen = app.screen
        await until(pilot, lambda: screen.focused is screen.options, what="the list")
        screen.query_one("#history-search").focus()
        await press(pilot, *"rayleigh")
        await until(pilot, lambda: "you: tell me about rayleigh" in str(screen.options.get_option_at_index(0).prompt),
                    what="a hit")
        await press(pilot, *"zzz")
        await until(pilot, lambda: "Nothing contains" in str(screen.options.get_option_at_index(0).prompt),
                    what="no hit")
        await press(pilot, "ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, StatsScreen), what="the stats screen")
        def text() -> str:
            return "\n".join(str(s.render()) for s in app.screen.query(".stats--model"))

        await until(pilot, lambda: "anthropic:normal" in text(), what="the figures")
        assert "time to first token" in text() and "│█" in text()
        await press(pilot, "escape")
        await until(pilot, lambda: isinstance(app.screen, HistoryScreen), what="back")
        await press(pilot, "escape")
        await until(pilot, lambda: app.screen is chat(app), what="the chat")


async def test_without_a_store_nothing_is_recorded_and_history_says_why(server):
    app = make_app(Settings(), ["openai:normal"], reason="test", freeze_gc=False,
                   history_problem="the history database /x/history.db is damaged")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: any("damaged" in n.message for n in app._notifications), what="the notice")
        await ask(pilot, "hi")
        await until(pilot, lambda: last_answer(app).state == "done", what="the answer")
        await press(pilot, "ctrl+o")
        await until(pilot, lambda: any("No history" in n.message for n in app._notifications), what="why")
        assert app.screen is chat(app)
