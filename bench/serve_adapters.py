"""Many LoRA adapters on one `gpt2 serve`: tokens/s with requests mixed over 3 adapters against one adapter
alone, and the servers' memory, side by side in one run.

    python bench/serve_adapters.py --base runs/sft-alpaca --requests 32 --rounds 10   # a trained model's shapes
    python bench/serve_adapters.py --base gpt2                    # GPT-2 124M shapes, random weights
    python bench/serve_adapters.py --base gpt2 --rank 8 --targets c_attn      # PEFT's default LoRA for GPT-2

Three adapters of --rank on --targets are made for the base (random A and B: speed and memory depend on
their shapes, not their values) and saved as PEFT directories in a temporary folder. Three servers run as
subprocesses on loopback, all started before any timing:
- `base`:  `gpt2 serve BASE` (the base alone: no LoRA anywhere);
- `one`:   `gpt2 serve ADAPTER_A` (one adapter served by itself, as before --adapter existed);
- `multi`: `gpt2 serve BASE --adapter a=A --adapter b=B --adapter c=C`.
Then --rounds rounds each run, in turn, --requests streamed completions from --concurrency clients
(--prompt-tokens random byte-token prompt, --max-tokens new tokens with ignore_eos, temperature 0.8, a seed
each) against: the base on `base`; adapter a on `one`; adapter a only on `multi`; a, b and c in turn on
`multi` (so every decode step mixes the three). Each round starts the order one place further on, so a
change in the machine's load hits every workload alike. The table gives aggregate tokens/s (completion
tokens / wall time, summed over rounds), its ratio to `one`, and the median over rounds of the ratio within
a round (robust to the load of a shared machine changing between rounds). Then the same workloads run
--in-process-rounds times on the scheduler's own steps in this process (Scheduler.step_once: no HTTP, no
other server of ours running meanwhile), --concurrency jobs submitted at once each time. Memory: each server's resident
set after the load (VmRSS) and its peak (VmHWM, /proc), against the bytes of one copy of the model's
weights (what each merged copy of an adapter would add).
"""

from __future__ import annotations

import asyncio
import copy
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
from common import cpu_info, markdown_table, parser, wait_for_server, write_results
from serve_load import prepare_model

ONE = "one adapter alone"
WORKLOADS = [("base", "base", ["base"]), ("one", ONE, ["a"]),
             ("multi", "one adapter on the 3-adapter server", ["a"]),
             ("multi", "mixed over 3 adapters", ["a", "b", "c"])]


def make_adapters(base: str, workdir: Path, *, rank: int, targets: list[str]) -> tuple[Path, dict[str, Path], int]:
    """The base's directory, three random adapters of it (PEFT directories) and the bytes of its weights."""
    import torch

    from gpt2.load import load, resolve_model_dir
    from gpt2.model.lora import LoRAConfig, inject_lora, lora_layers, save_adapter

    base_dir = resolve_model_dir(base).resolve()
    model = load(base_dir, device="cpu").model
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())  # the tied head once
    out = {}
    for i, name in enumerate("abc"):
        torch.manual_seed(i)
        m = inject_lora(copy.deepcopy(model), LoRAConfig(rank=rank, alpha=2 * rank, targets=tuple(targets)))
        with torch.no_grad():
            for layer in lora_layers(m).values():
                layer.lora_B.weight.normal_(0, 0.02)
        out[name] = save_adapter(m, workdir / f"adapter-{name}", base_model_name_or_path=str(base_dir))
    return base_dir, out, weight_bytes


