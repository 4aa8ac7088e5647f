"""A soak test of `gpt2 serve`: a long mixed load on loopback, then the server's own counters and memory.

    python bench/serve_soak.py /work/models/shakespeare-cpu                      # 10 minutes, 16 clients
    python bench/serve_soak.py MODEL --duration 30 --concurrency 4 --out /tmp/soak.json

It starts `python -m gpt2 serve MODEL` itself (a subprocess on a free 127.0.0.1 port; its log goes to --log) and runs --concurrency clients for --duration seconds. Each client sends
one request after another, drawn from a seeded mix: streamed and plain completions and chat completions
(n of 1 to 3, stop strings, seeds, temperature 0 or sampled), streams it abandons after a few chunks (the
connection is closed mid-stream), and bodies that must be refused: not JSON, of the wrong types, over the
server's 4 MiB limit, asking for more tokens than the context holds. Every --burst-every seconds another
task fires max_batch + max_queue + 8 requests at once, past what the queue holds, so some get 429. Clients
never retry. After the deadline the clients finish the request they are on, the script waits for the
server to go idle, reads its counters (GET /health), stops it and reports:

- responses by kind and status (and any 5xx, stream error event, or error body not in OpenAI's shape);
- time to first token (send → first chunk with a token) of the streamed requests, p50 / p99;
- tokens/s (completion tokens of all answered requests / wall time of the load);
- the server's resident memory (VmRSS) at start, at the 2nd minute (--mark seconds) and at the end;
- the rows still running or waiting when it ends, and how many jobs it cancelled for clients that left;
- the prefix cache (--prefix-cache-mb, small by default so that it evicts): its bytes against its budget,
  sampled every second from GET /health, the blocks it evicted, and its hit rate from GET /metrics (read
  with prometheus_client's parser). Conversations (2-3 chat turns resending their history after one of a
  few shared system prompts) and completions after a shared header give it prefixes to reuse.

It exits with status 1 if a response was a 5xx, rows were still held at the end or the prefix cache was
seen over its budget, 0 otherwise. It stops by
itself: the server is killed if it does not stop, and the whole run is bounded by duration + --grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from common import REPO, cpu_name, markdown_table, parser, write_results

PROMPTS = ["ROMEO:", "First Citizen:\nBefore we proceed any further, hear me speak.", "KING HENRY:", "O, ",
           "To be, or not to be", "JULIET:\nWherefore art thou", "The quick brown fox", "\n", "MENENIUS:\nWhy, masters,"]
STOPS = [None, "\n", ["\n\n", "."], " the", ["ROMEO", ":"]]
HEADERS = ["You are a player in one of Shakespeare's plays. Answer in his manner, briefly and with wit.\n",
           "ROMEO:\nBut, soft! what light through yonder window breaks?\nJULIET:\nAy me!\n",
           "Below is a scene from a history play. Continue it in the same voice, one speech at a time.\n"]
"""Shared system prompts / headers: prefixes that many requests start with."""
MAX_BODY = 4 * 2**20  # gpt2.serve.app.MAX_BODY_BYTES


@dataclass
class Tally:
    """What the clients saw."""

    status: Counter = field(default_factory=Counter)  # (kind, status) → count
    ttft: list[tuple[float, float]] = field(default_factory=list)  # (seconds from start, time to first token)
    tokens: int = 0
    disconnects: int = 0
    cached_tokens: int = 0  # usage.prompt_tokens_details.cached_tokens, summed
    prefix_cache: list[tuple[float, int, int]] = field(default_factory=list)  # (seconds from start, bytes, budget)
    problems: list[str] = field(default_factory=list)  # 5xx, stream errors, errors not in OpenAI's shape

    def note(self, kind: str, status: int | str) -> None:
        self.status[(kind, status)] += 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid: int) -> int:
    """The process's resident set size in KiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


# ------------------------------------------------------------------------------------ requests
def _sampling(rng: random.Random) -> dict:
    body: dict = {"max_tokens": rng.randint(4, 48), "temperature": rng.choice([0, 0.8, 1.0])}
    if rng.random() < 0.5:
        body["seed"] = rng.randrange(2**31)
    if rng.random() < 0.3:
        body["n"] = rng.choice([2, 3])
    stop = rng.choice(STOPS)
    if stop is not None:
        body["stop"] = stop
    return body


def _check_error_shape(tally: Tally, kind: str, r: httpx.Response) -> None:
    try:
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and isinstance(err["message"], str)
    except Exception:
        tally.problems.append(f"{kind}: {r.status_code} body not in OpenAI's error shape: {r.text[:200]}")


