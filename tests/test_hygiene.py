"""Import hygiene: the core imports no UI and no SDK; a command imports only the SDK it uses."""

import json
import subprocess
import sys

import pytest

HEAVY = ["textual", "anthropic", "openai", "ollama", "llama_cpp", "httpx", "httpx2", "rich"]


def loaded_after(code: str, env=None) -> set[str]:
    probe = (
        f"{code}\n"
        "import sys, json\n"
        f"print('@@' + json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=env)
    line = [l for l in out.stdout.splitlines() if l.startswith("@@")]
    assert line, out.stderr
    return set(json.loads(line[-1][2:]))


def test_core_imports_no_ui_no_sdk_no_http():
    assert loaded_after(
        "import streamchat.core.bus, streamchat.core.stream, streamchat.core.events, "
        "streamchat.core.errors, streamchat.core.request"
    ) == set()


def test_provider_registry_and_adapters_import_no_sdk_until_used():
    assert loaded_after(
        "import streamchat.providers, streamchat.providers.anthropic, streamchat.providers.openai, "
        "streamchat.providers.ollama, streamchat.providers.local"
    ) == set()


def test_cli_module_imports_no_sdk():
    assert loaded_after("import streamchat.cli") == set()


@pytest.mark.parametrize("provider,sdk", [("anthropic", "anthropic"), ("openai", "openai"), ("ollama", "ollama")])
def test_ask_imports_only_the_sdk_it_uses(server, provider, sdk, tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "OPENAI_", "OLLAMA_"))}
    env.update(server.env(), STREAMCHAT_HOME=str(tmp_path))
    code = (
        "from streamchat.cli import app\n"
        "try:\n"
        f"    app(['ask', 'hi', '-m', '{provider}:normal'], standalone_mode=False)\n"
        "except SystemExit:\n"
        "    pass\n"
    )
    sdks = loaded_after(code, env=env) & {"anthropic", "openai", "ollama", "llama_cpp", "textual"}
    assert sdks == {sdk}


def test_history_imports_no_ui_no_cli_no_sdk():
    """The TUI imports the history store and recorder as they are: no typer/click, nothing heavy."""
    assert loaded_after(
        "import streamchat.history, streamchat.history.store, streamchat.history.recorder, "
        "streamchat.history.render, streamchat.history.stats\n"
        "import sys\n"
        "assert not {'typer', 'click'} & set(sys.modules), 'the history imports the CLI framework'"
    ) == set()