def start(argv: list[str], max_batch: int, log: Path, threads: int | None) -> tuple[subprocess.Popen, str]:
    """`gpt2 serve ARGV` on a free loopback port, its log (uvicorn's access lines too) to a file, not a pipe
    nobody drains."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "gpt2", "serve", *argv, "--port", str(port), "--max-batch", str(max_batch),
           "--max-queue", "256"]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, text=True, env=env)
    return proc, f"http://127.0.0.1:{port}"


def wait_up(proc: subprocess.Popen, url: str, log: Path) -> None:
    wait_for_server(proc, url, why=lambda: log.read_text()[-2000:])


def memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a process, in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}


async def stream(client: httpx.AsyncClient, body: dict) -> tuple[int, int]:
    """One streamed completion: (HTTP status, completion tokens from its usage chunk). Events are split on
    blank lines by hand: httpx's aiter_lines also breaks at U+2028 and U+0085, which a token's text may
    hold (JSON leaves them unescaped, and SSE lines end only at CR or LF)."""
    async with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return r.status_code, 0
        buffer, tokens = b"", 0
        async for chunk in r.aiter_bytes():
            *events, buffer = (buffer + chunk).split(b"\n\n")
            for event in events:
                if not event.startswith(b"data: {"):
                    continue
                data = json.loads(event[6:])
                if "error" in data:
                    return 500, 0
                tokens = data["usage"]["completion_tokens"] if data.get("usage") else tokens
    return 200, tokens


async def load_level(url: str, models: list[str], n: int, args, seed: int) -> tuple[int, float]:
    """n streamed completions from --concurrency clients, request i to models[i % len(models)]: (tokens, wall s)."""
    rng = random.Random(seed)
    bodies = [{"model": models[i % len(models)], "prompt": [rng.randrange(256) for _ in range(args.prompt_tokens)],
               "max_tokens": args.max_tokens, "temperature": 0.8, "seed": seed * 1000 + i, "ignore_eos": True,
               "stream": True, "stream_options": {"include_usage": True}} for i in range(n)]
    bodies.reverse()  # workers pop from the end: requests go out in order, so the models interleave
    tokens, failed = 0, 0
    limits = httpx.Limits(max_connections=args.concurrency + 4, max_keepalive_connections=args.concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as client:

        async def worker() -> None:
            nonlocal tokens, failed
            while bodies:
                status, n_tokens = await stream(client, bodies.pop())
                tokens += n_tokens
                failed += status != 200

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        wall = time.perf_counter() - t0
    if failed:
        raise SystemExit(f"{failed} requests to {url} failed")
    return tokens, wall


def run(args, workdir: Path) -> dict:
    base = prepare_model(args.base, workdir)
    base_dir, adapters, weight_bytes = make_adapters(base, workdir, rank=args.rank, targets=args.targets)
    argvs = {"base": [str(base_dir), "--model-name", "base"],
             "one": [str(adapters["a"]), "--model-name", "a"],
             "multi": [str(base_dir), "--model-name", "base", *(x for n, d in adapters.items()
                                                                for x in ("--adapter", f"{n}={d}"))]}
    servers = {k: start(v, args.max_batch, workdir / f"{k}.log", args.threads) for k, v in argvs.items()}
    try:
        for k, (proc, url) in servers.items():
            wait_up(proc, url, workdir / f"{k}.log")
        for key, _, models in WORKLOADS:  # warm-up: first calls, weight packing
            asyncio.run(load_level(servers[key][1], models, 2 * len(models), args, seed=999))
        rounds: list[dict[str, tuple[int, float]]] = []
        for r in range(args.rounds):
            rounds.append({})
            for key, label, models in WORKLOADS[r % 4:] + WORKLOADS[: r % 4]:  # each takes every place in turn
                tokens, wall = asyncio.run(load_level(servers[key][1], models, args.requests, args, seed=r))
                rounds[-1][label] = (tokens, wall)
                print(f"  round {r + 1}, {label}: {tokens / wall:.1f} tokens/s", file=sys.stderr, flush=True)
        mem = {k: memory(proc.pid) for k, (proc, _) in servers.items()}
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        for proc, _ in servers.values():
            proc.wait(timeout=60)
    scheduler = in_process(base_dir, adapters, args) if args.in_process_rounds else None
    return {"http": summarise(rounds), "scheduler": scheduler, "memory_mb": mem,
            "weights_mb": weight_bytes / 2**20, "base_dir": str(base_dir)}


def summarise(rounds: list[dict[str, tuple[int, float]]]) -> dict:
    """Pooled tokens/s per workload, and the median over rounds of its ratio to `one` within the round
    (workloads seconds apart): robust to the machine's load changing between rounds, which pooling is not."""
    tps = {label: sum(rd[label][0] for rd in rounds) / sum(rd[label][1] for rd in rounds) for _, label, _ in WORKLOADS}
    ratios = {label: statistics.median((rd[label][0] / rd[label][1]) / (rd[ONE][0] / rd[ONE][1]) for rd in rounds)
              for _, label, _ in WORKLOADS}
    return {"tps": tps, "ratio_median": ratios, "rounds": rounds}