def _record(tally: Tally, kind: str, r: httpx.Response) -> None:
    tally.note(kind, r.status_code)
    if r.status_code >= 500:
        tally.problems.append(f"{kind}: {r.status_code} {r.text[:300]}")
    elif r.status_code >= 400:
        _check_error_shape(tally, kind, r)
    elif r.headers.get("content-type", "").startswith("application/json"):
        usage = r.json()["usage"]
        tally.tokens += usage["completion_tokens"]
        tally.cached_tokens += usage["prompt_tokens_details"]["cached_tokens"]


async def plain(client: httpx.AsyncClient, tally: Tally, kind: str, path: str, body: dict) -> None:
    _record(tally, kind, await client.post(path, json=body))


async def streamed(client: httpx.AsyncClient, tally: Tally, kind: str, path: str, body: dict, t0: float, *,
                   leave_after: int | None = None) -> None:
    """A streamed request: time to the first chunk that carries a token; with leave_after, close the
    connection after that many chunks (a client that goes away mid-stream)."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    sent = time.monotonic()
    async with client.stream("POST", path, json=body) as r:
        if r.status_code != 200:
            await r.aread()
            _record(tally, kind, r)
            return
        chunks, first = 0, None
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                tally.problems.append(f"{kind}: error event mid-stream: {line[:300]}")
                tally.note(kind, "stream_error")
                return
            if event.get("usage"):
                tally.tokens += event["usage"]["completion_tokens"]
            for c in event.get("choices", []):
                carries = c.get("text") or (c.get("delta") or {}).get("content") or c.get("finish_reason")
                if carries and first is None:
                    first = time.monotonic() - sent
                    tally.ttft.append((sent - t0, first))
            chunks += 1
            if leave_after is not None and chunks >= leave_after:
                tally.disconnects += 1
                tally.note(kind, "left mid-stream")
                return  # leaving the `async with` closes the connection
        tally.note(kind, r.status_code)


async def conversation(client: httpx.AsyncClient, tally: Tally, rng: random.Random) -> None:
    """2 or 3 chat turns after a shared system prompt, each sending the history back (the prefix cache's case)."""
    messages = [{"role": "system", "content": rng.choice(HEADERS)}]
    for _ in range(rng.randint(2, 3)):
        messages.append({"role": "user", "content": rng.choice(PROMPTS)})
        body = {"messages": messages, "max_tokens": rng.randint(4, 16), "temperature": rng.choice([0, 0.8])}
        r = await client.post("/v1/chat/completions", json=body)
        _record(tally, "conversation", r)
        if r.status_code != 200:
            return
        messages.append({"role": "assistant", "content": r.json()["choices"][0]["message"]["content"]})


KINDS = {"stream_completion": 30, "completion": 15, "stream_chat": 15, "chat": 10, "leave_mid_stream": 10,
         "not_json": 5, "wrong_types": 5, "oversized": 2, "too_long": 3, "conversation": 8, "shared_header": 8}
"""The request mix: kind → weight."""


async def one_request(client: httpx.AsyncClient, tally: Tally, rng: random.Random, t0: float, n_positions: int,
                      kind: str) -> None:
    prompt = rng.choice(PROMPTS)
    messages = [{"role": "user", "content": prompt}]
    if kind == "stream_completion":
        await streamed(client, tally, kind, "/v1/completions", {"prompt": prompt, **_sampling(rng)}, t0)
    elif kind == "completion":
        await plain(client, tally, kind, "/v1/completions", {"prompt": prompt, **_sampling(rng)})
    elif kind == "stream_chat":
        await streamed(client, tally, kind, "/v1/chat/completions", {"messages": messages, **_sampling(rng)}, t0)
    elif kind == "chat":
        await plain(client, tally, kind, "/v1/chat/completions", {"messages": messages, **_sampling(rng)})
    elif kind == "conversation":
        await conversation(client, tally, rng)
    elif kind == "shared_header":
        body = {"prompt": rng.choice(HEADERS) + prompt, **_sampling(rng), "max_tokens": rng.randint(4, 24)}
        await plain(client, tally, kind, "/v1/completions", body)
    elif kind == "leave_mid_stream":
        body = {"prompt": prompt, "max_tokens": 64, "ignore_eos": True, "temperature": 0.8, "n": rng.choice([1, 2])}
        await streamed(client, tally, kind, "/v1/completions", body, t0, leave_after=rng.randint(1, 3))
    elif kind == "not_json":
        r = await client.post("/v1/completions", content=b'{"prompt": "ROMEO:", "max_tokens": ',
                              headers={"content-type": "application/json"})
        _record(tally, kind, r)
    elif kind == "wrong_types":
        bad = rng.choice([{"prompt": "x", "max_tokens": "16"}, {"prompt": 5}, {"messages": "hi"},
                          {"prompt": "x", "n": 1.5}, [1, 2, 3], {"prompt": "x", "stop": 7}])
        path = "/v1/chat/completions" if isinstance(bad, dict) and "messages" in bad else "/v1/completions"
        _record(tally, kind, await client.post(path, json=bad))
    elif kind == "oversized":
        _record(tally, kind, await client.post("/v1/completions", json={"prompt": "a" * (MAX_BODY + 10)}))
    else:  # too_long
        _record(tally, kind, await client.post("/v1/completions", json={"prompt": prompt,
                                                                         "max_tokens": n_positions + 1}))


async def client_loop(i: int, url: str, tally: Tally, deadline: float, t0: float, seed: int,
                      n_positions: int) -> None:
    rng = random.Random(seed * 1000 + i)
    # Client 0 sends one request of every kind first (deadline or not), so that even a short run covers the mix.
    sweep = list(KINDS) if i == 0 else []
    async with httpx.AsyncClient(base_url=url, timeout=180) as client:
        while sweep or time.monotonic() < deadline:
            kind = sweep.pop(0) if sweep else rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
            try:
                await one_request(client, tally, rng, t0, n_positions, kind)
            except httpx.HTTPError as e:
                tally.note("transport", type(e).__name__)
                tally.problems.append(f"client {i}: {type(e).__name__}: {e}")


async def bursts(url: str, tally: Tally, deadline: float, every: float, size: int) -> None:
    """Every `every` seconds, `size` plain completions at once (past max_batch + max_queue); at least one burst."""
    async with httpx.AsyncClient(base_url=url, timeout=180,
                                 limits=httpx.Limits(max_connections=size + 4)) as client:
        first = True
        while first or time.monotonic() + every < deadline:
            first = False
            await asyncio.sleep(min(every, max(0.0, deadline - time.monotonic())))
            body = {"prompt": "ROMEO:", "max_tokens": 16, "temperature": 0.8}
            done = await asyncio.gather(*[client.post("/v1/completions", json=body) for _ in range(size)],
                                        return_exceptions=True)
            for r in done:
                if isinstance(r, BaseException):
                    tally.note("burst", type(r).__name__)
                    tally.problems.append(f"burst: {type(r).__name__}: {r}")
                else:
                    _record(tally, "burst", r)


async def sample_rss(pid: int, t0: float, samples: list[tuple[float, int]], stop: asyncio.Event) -> None:
    while not stop.is_set():
        samples.append((time.monotonic() - t0, rss_kb(pid)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=5)


async def sample_prefix_cache(url: str, t0: float, tally: Tally, stop: asyncio.Event) -> None:
    """The prefix cache's bytes and budget from GET /health, every second."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError):
                h = (await client.get("/health")).json()
                tally.prefix_cache.append((time.monotonic() - t0, h["prefix_cache_bytes"], h["prefix_cache_budget"]))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1)


def prefix_cache_counters(url: str) -> dict:
    """Prefix-cache hits and queries (tokens) from GET /metrics, read with prometheus_client's parser."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", timeout=10).text
    out = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            if sample.name in ("gpt2:prefix_cache_hits_total", "gpt2:prefix_cache_queries_total"):
                out[sample.name.split(":")[1].removesuffix("_total")] = int(sample.value)
    return out


# ------------------------------------------------------------------------------------ the server
def start_server(args, port: int, log_path: Path) -> tuple[subprocess.Popen, dict]:
    cmd = [sys.executable, "-m", "gpt2", "serve", args.model, "--port", str(port), "--max-batch",
           str(args.max_batch), "--max-queue", str(args.max_queue), "--model-name", "soak",
           "--prefix-cache-mb", str(args.prefix_cache_mb)]
    if args.chat_format != "none":
        cmd += ["--chat-format", args.chat_format]
    log = log_path.open("w")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gpt2 serve exited with status {proc.returncode}; see {log_path}")
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
            if r.status_code == 200:
                card = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).json()["data"][0]
                return proc, card
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_server(proc)
    raise SystemExit("gpt2 serve did not come up within 180 s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


def wait_idle(url: str, timeout: float) -> dict:
    """GET /health until nothing runs or waits (or the timeout): the server's counters at the end."""
    deadline = time.monotonic() + timeout
    while True:
        health = httpx.get(url + "/health", timeout=5).json()
        if (health["running"] == health["waiting"] == health["cache_rows"] == 0) or time.monotonic() > deadline:
            return health
        time.sleep(0.2)


# ------------------------------------------------------------------------------------- reporting
def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def summarise(args, tally: Tally, rss: list[tuple[float, int]], rss_end: int, health: dict, wall: float,
              card: dict, counters: dict) -> dict:
    mark = min(args.mark, args.duration)
    at_mark = min(rss, key=lambda s: abs(s[0] - mark))
    ttft = [t for _, t in tally.ttft]
    statuses = Counter()
    for (_, status), n in tally.status.items():
        statuses[str(status)] += n
    five_xx = sum(n for s, n in statuses.items() if s.isdigit() and int(s) >= 500) + statuses.get("stream_error", 0)
    rss_start = rss[0][1]
    growth = (rss_end - at_mark[1]) / at_mark[1]
    return {
        "command": "python bench/serve_soak.py " + " ".join(sys.argv[1:]),
        "cpu": cpu_name(), "cores": os.cpu_count(), "model": args.model, "max_model_len": card.get("max_model_len"),
        "duration_s": args.duration, "wall_s": round(wall, 1), "concurrency": args.concurrency,
        "max_batch": args.max_batch, "max_queue": args.max_queue, "burst_size": args.max_batch + args.max_queue + 8,
        "requests": sum(tally.status.values()),
        "by_status": dict(sorted(statuses.items())),
        "by_kind": {f"{k} {s}": n for (k, s), n in sorted(tally.status.items(), key=str)},
        "responses_5xx": five_xx,
        "problems": tally.problems[:50],
        "ttft_streams": len(ttft),
        "ttft_p50_s": pct(ttft, 50), "ttft_p99_s": pct(ttft, 99),
        "completion_tokens": tally.tokens, "tokens_per_s": tally.tokens / wall,
        "rss_start_mb": rss_start / 1024, "rss_mark_s": round(at_mark[0], 1), "rss_mark_mb": at_mark[1] / 1024,
        "rss_end_mb": rss_end / 1024, "rss_growth_from_mark": growth,
        "rss_samples_mb": [(round(t, 1), round(kb / 1024, 1)) for t, kb in rss],
        "client_disconnects": tally.disconnects,
        "server_end": {k: health.get(k) for k in ("running", "waiting", "cache_rows", "cache_capacity", "requests",
                                                   "rejected", "cancelled_jobs", "cancelled", "tokens", "steps")},
        "rows_freed": health["running"] == 0 and health["waiting"] == 0 and health["cache_rows"] == 0,
        "rss_growth_ok": growth <= 0.10,
        **prefix_summary(tally, health, counters),
    }


def prefix_summary(tally: Tally, health: dict, counters: dict) -> dict:
    samples = [*tally.prefix_cache, (float("nan"), health["prefix_cache_bytes"], health["prefix_cache_budget"])]
    queries, hits = counters.get("prefix_cache_queries", 0), counters.get("prefix_cache_hits", 0)
    return {"prefix_cache_budget_bytes": health["prefix_cache_budget"],
            "prefix_cache_max_bytes": max(b for _, b, _ in samples),
            "prefix_cache_end_bytes": health["prefix_cache_bytes"],
            "prefix_cache_samples": len(samples), "prefix_cache_evictions": health["prefix_cache_evictions"],
            "prefix_cache_within_budget": all(b <= budget for _, b, budget in samples),
            "prefix_cache_queries": queries, "prefix_cache_hits": hits,
            "prefix_cache_hit_rate": hits / queries if queries else None,
            "cached_tokens_in_usage": tally.cached_tokens}


def render(rec: dict) -> str:
    fmt = lambda v: "-" if v is None else f"{v * 1000:,.0f} ms"  # noqa: E731
    rows = [["CPU", f"{rec['cpu']}, {rec['cores']} cores"],
            ["load", f"{rec['concurrency']} clients for {rec['duration_s']:.0f} s (wall {rec['wall_s']:.0f} s); "
                     f"bursts of {rec['burst_size']}; --max-batch {rec['max_batch']} --max-queue {rec['max_queue']}"],
            ["requests by status", ", ".join(f"{s}: {n:,}" for s, n in rec["by_status"].items())],
            ["5xx responses", rec["responses_5xx"]],
            ["time to first token (streams)", f"p50 {fmt(rec['ttft_p50_s'])}, p99 {fmt(rec['ttft_p99_s'])} "
                                              f"over {rec['ttft_streams']:,} streams"],
            ["tokens/s", f"{rec['tokens_per_s']:,.1f} ({rec['completion_tokens']:,} completion tokens)"],
            ["server RSS", f"start {rec['rss_start_mb']:,.0f} MB, at {rec['rss_mark_s']:.0f} s "
                           f"{rec['rss_mark_mb']:,.0f} MB, end {rec['rss_end_mb']:,.0f} MB "
                           f"({rec['rss_growth_from_mark']:+.1%} from {rec['rss_mark_s']:.0f} s)"],
            ["streams left mid-way", f"{rec['client_disconnects']:,} by the clients; server cancelled "
                                     f"{rec['server_end']['cancelled_jobs']:,} jobs"],
            ["at the end (server)", f"running {rec['server_end']['running']}, waiting {rec['server_end']['waiting']}, "
                                    f"cache rows {rec['server_end']['cache_rows']}"],
            ["prefix cache", f"at most {rec['prefix_cache_max_bytes'] / 2**20:,.2f} MiB of its "
                             f"{rec['prefix_cache_budget_bytes'] / 2**20:,.2f} MiB budget over "
                             f"{rec['prefix_cache_samples']:,} samples (1 s apart); "
                             f"{rec['prefix_cache_evictions']:,} blocks evicted; hit rate "
                             + ("-" if rec["prefix_cache_hit_rate"] is None else f"{rec['prefix_cache_hit_rate']:.1%}")
                             + f" ({rec['prefix_cache_hits']:,} of {rec['prefix_cache_queries']:,} prompt tokens)"]]
    return markdown_table(["", ""], rows, "ll")


async def load(args, url: str, pid: int, n_positions: int) -> tuple[Tally, list[tuple[float, int]], float]:
    tally, rss = Tally(), []
    t0 = time.monotonic()
    deadline = t0 + args.duration
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(pid, t0, rss, stop))
    cache_sampler = asyncio.create_task(sample_prefix_cache(url, t0, tally, stop))
    tasks = [client_loop(i, url, tally, deadline, t0, args.seed, n_positions) for i in range(args.concurrency)]
    tasks.append(bursts(url, tally, deadline, args.burst_every, args.max_batch + args.max_queue + 8))
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=args.duration + args.grace)
    wall = time.monotonic() - t0
    stop.set()
    await sampler
    await cache_sampler
    return tally, rss, wall


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("model", help="what `gpt2 serve` takes: a run, checkpoint or model directory")
    p.add_argument("--duration", type=float, default=600, help="seconds of load (default: 600)")
    p.add_argument("--concurrency", type=int, default=16, help="clients, each one request at a time (default: 16)")
    p.add_argument("--max-batch", type=int, default=16, help="the server's --max-batch (default: 16)")
    p.add_argument("--max-queue", type=int, default=16, help="the server's --max-queue (default: 16)")
    p.add_argument("--burst-every", type=float, default=30, help="seconds between bursts (default: 30)")
    p.add_argument("--mark", type=float, default=120, help="the RSS mark, seconds after start (default: 120)")
    p.add_argument("--chat-format", default="plain", help="the server's --chat-format, or none (default: plain)")
    p.add_argument("--prefix-cache-mb", type=float, default=2.0,
                   help="the server's --prefix-cache-mb: small, so that the cache fills and evicts (default: 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grace", type=float, default=180, help="seconds past --duration before giving up")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "serve-soak.json")
    p.add_argument("--log", type=Path, default=Path(tempfile.gettempdir()) / "gpt2-serve-soak.log",
                   help="the server's log (tracebacks of any 5xx are there)")
    args = p.parse_args(argv)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    proc, card = start_server(args, port, args.log)
    try:
        tally, rss, wall = asyncio.run(load(args, url, proc.pid, card["max_model_len"]))
        health = wait_idle(url, timeout=30)
        rss_end = rss_kb(proc.pid)
        counters = prefix_cache_counters(url)
    finally:
        stop_server(proc)
    rec = summarise(args, tally, rss, rss_end, health, wall, card, counters)
    write_results(args.out, rec)
    print(render(rec))
    for problem in rec["problems"]:
        print("problem:", problem, file=sys.stderr)
    print(f"wrote {args.out}", file=sys.stderr)
    ok = rec["responses_5xx"] == 0 and rec["rows_freed"] and not rec["problems"] and rec["prefix_cache_within_budget"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
