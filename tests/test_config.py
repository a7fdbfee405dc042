"""Settings and default-model resolution (explicit → config → Anthropic → OpenAI → Ollama → local)."""

import subprocess
import sys

import pytest

from streamchat.config import load_settings, resolve_model
from streamchat.core.errors import ConfigError

from conftest import DEAD_OLLAMA_HOST, cli_env


@pytest.fixture
def bare_env(monkeypatch, tmp_path):
    """No keys, no Ollama, an empty config folder."""
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "OPENAI_API_KEY", "STREAMCHAT_MODEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OLLAMA_HOST", DEAD_OLLAMA_HOST)
    monkeypatch.setenv("STREAMCHAT_HOME", str(tmp_path))
    return tmp_path


async def test_nothing_configured_falls_back_to_the_embedded_model(bare_env):
    model, reason = await resolve_model(None, load_settings())
    assert model == "local:smollm2" and "embedded" in reason


async def test_explicit_model_wins(bare_env, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-x")
    assert await resolve_model("ollama:llama3.2:1b", load_settings()) == ("ollama:llama3.2:1b", "given with --model")


async def test_config_file_default_then_env_override(bare_env, monkeypatch):
    (bare_env / "config.toml").write_text('default_model = "openai:gpt-4o-mini"\n')
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-x")  # a key does not beat the configured default
    model, reason = await resolve_model(None, load_settings())
    assert model == "openai:gpt-4o-mini" and "config.toml" in reason
    monkeypatch.setenv("STREAMCHAT_MODEL", "local:smollm2")
    model, reason = await resolve_model(None, load_settings())
    assert model == "local:smollm2" and "STREAMCHAT_MODEL" in reason


async def test_anthropic_key_then_openai_key(bare_env, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    model, reason = await resolve_model(None, load_settings())
    assert model.startswith("openai:") and "OPENAI_API_KEY" in reason
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-x")
    model, reason = await resolve_model(None, load_settings())
    assert model.startswith("anthropic:") and "ANTHROPIC_API_KEY" in reason


async def test_a_reachable_ollama_with_a_model_is_used(bare_env, monkeypatch, server):
    monkeypatch.setenv("OLLAMA_HOST", server.url)
    model, reason = await resolve_model(None, load_settings())
    assert model == "ollama:normal" and server.url in reason  # the first model the server lists


@pytest.mark.parametrize(
    "text,words",
    [
        ('default_modle = "x"\n', ["unknown setting 'default_modle'", "known:"]),
        ("max_tokens = 'many'\n", ["max_tokens must be a whole number"]),
        ("[timeouts]\nidle = -1\n", ["timeouts.idle must be a positive number"]),
        ("[timeouts]\nidel = 3\n", ["unknown timeout 'idel'"]),
        ("this is not toml", ["cannot read"]),
    ],
)
def test_bad_config_names_the_problem(bare_env, text, words):
    (bare_env / "config.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings()
    for word in words:
        assert word in str(info.value)
    assert "\n" not in str(info.value)


def test_config_values_reach_the_settings(bare_env, monkeypatch):
    (bare_env / "config.toml").write_text(
        'system = "Be brief."\nmax_tokens = 77\nconfidence = true\n[timeouts]\nidle = 5\nconnect = 2.5\n'
    )
    settings = load_settings()
    assert (settings.system, settings.max_tokens, settings.confidence) == ("Be brief.", 77, True)
    assert (settings.timeouts.idle, settings.timeouts.connect, settings.timeouts.first_token) == (5.0, 2.5, 60.0)
    monkeypatch.setenv("STREAMCHAT_MAX_TOKENS", "12")
    assert load_settings().max_tokens == 12


def test_ask_says_which_model_it_picked_only_when_not_given(server, tmp_path):
    env = cli_env(server, tmp_path)
    picked = subprocess.run([sys.executable, "-m", "streamchat", "ask", "hi"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert picked.returncode == 0
    assert picked.stderr == "using anthropic:claude-sonnet-4-6 (ANTHROPIC_API_KEY is set)\n"
    given = subprocess.run([sys.executable, "-m", "streamchat", "ask", "hi", "-m", "openai:normal"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert given.returncode == 0 and given.stderr == ""


def test_a_broken_config_is_one_line_and_exit_2(server, tmp_path):
    env = cli_env(server, tmp_path)
    with open(f"{env['STREAMCHAT_HOME']}/config.toml", "w") as config:
        config.write("nonsense = 1\n")
    res = subprocess.run([sys.executable, "-m", "streamchat", "ask", "hi"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and "unknown setting 'nonsense'" in res.stderr
