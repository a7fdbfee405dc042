"""Themes as data: the built-ins load and are sound, a person's own theme wins, bad files are named,
and `ask --confidence` on a terminal colours tokens by the theme's bands."""

import re
import subprocess
import sys

import pytest

from streamchat.core.errors import ConfigError
from streamchat.testing.terminal import run_on_terminal
from streamchat.theming import BUILTIN_DIR, load_theme, theme_names

from conftest import cli_env


@pytest.fixture
def home(monkeypatch, tmp_path):
    monkeypatch.setenv("STREAMCHAT_HOME", str(tmp_path))
    return tmp_path


def test_the_built_in_themes_ship_and_are_sound(home):
    assert {"dark", "light", "high-contrast"} <= set(theme_names())
    for name in ("dark", "light", "high-contrast"):
        theme = load_theme(name)
        assert theme.source.parent == BUILTIN_DIR
        assert len(theme.bands) >= 3 and theme.bands[0].min == 0.0
        assert [b.min for b in theme.bands] == sorted(b.min for b in theme.bands)
        assert len({b.color for b in theme.bands}) == len(theme.bands)  # bands are told apart
        assert {"draft", "refine", "verify"} <= set(theme.stages)
        assert theme.colors["background"] != theme.colors["foreground"]
    assert load_theme("light").dark is False and load_theme().name == "dark"


def test_bands_pick_the_highest_band_reached():
    theme = load_theme("high-contrast")
    assert theme.band(None) is None
    assert [theme.band(c).label for c in (0.0, 0.1, 0.25, 0.6, 0.8, 1.0)] == [
        "very low", "very low", "low", "medium", "high", "high"]


def test_a_persons_own_theme_wins_and_is_listed(home):
    (home / "themes").mkdir()
    own = (BUILTIN_DIR / "dark.toml").read_text().replace('name = "dark"', 'name = "mine"')
    (home / "themes" / "mine.toml").write_text(own)
    (home / "themes" / "dark.toml").write_text(own.replace("#7aa2f7", "#123456"))
    assert "mine" in theme_names()
    assert load_theme("mine").name == "mine"
    assert load_theme("dark").colors["primary"] == "#123456"


@pytest.mark.parametrize(
    "change,words",
    [
        (("#7aa2f7", "blue"), ["colors.primary must be a colour"]),
        (("[colors]", "[colours]"), ["unknown key 'colours'"]),
        (("min = 0.35", "min = 3.5"), ["confidence band 2", "from 0 to 1"]),
        (('marker = "✨"', 'marker = "✨"\nsize = 2'), ["stages.refine takes color and marker"]),
    ],
)
def test_a_bad_theme_is_refused_with_the_key_named(home, change, words):
    (home / "themes").mkdir()
    (home / "themes" / "bad.toml").write_text((BUILTIN_DIR / "dark.toml").read_text().replace(*change))
    with pytest.raises(ConfigError) as info:
        load_theme("bad")
    for word in words:
        assert word in str(info.value)


def test_unknown_theme_lists_the_choices(home):
    with pytest.raises(ConfigError, match="unknown theme 'nope': choose one of dark, high-contrast, light"):
        load_theme("nope")


def test_ask_with_confidence_colours_tokens_by_band_on_a_terminal(server, tmp_path):
    env = cli_env(server, tmp_path, {"STREAMCHAT_THEME": "high-contrast"})
    rc, shown, _ = run_on_terminal([sys.executable, "-m", "streamchat", "ask", "hi", "-m", "openai:normal",
                                    "--confidence"], env)
    assert rc == 0
    painted = re.findall(r"\x1b\[38;2;(\d+);(\d+);(\d+)m(.*?)\x1b\[39m", shown, flags=re.S)
    theme = load_theme("high-contrast")
    palette = {tuple(int(b.color[i:i + 2], 16) for i in (1, 3, 5)) for b in theme.bands}
    assert len(painted) == len(server.tokens_for("normal"))  # every token painted
    assert {tuple(map(int, p[:3])) for p in painted} <= palette
    assert len({p[:3] for p in painted}) >= 2  # the server's logprobs fall in several bands
    assert "".join(p[3] for p in painted) == "".join(server.tokens_for("normal"))


def test_without_a_terminal_there_is_no_colour(server, tmp_path):
    res = subprocess.run([sys.executable, "-m", "streamchat", "ask", "hi", "-m", "openai:normal", "--confidence"],
                         env=cli_env(server, tmp_path), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "\x1b" not in res.stdout
    assert res.stdout == "".join(server.tokens_for("normal")) + "\n"
