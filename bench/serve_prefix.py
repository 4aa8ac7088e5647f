"""Prefix caching in `gpt2 serve`: time to first token of each turn of a conversation, cache on vs off.

    python bench/serve_prefix.py                                  # GPT-2 124M shapes (random weights), 5 turns
    python bench/serve_prefix.py --model runs/sft-alpaca --turns 3 --chat-format alpaca

Two servers run side by side as subprocesses (`python -m gpt2 serve MODEL`, one with the default
--prefix-cache-mb, one with --prefix-cache-mb 0), on free 127.0.0.1 ports. `--model gpt2` (or any preset
name) is a randomly initialised model of that preset with GPT-2's tokenizer (bench/serve_load.py's
prepare_model). Each repetition holds one new conversation with each server in turn (off, then on, so a change
in the machine's load hits both alike): a system prompt of --system-tokens, then --turns user messages of
--user-tokens each, every reply --reply-tokens long (greedy, ignore_eos), sent back as the assistant's message
the next turn, as a chat client does. Texts are seeded random English words, new for every repetition, so the
first turn never finds a previous repetition's blocks. Time to first token is send → the first streamed chunk
that carries a token (logprobs are asked for, so even a token that is part of a character shows up at once).

Prints the CPU (lscpu's model name and its avx2 / avx512_bf16 / amx flags), the median time to first token
per turn for each server, their ratio, the prompt tokens and the tokens the cache supplied
(usage.prompt_tokens_details.cached_tokens), and writes a JSON record (--out).
"""

from __future__ import annotations

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
from common import REPO, markdown_table, parser, wait_for_server, write_results
from serve_load import prepare_model

WORDS = [
    "the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from", "his",
    "her", "they", "this", "which", "have", "had", "were", "one", "all", "when", "there", "their", "would",
    "about", "into", "more", "time", "some", "could", "them", "other", "than", "then", "now", "only", "its",
    "over", "also", "after", "first", "two", "new", "years", "way", "people", "may", "down", "water", "long",
    "day", "made", "part", "work", "city", "world", "house", "king", "river", "light", "night", "story",
    "small", "great", "old", "school", "place", "country", "family", "music", "letter", "answer", "morning",
    "road", "garden", "window", "question", "number", "market", "summer", "winter", "friend", "mountain",
    "island", "teacher", "doctor", "village",
]
"""Common English words: the texts of the conversations."""


def lscpu() -> dict:
    """lscpu's model name and whether the CPU has the flags CPU matmul speed depends on."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"model_name": "unknown (no lscpu)", "cores": os.cpu_count()}
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    return {"model_name": fields.get("Model name", "?").strip(), "cores": os.cpu_count(),
            "avx2": "avx2" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "amx": any(f.startswith("amx") for f in flags)}


def text_of(tok, rng: random.Random, n_tokens: int) -> str:
    """Random English words until the text is n_tokens long under the model's tokenizer (one or two over)."""
    words: list[str] = []
    while len(tok.encode(" ".join(words))) < n_tokens:
        words.append(rng.choice(WORDS))
    return " ".join(words).capitalize() + "."


def start_server(model: str, port: int, args, cache_mb: float) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "gpt2", "serve", model, "--port", str(port), "--model-name", "bench",
           "--chat-format", args.chat_format, "--max-batch", "4", "--prefix-cache-mb", str(cache_mb)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_server(proc, f"http://127.0.0.1:{port}", why=lambda: proc.stderr.read() if proc.stderr else "")
    return proc


