"""Encoding speed: our Tokenizer's fast path against plain tiktoken with the same GPT-2 ranks, side by side.

    python bench/tokenizer_encode.py                        # needs ../shared/data; under a minute
    python bench/tokenizer_encode.py --repeats 5 --threads 2

The reference is `tiktoken.Encoding` built directly from ../shared/data/gpt2/gpt2.tiktoken with GPT-2's
pattern and <|endoftext|> = 50256, the encoding tiktoken.get_encoding("gpt2") gives. Ours is
`gpt2.tokenizer.load_tokenizer` on the same directory. Both encode the 25,000 IMDB test reviews (32 MB):
single thread (one call per review) and batch (encode_ordinary_batch). On a shared machine other work
comes and goes within seconds, so the reviews are cut into slices of 500 and each slice is timed with
ours and tiktoken back to back (in alternating order), `--repeats` times; a mode's time is the sum over
slices of each slice's best. The ids are checked equal. Bar: ours / tiktoken throughput >= 0.9.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

GPT2_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def best_of(repeats: int, slices: list[list[str]], fns: dict[str, Callable[[list[str]], object]]) -> dict[str, float]:
    """Sum over slices of the best time per slice, the contenders run back to back on each slice."""
    best = {k: [float("inf")] * len(slices) for k in fns}
    names = list(fns)
    for r in range(repeats):
        for i, part in enumerate(slices):
            for k in names if (r + i) % 2 == 0 else names[::-1]:
                t0 = time.perf_counter()
                fns[k](part)
                best[k][i] = min(best[k][i], time.perf_counter() - t0)
    return {k: sum(v) for k, v in best.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("GPT2_SHARED_DATA", REPO.parent / "shared" / "data")))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--slice", type=int, default=500, help="reviews per timed slice")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for the batch run")
    args = ap.parse_args()

    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    from gpt2.tokenizer import load_tokenizer

    ref = tiktoken.Encoding("gpt2", pat_str=GPT2_PAT, mergeable_ranks=load_tiktoken_bpe(str(args.data / "gpt2" / "gpt2.tiktoken")),
                            special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257)
    ours = load_tokenizer(args.data / "gpt2" / "gpt2.tiktoken")
    with open(args.data / "imdb_test.jsonl", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)

    assert ours.encode_ordinary_batch(texts, num_threads=args.threads) == ref.encode_ordinary_batch(texts, num_threads=args.threads), \
        "ids differ from tiktoken"

    slices = [texts[i:i + args.slice] for i in range(0, len(texts), args.slice)]
    rows = []
    for label, fns in [
        ("encode_ordinary, 1 thread", {"ours": lambda xs: [ours.encode_ordinary(t) for t in xs],
                                       "tiktoken": lambda xs: [ref.encode_ordinary(t) for t in xs]}),
        ("encode (special check), 1 thread", {"ours": lambda xs: [ours.encode(t) for t in xs],
                                              "tiktoken": lambda xs: [ref.encode(t) for t in xs]}),
        (f"encode_ordinary_batch, {args.threads} threads",
         {"ours": lambda xs: ours.encode_ordinary_batch(xs, num_threads=args.threads),
          "tiktoken": lambda xs: ref.encode_ordinary_batch(xs, num_threads=args.threads)}),
    ]:
        t = best_of(args.repeats, slices, fns)
        rows.append((label, n_bytes / t["ours"] / 1e6, n_bytes / t["tiktoken"] / 1e6, t["tiktoken"] / t["ours"]))
        print(f"  {label}: ours {t['ours']:.2f}s, tiktoken {t['tiktoken']:.2f}s", file=sys.stderr, flush=True)

    print(f"\nGPT-2 encoding of {len(texts):,} IMDB test reviews ({n_bytes:,} bytes), best of {args.repeats} per slice of {args.slice}; "
          f"tiktoken {tiktoken.__version__}, {os.cpu_count()} cores; ids identical\n")
    print("| mode | ours MB/s | tiktoken MB/s | ours / tiktoken |")
    print("| --- | ---: | ---: | ---: |")
    for label, o, r, ratio in rows:
        print(f"| {label} | {o:.2f} | {r:.2f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
