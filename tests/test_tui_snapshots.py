"""Snapshot tests of the app's main states (pytest-textual-snapshot; the SVGs are in
``tests/__snapshots__/test_tui_snapshots/``). Regenerate them with ``--snapshot-update`` after a
deliberate change to the look of the app, and look at them before committing.

Each state is reached by driving the real app against the loopback wire server, exactly as the
screenshot script does (``streamchat/testing/scenes.py``): where an answer stands is exact (a
fixed scenario, or a stream held after an exact number of tokens), never a matter of timing.

Deterministic by construction: a fixed terminal size, default settings (no config file, default
theme), a temporary ``STREAMCHAT_HOME``, the scripted server — and, in these tests only, the widgets
that show *time* are pinned once the state is reached (:func:`pin_time`): the stats panel's figures
(tok/s, first token, elapsed, paused) and sparkline become fixed placeholder content, its refresh is
switched off, the status bar's warm-up field says "ready", and the text inputs stop blinking their
cursor. Everything else in the SVG is what the app drew.
"""

from __future__ import annotations

import pytest
from textual.widgets import Input

from streamchat.testing.scenes import SCENES, Scene
from streamchat.tui.widgets import LaneStats, StatusBar

pytestmark = pytest.mark.usefixtures("provider_env")

#: what the stats panel shows in a snapshot (the real format, placeholder numbers)
PINNED_FIGURES = "n.n tok/s · first n.nn s · n tok · n.n s"
#: the sparkline's samples in a snapshot: silence, then a short burst (right-aligned, as live)
PINNED_SPARKLINE = [0.0] * (LaneStats.SAMPLES - 12) + [2.0, 6, 9, 8, 9, 10, 9, 8, 10, 9, 9, 10]


def pin_time(app) -> None:
    """Replace what depends on time by fixed content (see the module docstring)."""
    chat = app.chat
    for stats in chat.query(LaneStats):
        stats.tick = lambda: None  # the screen's refresh (4 a second) leaves the panel alone now
        stats.figures.update(PINNED_FIGURES)
        stats.sparkline.data = list(PINNED_SPARKLINE)
    chat.query_one(StatusBar).right.update("ready")
    for screen in app.screen_stack:
        for field in screen.query(Input):
            field.cursor_blink = False  # (hides the cursor: a blinking one is there or not)


def snapshot(snap_compare, server, scene: Scene) -> bool:
    """Drive a fresh app into ``scene``, pin time, and compare the picture with the snapshot."""
    app = scene.app()

    async def run_before(pilot) -> None:
        await scene.reach(pilot)
        pin_time(app)

    with scene.tuned(server):
        return snap_compare(app, terminal_size=scene.size, run_before=run_before)


def test_confidence_colours_mid_stream(snap_compare, server):
    """You should see one OpenAI answer still streaming ("● streaming" next to openai:slow), shown
    as tokens (key t): 56 words, each coloured by its confidence band — pink low, amber medium,
    lavender high — and the legend "confidence: ■ low ■ medium ■ high" in the status bar. Below: the
    stats box of openai:slow with the (pinned) sparkline and figures, "● streaming" on its bottom
    edge; the footer offers space Pause, esc Stop and t Markdown."""
    assert snapshot(snap_compare, server, SCENES["confidence"])


def test_paused_mid_stream(snap_compare, server):
    """You should see one Ollama answer paused after 48 words, as Markdown text ending "…Packet
    arrives packet": "⏸ paused" next to ollama:slow and on the stats box's bottom edge; the footer
    offers space Resume and esc Stop."""
    assert snapshot(snap_compare, server, SCENES["paused"])


def test_side_by_side_lanes_with_stats(snap_compare, server):
    """You should see the prompt "Say hello." and two answers side by side: openai:slow still
    streaming (40 words so far) on the left, anthropic:normal "✓ done" on the right ("Hello! This
    is the loopback wire server speaking, …"), a thin rule between them; below, one stats box per
    model, titled with the model, "● streaming" and "✓ done" on their bottom edges."""
    assert snapshot(snap_compare, server, SCENES["lanes"])


def test_error_mid_answer_keeps_the_partial(snap_compare, server):
    """You should see an Anthropic answer that failed after "Hello! This is the loopback":
    "✖ failed" next to the model, the partial answer kept, and under it a red-ruled note "✖
    anthropic is overloaded right now: try again in a moment" with what to do next ("…then c
    continues the partial answer · r starts again."). The stats box says "✖ failed"; the footer
    offers c Continue and r Regenerate."""
    assert snapshot(snap_compare, server, SCENES["error"])


def test_command_palette(snap_compare, server):
    """You should see the command palette (ctrl+p) open over a finished answer to "Say hello.":
    the search field "Search for commands…" and the list of commands under it, the first one
    highlighted. (Its commands change as streamchat's own are added: regenerate then.)"""
    assert snapshot(snap_compare, server, SCENES["palette"])


def test_history_screen(snap_compare, server):
    """You should see the history screen (ctrl+o): the search box, then four conversations from
    2026-11-02, newest first, each with how its last answer ended (✓, ⏹ cut off, ✖ failed), its
    model and its message count; the footer offers esc back to the chat and ctrl+s stats."""
    assert snapshot(snap_compare, server, SCENES["history"])


def test_pipeline_stages_in_lanes(snap_compare, server):
    """You should see "pipeline careful: draft → refine" and the confidence legend in the status
    bar, then two lanes: "draft · ollama:normal ✓ done" with the wire server's short answer starting
    with the draft marker ✏️, and "refine · openai:slow ● streaming" with 40 words starting with the
    refine marker ✨ — both as tokens (key t) coloured by their confidence (one event per token:
    exact); one stats box per stage. (Anthropic merges bursts, so its token spans would vary.)"""
    assert snapshot(snap_compare, server, SCENES["pipeline"])