def turn(client: httpx.Client, messages: list[dict], reply_tokens: int) -> dict:
    """One streamed chat turn: time to first token, the reply's text and the usage."""
    body = {"model": "bench", "messages": messages, "max_tokens": reply_tokens, "temperature": 0,
            "ignore_eos": True, "logprobs": True, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, text, usage = None, [], None
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise SystemExit(f"chat turn failed: {r.status_code} {r.read()[:300]!r}")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise SystemExit(f"stream error: {chunk}")
            for c in chunk["choices"]:
                if ttft is None and (c.get("logprobs") or c["delta"].get("content")):
                    ttft = time.perf_counter() - t0
                text.append(c["delta"].get("content") or "")
            usage = chunk.get("usage") or usage
    return {"ttft": ttft, "reply": "".join(text), "prompt_tokens": usage["prompt_tokens"],
            "cached_tokens": usage["prompt_tokens_details"]["cached_tokens"]}


def conversation(url: str, tok, seed: int, args) -> list[dict]:
    """One conversation of args.turns turns with a server; per turn: ttft, prompt and cached tokens."""
    rng = random.Random(seed)
    messages = [{"role": "system", "content": text_of(tok, rng, args.system_tokens)}]
    users = [text_of(tok, rng, args.user_tokens) for _ in range(args.turns)]
    out = []
    with httpx.Client(base_url=url, timeout=600) as client:
        for user in users:
            messages.append({"role": "user", "content": user})
            got = turn(client, messages, args.reply_tokens)
            messages.append({"role": "assistant", "content": got.pop("reply")})
            out.append(got)
    return out


def report(args, cpu: dict, runs: dict[str, list[list[dict]]], load: tuple[float, float]) -> dict:
    per_turn = []
    for t in range(args.turns):
        row = {"turn": t + 1}
        for mode, convs in runs.items():
            row[f"ttft_{mode}_s"] = statistics.median(c[t]["ttft"] for c in convs)
            row[f"cached_{mode}"] = statistics.median(c[t]["cached_tokens"] for c in convs)
        row["prompt_tokens"] = runs["on"][0][t]["prompt_tokens"]
        row["speedup"] = row["ttft_off_s"] / row["ttft_on_s"]
        per_turn.append(row)
    return {"command": "python bench/serve_prefix.py " + " ".join(sys.argv[1:]), "cpu": cpu,
            "load_average_before_after": load, "model": args.model, "reps": args.reps,
            "system_tokens": args.system_tokens, "user_tokens": args.user_tokens, "reply_tokens": args.reply_tokens,
            "prefix_cache_mb": args.prefix_cache_mb, "per_turn": per_turn,
            "last_turn_speedup": per_turn[-1]["speedup"], "raw": runs}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--model", default="gpt2", help="a preset (random weights) or anything `gpt2 serve` takes")
    p.add_argument("--chat-format", default="plain", help="the servers' --chat-format (default: plain)")
    p.add_argument("--turns", type=int, default=5)
    p.add_argument("--reps", type=int, default=3, help="conversations per server (default: 3); medians reported")
    p.add_argument("--system-tokens", type=int, default=150)
    p.add_argument("--user-tokens", type=int, default=130)
    p.add_argument("--reply-tokens", type=int, default=32)
    p.add_argument("--prefix-cache-mb", type=float, default=256.0, help="the cached server's budget (default: 256)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "serve-prefix.json")
    args = p.parse_args(argv)
    from gpt2.tokenizer import load_tokenizer

    cpu = lscpu()
    print(f"CPU: {cpu['model_name']}, {cpu['cores']} cores, avx2={cpu.get('avx2')}, "
          f"avx512_bf16={cpu.get('avx512_bf16')}, amx={cpu.get('amx')}")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        model = prepare_model(args.model, Path(tmp))
        tok = load_tokenizer(model)
        ports = {}
        for mode in ("off", "on"):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                ports[mode] = s.getsockname()[1]
        procs = {mode: start_server(model, ports[mode], args, 0 if mode == "off" else args.prefix_cache_mb)
                 for mode in ("off", "on")}
        try:
            runs: dict[str, list[list[dict]]] = {"off": [], "on": []}
            for mode in ("off", "on"):  # warm-up: first-call costs, weight packing
                conversation(f"http://127.0.0.1:{ports[mode]}", tok, 10_000, args)
            for rep in range(args.reps):
                for mode in ("off", "on"):
                    runs[mode].append(conversation(f"http://127.0.0.1:{ports[mode]}", tok, rep, args))
                    last = runs[mode][-1][-1]
                    print(f"  rep {rep + 1}, cache {mode}: turn {args.turns} TTFT {last['ttft'] * 1000:,.0f} ms "
                          f"({last['cached_tokens']} of {last['prompt_tokens']} prompt tokens cached)",
                          file=sys.stderr, flush=True)
        finally:
            for proc in procs.values():
                proc.terminate()
                proc.wait(timeout=30)
    rec = report(args, cpu, runs, (load_before, os.getloadavg()[0]))
    write_results(args.out, rec)
    rows = [[r["turn"], f"{r['prompt_tokens']:,}", f"{r['ttft_off_s'] * 1000:,.0f} ms",
             f"{r['ttft_on_s'] * 1000:,.0f} ms", f"{r['cached_on']:,.0f}", f"{r['speedup']:.1f}×"]
            for r in rec["per_turn"]]
    print(f"model {args.model}; median of {args.reps} conversations per server; load average "
          f"{rec['load_average_before_after'][0]:.1f} before, {rec['load_average_before_after'][1]:.1f} after")
    print(markdown_table(["turn", "prompt tokens", "TTFT, cache off", "TTFT, cache on", "cached tokens",
                          "speed-up"], rows))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
