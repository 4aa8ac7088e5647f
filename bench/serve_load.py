"""A bounded load test of `gpt2 serve` on loopback: streamed completions at several concurrency levels.

    python bench/serve_load.py --model gpt2                    # GPT-2 124M shapes, random weights
    python bench/serve_load.py --model runs/shakespeare-cpu    # any MODEL `gpt2 serve` takes
    python bench/serve_load.py --model gpt2 --concurrency 1 4 16 64 --requests 256 --requests-c1 16

The server runs as a subprocess (`python -m gpt2 serve`, so the load generator here does not share its
interpreter), on a free 127.0.0.1 port. `--model gpt2` (or any preset name: tiny, mini, gpt2-medium, ...)
saves a randomly initialised model of that preset with GPT-2's vocabulary files (../shared/data/gpt2) to a
temporary directory first. Every request streams `max_tokens` new tokens (ignore_eos, so each generates all
of them) after a prompt of --prompt-tokens random byte tokens (ids < 256), sampled at temperature 0.8 with its own seed.

Per concurrency level C, C clients send --requests requests in all (--requests-c1 at C = 1, to keep the
run to minutes) back to back, split over --rounds rounds that visit the levels in turn (so a change in the
machine's load hits every level alike); the table gives the 2xx / 429 / 5xx counts (a refused request is counted,
never retried), p50/p99 latency, p50 time to first token, aggregate tokens/s (completion tokens of
the 2xx requests / wall time of the level) and its ratio to the C = 1 rate of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from common import wait_for_server

REPO = Path(__file__).resolve().parents[1]


def cpu_line() -> str:
    """The CPU's model name and whether it has AVX2 / AVX-512 (what CPU matmul speed depends on)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "CPU: unknown (no lscpu)"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    name = fields.get("Model name", "?").strip()
    flags = fields.get("Flags", "").split()
    return (f"CPU: {name}, {os.cpu_count()} logical cores, avx2={'avx2' in flags}, "
            f"avx512f={'avx512f' in flags}")


def prepare_model(spec: str, workdir: Path) -> str:
    """A preset name becomes a saved random-weight model with GPT-2's tokenizer; anything else is used as is."""
    from gpt2 import GPT2Config, GPT2LMHeadModel
    from gpt2.model.config import PRESETS

    if spec not in PRESETS:
        return spec
    import torch

    from gpt2.tokenizer import load_tokenizer

    shared = Path(os.environ.get("GPT2_SHARED_DATA", REPO.parent / "shared" / "data")) / "gpt2"
    tok = load_tokenizer(shared if shared.is_dir() else "gpt2")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config.from_preset(spec, vocab_size=tok.n_vocab))
    out = workdir / spec
    model.save_pretrained(out)
    tok.save(out)
    return str(out)


def start_server(model: str, port: int, args: argparse.Namespace) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "gpt2", "serve", model, "--port", str(port), "--max-batch", str(args.max_batch),
           "--max-queue", str(args.max_queue), "--model-name", "bench", "--dtype", args.dtype]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_server(proc, f"http://127.0.0.1:{port}", why=lambda: proc.stderr.read() if proc.stderr else "")
    return proc


async def one_request(client: httpx.AsyncClient, body: dict) -> dict:
    """Send one streamed completion; status, latency, time to first token and completion tokens."""
    t0 = time.perf_counter()
    ttft, tokens = None, 0
    async with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return {"status": r.status_code, "latency": time.perf_counter() - t0, "ttft": None, "tokens": 0}
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return {"status": 500, "latency": time.perf_counter() - t0, "ttft": ttft, "tokens": 0}
            if chunk["choices"] and chunk["choices"][0]["text"] and ttft is None:
                ttft = time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return {"status": 200, "latency": time.perf_counter() - t0, "ttft": ttft, "tokens": tokens}


