"""Tokenizing throughput of `gpt2 data prepare` with 1 and 2 workers, against plain tiktoken.

    python bench/data_prepare.py                          # IMDB train (34 MB), best of 3, about 1 minute
    python bench/data_prepare.py --max-mb 8 --repeats 5   # a quicker, smaller slice

Rows, all timed on the same documents and reported as MB of document text (UTF-8) per second:

- `tiktoken encode_ordinary, 1 thread`: the baseline. `enc = tiktoken.get_encoding("gpt2")` (loaded
  offline from ../shared/data/gpt2) calling `enc.encode_ordinary(doc)` on every document, one after
  another, in this process, on texts already in memory (no file reading, JSON parsing or writing is
  timed). Not `encode_ordinary_batch`, which runs threads.
- `prepare, 1 worker` / `prepare, 2 workers`: `gpt2.data.prepare.prepare(...)` end to end — read and
  parse the .jsonl, split train/val, tokenize, write shards and meta.json — timed by the `seconds` it
  reports (it excludes loading the tokenizer). 1 worker runs in this process; 2 workers are forked
  processes.

Targets from issue #4: 2 workers ≥ 1.7× 1 worker, and 1 worker ≥ 0.8× the tiktoken baseline. Each
row is the best of `--repeats` runs, interleaved so background load hits every row alike; the CPU
seconds (this process + its workers) are printed too. Before and after each repeat the script times
2 equal pure-Python jobs on 1 process and on 2 ("parallel headroom"): on a machine with 2 free cores
that is 2.0×; when other work holds a core it drops toward 1.0×, and no 2-worker measurement can beat
it. The 1- and 2-worker shards are checked to be byte-identical.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "imdb_train.jsonl"


def cpu_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _spin(n: int) -> int:
    s = 0
    for i in range(n):
        s += i
    return s


def parallel_headroom(n: int = 6_000_000) -> float:
    """How much faster 2 processes finish 2 equal pure-Python jobs than 1 process does (2.0 on an idle
    machine with 2 free cores). Below ~1.8 the machine is busy and no 2-worker number here can reach 1.7×."""
    import multiprocessing as mp

    t = time.perf_counter()
    _spin(n)
    _spin(n)
    serial = time.perf_counter() - t
    with mp.get_context("fork" if sys.platform.startswith("linux") else "spawn").Pool(2) as pool:
        pool.map(_spin, [1000, 1000])  # start both workers before timing
        t = time.perf_counter()
        pool.map(_spin, [n, n], chunksize=1)
        parallel = time.perf_counter() - t
    return serial / parallel


def plain_tiktoken(vocab_dir: Path, cache: Path):
    """tiktoken.get_encoding("gpt2") exactly as tiktoken ships it, offline: its download cache is filled
    with GPT-2's two files under the names tiktoken gives them (the sha1 of their URLs)."""
    import tiktoken

    cache.mkdir(parents=True, exist_ok=True)
    for name, key in (("vocab.bpe", "6d1cbeee0f20b3d9449abfede4726ed8212e3aee"),
                      ("encoder.json", "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6")):
        (cache / key).symlink_to(vocab_dir.resolve() / name)
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    return tiktoken.get_encoding("gpt2")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="a .jsonl file (default: IMDB train)")
    p.add_argument("--field", default="text")
    p.add_argument("--max-mb", type=float, default=None, help="use only the first MB of the file")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--vocab", type=Path, default=REPO.parent / "shared" / "data" / "gpt2",
                   help="directory with gpt2.tiktoken (and encoder.json, vocab.bpe)")
    args = p.parse_args(argv)
    if not args.source.is_file():
        print(f"error: {args.source} not found (pass --source)", file=sys.stderr)
        return 2

    from gpt2.data.prepare import prepare
    from gpt2.tokenizer import load_tokenizer

    tmp = Path(tempfile.mkdtemp(prefix="bench-data-"))
    try:
        # The project's tokenizer reads GPT-2's files from a private cache: nothing is downloaded.
        os.environ["GPT2_CACHE"] = str(tmp / "cache")
        tok_dir = tmp / "cache" / "tokenizers" / "gpt2"
        tok_dir.mkdir(parents=True)
        for name in ("encoder.json", "vocab.bpe", "gpt2.tiktoken"):
            (tok_dir / name).symlink_to(args.vocab.resolve() / name)
        tok = load_tokenizer("gpt2")
        enc = plain_tiktoken(args.vocab, tmp / "tiktoken-cache")

        src = args.source
        if args.max_mb:
            limit = int(args.max_mb * 1e6)
            src = tmp / "slice.jsonl"
            with open(args.source, "rb") as f, open(src, "wb") as g:
                n = 0
                for line in f:
                    if n >= limit:
                        break
                    g.write(line)
                    n += len(line)
        with open(src, encoding="utf-8") as f:
            docs = [json.loads(line)[args.field] for line in f if line.strip()]
        text_mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
        n_tokens = sum(len(enc.encode_ordinary(d)) for d in docs[:50])  # warm-up

        headroom = [parallel_headroom()]
        best: dict[str, float] = {}
        cpu: dict[str, float] = {}
        tokens: dict[str, int] = {}
        for r in range(args.repeats):
            t, c = time.perf_counter(), cpu_seconds()
            n_tokens = 0
            for d in docs:
                n_tokens += len(enc.encode_ordinary(d))
            dt, dc = time.perf_counter() - t, cpu_seconds() - c
            if dt < best.get("tiktoken", 1e9):
                best["tiktoken"], cpu["tiktoken"] = dt, dc
            tokens["tiktoken"] = n_tokens + len(docs)  # + one <|endoftext|> per document, as prepare adds
            for w in (1, 2):
                out = tmp / f"w{w}"
                shutil.rmtree(out, ignore_errors=True)
                c = cpu_seconds()
                res = prepare(src, out=out, tokenizer=tok, workers=w, field=args.field, val_fraction=0.01)
                dc = cpu_seconds() - c
                key = f"w{w}"
                if res.seconds < best.get(key, 1e9):
                    best[key], cpu[key] = res.seconds, dc
                tokens[key] = res.tokens("train") + res.tokens("val")
            headroom.append(parallel_headroom())
            print(f"repeat {r + 1}/{args.repeats}: tiktoken {text_mb / dt:.2f} MB/s", file=sys.stderr)

        same = all((tmp / "w1" / f.name).read_bytes() == f.read_bytes() for f in sorted((tmp / "w2").iterdir()))
        rows = [("tiktoken encode_ordinary, 1 thread", "tiktoken"), ("prepare, 1 worker", "w1"),
                ("prepare, 2 workers", "w2")]
        print(f"source: {args.source}{f' (first {args.max_mb} MB)' if args.max_mb else ''}: {len(docs):,} documents, "
              f"{text_mb:.1f} MB of text, {tokens['tiktoken']:,} tokens with <|endoftext|>")
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; best of {args.repeats}; "
              f"parallel headroom (2 pure-Python processes vs 1, ideal 2.00): "
              f"{min(headroom):.2f}-{max(headroom):.2f}×")
        print()
        print(f"| {'configuration':36} | {'seconds':>7} | {'MB/s':>6} | {'M tokens/s':>10} | {'CPU s':>6} |")
        print(f"|{'-' * 38}|{'-' * 8}:|{'-' * 7}:|{'-' * 11}:|{'-' * 7}:|")
        for label, key in rows:
            s = best[key]
            print(f"| {label:36} | {s:7.2f} | {text_mb / s:6.2f} | {tokens[key] / s / 1e6:10.2f} | {cpu[key]:6.2f} |")
        print()
        speedup = best["w1"] / best["w2"]
        vs_tiktoken = best["tiktoken"] / best["w1"]
        print(f"2 workers / 1 worker:          {speedup:.2f}×  (target ≥ 1.7)  {'ok' if speedup >= 1.7 else 'BELOW'}")
        print(f"1 worker / plain tiktoken:     {vs_tiktoken:.2f}×  (target ≥ 0.8)  {'ok' if vs_tiktoken >= 0.8 else 'BELOW'}")
        if max(headroom) < 1.8:
            print(f"note: this machine gave 2 processes only {max(headroom):.2f}× the speed of 1 while measuring "
                  "(other work is running): the 2-worker ratio above is bounded by that, not by prepare.")
        print(f"shards identical for 1 and 2 workers: {same}; token counts agree: "
              f"{tokens['w1'] == tokens['w2'] == tokens['tiktoken']}")
        return 0 if same else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
