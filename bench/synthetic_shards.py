"""Random token shards in llm.c's format, for timing a recipe without its corpus (bench/gpu_check.sh uses it).

    python bench/synthetic_shards.py /tmp/shards --train-tokens 1000000 --val-tokens 100000 --vocab 50257

Writes train_000000.bin and val_000000.bin with gpt2.data.shards.write_shard (uint16 tokens below
`--vocab`, each document starting with the end-of-text id vocab-1 every --doc-len tokens, as prepare
writes them). A directory of shards without meta.json is used as it is by `gpt2 train ... data.dir=DIR`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from gpt2.data.shards import write_shard


def write_synthetic_shards(out: str | Path, *, train_tokens: int, val_tokens: int, vocab: int = 50257,
                           doc_len: int = 1000, seed: int = 0) -> Path:
    """Write the two shards into `out` (created if missing) and return it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_tokens), ("val", val_tokens)):
        tokens = rng.integers(0, vocab - 1, size=n, dtype=np.uint16)
        tokens[::doc_len] = vocab - 1  # <|endoftext|> before each document
        write_shard(out / f"{split}_000000.bin", tokens, dtype=np.dtype(np.uint16))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--train-tokens", type=int, default=12_000_000)
    p.add_argument("--val-tokens", type=int, default=1_000_000)
    p.add_argument("--vocab", type=int, default=50257)
    args = p.parse_args(argv)
    write_synthetic_shards(args.out, train_tokens=args.train_tokens, val_tokens=args.val_tokens, vocab=args.vocab)
    print(f"wrote {args.train_tokens:,} train and {args.val_tokens:,} val tokens to {args.out}")


if __name__ == "__main__":
    main()