async def run_level(url: str, concurrency: int, n_requests: int, args: argparse.Namespace, vocab: int) -> dict:
    rng = random.Random(concurrency)
    bodies = [{"model": "bench", "prompt": [rng.randrange(vocab) for _ in range(args.prompt_tokens)],
               "max_tokens": args.max_tokens, "temperature": 0.8, "seed": i, "ignore_eos": True, "stream": True,
               "stream_options": {"include_usage": True}} for i in range(n_requests)]
    results: list[dict] = []
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def worker() -> None:
            while bodies:
                body = bodies.pop()
                try:
                    results.append(await one_request(client, body))
                except httpx.HTTPError as e:
                    results.append({"status": 599, "latency": 0, "ttft": None, "tokens": 0, "error": repr(e)})

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"results": results, "wall": wall}


def summarise(concurrency: int, runs: list[dict]) -> dict:
    """One table row from a level's rounds: pooled latencies, tokens over the summed wall time."""
    results = [r for run in runs for r in run["results"]]
    wall = sum(run["wall"] for run in runs)
    ok = [r for r in results if r["status"] == 200]
    lat = sorted(r["latency"] for r in ok)
    ttft = sorted(r["ttft"] for r in ok if r["ttft"] is not None)

    def pct(xs: list[float], q: float) -> float:
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")

    return {"concurrency": concurrency, "requests": len(results), "ok": len(ok),
            "429": sum(r["status"] == 429 for r in results), "5xx": sum(r["status"] >= 500 for r in results),
            "other": sum(r["status"] not in (200, 429) and r["status"] < 500 for r in results),
            "p50": statistics.median(lat) if lat else float("nan"), "p99": pct(lat, 0.99),
            "ttft_p50": statistics.median(ttft) if ttft else float("nan"),
            "tokens": sum(r["tokens"] for r in ok), "wall": wall, "tps": sum(r["tokens"] for r in ok) / wall}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="gpt2", help="a preset (random weights) or anything `gpt2 serve` takes")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--requests", type=int, default=256, help="requests per level (default: 256)")
    p.add_argument("--requests-c1", type=int, default=16, help="requests at concurrency 1 (default: 16)")
    p.add_argument("--rounds", type=int, default=2, help="split each level's requests over this many "
                   "interleaved rounds (default: 2)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--max-queue", type=int, default=256)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the rows as JSON")
    args = p.parse_args(argv)

    print(cpu_line())
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        model = prepare_model(args.model, Path(tmp))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        proc = start_server(model, port, args)
        try:
            vocab = 256  # random byte tokens: valid ids for every byte-level BPE vocabulary
            asyncio.run(run_level(url, 2, 4, args, vocab))  # warm-up: first-call costs, weight packing
            # Levels are interleaved in rounds, so that a change in the machine's load hits every level alike.
            runs: dict[int, list[dict]] = {c: [] for c in args.concurrency}
            for r in range(args.rounds):
                for c in args.concurrency:
                    total = args.requests_c1 if c == 1 else args.requests
                    n = total // args.rounds + (r < total % args.rounds)
                    runs[c].append(asyncio.run(run_level(url, c, n, args, vocab)))
                    row = summarise(c, runs[c][-1:])
                    print(f"  round {r + 1}, concurrency {c}: {row['ok']}/{row['requests']} ok in {row['wall']:.1f} s, "
                          f"{row['tps']:.1f} tokens/s", file=sys.stderr, flush=True)
            rows = [summarise(c, runs[c]) for c in args.concurrency]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    base = next((r["tps"] for r in rows if r["concurrency"] == 1), None)
    print(f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after (other processes slow every level)")
    print(f"model {args.model}, {args.prompt_tokens} prompt tokens + {args.max_tokens} new tokens per request, "
          f"--max-batch {args.max_batch} --max-queue {args.max_queue}, {args.dtype}")
    print("| concurrency | requests | 2xx | 429 | 5xx | p50 latency | p99 latency | p50 TTFT | tokens/s | × C=1 |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = f"{r['tps'] / base:.2f}" if base else "–"
        print(f"| {r['concurrency']} | {r['requests']} | {r['ok']} | {r['429']} | {r['5xx']} | {r['p50']:.2f} s | "
              f"{r['p99']:.2f} s | {r['ttft_p50']:.2f} s | {r['tps']:.1f} | {ratio} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_line(), "args": vars(args), "rows": rows}, indent=2))
    bad = sum(r["5xx"] + r["other"] for r in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