def in_process(base_dir: Path, adapters: dict[str, Path], args) -> dict:
    """The same workloads on the scheduler's own steps (Scheduler.step_once, no HTTP, no second process): each
    round submits --concurrency jobs at once and steps until they finish. Far less noise than the servers on
    a shared machine, as nothing else of ours runs meanwhile."""
    import torch

    from gpt2.load import load
    from gpt2.model.lora import read_adapter
    from gpt2.serve.scheduler import Job, Scheduler, SeqParams

    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    base, one = load(base_dir, device="cpu"), load(adapters["a"], device="cpu")
    loras = [read_adapter(d, base=base.model) for d in adapters.values()]
    scheds = {"base": Scheduler(base.model, base.tokenizer, max_batch=args.max_batch, start=False),
              "one": Scheduler(one.model, one.tokenizer, max_batch=args.max_batch, start=False),
              "multi": Scheduler(base.model, base.tokenizer, max_batch=args.max_batch, start=False, adapters=loras)}
    slot = {"base": 0, "a": 1, "b": 2, "c": 3}

    def workload(key: str, models: list[str], seed: int) -> tuple[int, float]:
        sched, rng = scheds[key], random.Random(seed)
        for i in range(args.concurrency):
            params = SeqParams(max_tokens=args.max_tokens, temperature=0.8, seed=seed * 1000 + i, ignore_eos=True)
            sched.submit(Job([[rng.randrange(256) for _ in range(args.prompt_tokens)]], params, emit=lambda _: None,
                             adapter=slot[models[i % len(models)]] if key == "multi" else 0))
        t0 = time.perf_counter()
        while sched.rows or sched.waiting:
            sched.step_once()
        return args.concurrency * args.max_tokens, time.perf_counter() - t0

    for key, _, models in WORKLOADS:  # warm-up
        workload(key, models, seed=999)
    rounds: list[dict[str, tuple[int, float]]] = []
    for r in range(args.in_process_rounds):
        rounds.append({label: workload(key, models, seed=r)
                       for key, label, models in WORKLOADS[r % 4:] + WORKLOADS[: r % 4]})
        print(f"  in-process round {r + 1}: " + ", ".join(f"{k} {t / w:.1f}" for k, (t, w) in rounds[-1].items()),
              file=sys.stderr, flush=True)
    return summarise(rounds)


def report(args, res: dict) -> None:
    for key, title in (("http", "servers over HTTP"), ("scheduler", "the scheduler's own steps, in-process")):
        if res[key] is None:
            continue
        one = res[key]["tps"][ONE]
        print(f"\n{title}:")
        print(markdown_table(["workload", "tokens/s (all rounds)", "× one adapter alone", "median of the rounds' ×"],
                             [[label, f"{tps:.1f}", f"{tps / one:.2f}", f"{res[key]['ratio_median'][label]:.2f}"]
                              for label, tps in res[key]["tps"].items()]))
    mem, w = res["memory_mb"], res["weights_mb"]
    print()
    print(markdown_table(["server", "RSS after the load (MB)", "peak RSS (MB)"],
                         [[k, f"{m['VmRSS']:.0f}", f"{m['VmHWM']:.0f}"] for k, m in mem.items()]))
    extra = mem["multi"]["VmHWM"] - mem["base"]["VmHWM"]
    print(f"\none copy of the weights: {w:.1f} MB; the 3-adapter server's peak is {extra:+.1f} MB over the base's, "
          f"against +{3 * w:.1f} MB for three more copies (one merged model per adapter)")
    for key in ("http", "scheduler"):
        if res[key] is not None:
            print(f"mixed over 3 adapters / one adapter alone ({key}), median over rounds: "
                  f"{res[key]['ratio_median']['mixed over 3 adapters']:.2f} (target >= 0.7)")
    print(f"peak RSS of the 3-adapter server {'<' if extra < 3 * w else '>='} base + 3 copies")


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--base", default="gpt2", help="a preset (random weights) or anything `gpt2 serve` takes")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--targets", type=lambda s: s.split(","), default=["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"],
                   help="comma-separated LoRA targets (default: all four block layers)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--requests", type=int, default=16, help="requests per workload per round (default: 16)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of every server and of the in-process part (default: torch's own, one per "
                   "core); 1 keeps a shared machine's other load from stalling OpenMP's threads on each other")
    p.add_argument("--in-process-rounds", type=int, default=5,
                   help="rounds of the same workloads on the scheduler in this process (0: none)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)

    name, flags = cpu_info()
    cpu = f"{name}, {os.cpu_count()} logical cores, flags: {', '.join(flags) or 'none of avx2/avx512/amx'}"
    print(f"CPU: {cpu}")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        res = run(args, Path(tmp))
    print(f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after (other processes slow every "
          "workload alike)")
    print(f"base {args.base}; 3 adapters of rank {args.rank} on {', '.join(args.targets)}; {args.concurrency} "
          f"concurrent streams, {args.prompt_tokens} prompt + {args.max_tokens} new tokens per request, "
          f"{args.requests} requests per workload × {args.rounds} rounds, --max-batch {args.max_batch}, fp32, "
          f"{args.threads or 'default'} torch threads")
    report(args, res)
    if args.json:
        write_results(Path(args.json), {"cpu": cpu, "args": vars(args), **res,
                                        "load_average": [load_before, os.getloadavg()[0]]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
