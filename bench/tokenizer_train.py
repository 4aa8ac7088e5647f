"""Training speed and compression: our BPE trainer against HF `tokenizers`' BpeTrainer, side by side.

    python bench/tokenizer_train.py                       # needs ../shared/data; about 1-2 minutes
    python bench/tokenizer_train.py --data /path/to/data --quick   # tinyshakespeare only

Both trainers see the same documents already in memory, the same vocabulary size (256 bytes + merges
+ <|endoftext|>), the same min_frequency and the same pre-split (GPT-2's regex; HF's ByteLevel with
add_prefix_space=False uses the original GPT-2 pattern, which tiktoken's possessive form equals).
HF trains on all cores (Rayon); ours on one. Compression is tokens per UTF-8 byte on held-out
IMDB test reviews, each vocabulary encoding with its own library. Ratios: time ours / HF (the bar
is <= 5), and the relative difference of tokens per byte (the bar is within 1%).

Each of our vocabularies is also exported to HF tokenizer.json and loaded by `tokenizers`, which must
give our ids on every held-out review. Also: train on the Chinese hotel reviews and check that every Chinese review (both files)
round-trips through our tokenizer and that our HF tokenizer.json export gives the same ids in
`tokenizers` on those reviews.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def texts(path: Path, field: str = "text") -> list[str]:
    """The documents `gpt2 tokenizer train --input PATH --field FIELD` trains on (the project's one reader)."""
    from gpt2.sources import read_documents

    return list(read_documents(path, field=field))


def train_hf(docs: list[str], vocab_size: int, min_frequency: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer)
    return tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("GPT2_SHARED_DATA", REPO.parent / "shared" / "data")))
    ap.add_argument("--min-frequency", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="tinyshakespeare only, compression on 2,000 test reviews")
    args = ap.parse_args()

    import tokenizers

    from gpt2.tokenizer import train_bpe
    from gpt2.tokenizer.encoding import Tokenizer

    data: Path = args.data
    held_out = texts(data / "imdb_test.jsonl")
    if args.quick:
        held_out = held_out[:2000]
    held_bytes = sum(len(t.encode("utf-8")) for t in held_out)
    runs = [("tinyshakespeare.txt", 4096, lambda: texts(data / "tinyshakespeare.txt"))]
    if not args.quick:
        runs.append(("imdb_train.jsonl", 16384, lambda: texts(data / "imdb_train.jsonl")))

    rows = []
    for name, vocab_size, load in runs:
        docs = load()
        t0 = time.perf_counter()
        ours = train_bpe(docs, vocab_size=vocab_size, min_frequency=args.min_frequency)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        hf = train_hf(docs, vocab_size, args.min_frequency)
        t_hf = time.perf_counter() - t0
        ids_ours = ours.encode_ordinary_batch(held_out, num_threads=os.cpu_count() or 1)
        n_ours = sum(map(len, ids_ours))
        n_hf = sum(len(e.ids) for e in hf.encode_batch(held_out, add_special_tokens=False))
        # Our HF tokenizer.json export, loaded by `tokenizers`, must give our ids on every held-out review.
        with tempfile.TemporaryDirectory() as tmp:
            exported = tokenizers.Tokenizer.from_file(str(ours.save_hf(tmp)))
            same = sum(e.ids == x for e, x in zip(exported.encode_batch(held_out, add_special_tokens=False), ids_ours))
        rows.append((name, vocab_size, ours.n_vocab, hf.get_vocab_size(), t_ours, t_hf, n_ours / held_bytes,
                     n_hf / held_bytes, same))
        print(f"  {name}: ours {t_ours:.2f}s, HF {t_hf:.2f}s", file=sys.stderr, flush=True)

    print(f"\nBPE training, ours (pure Python, 1 thread) vs HF tokenizers {__import__('tokenizers').__version__} "
          f"({os.cpu_count()} cores); compression on {len(held_out):,} held-out IMDB test reviews ({held_bytes:,} bytes)\n")
    print("| corpus | vocab (ours / HF) | ours s | HF s | time ratio | ours tok/byte | HF tok/byte | difference "
          "| our tokenizer.json export: same ids |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, vs, nv_o, nv_h, t_o, t_h, c_o, c_h, same in rows:
        diff = (c_o - c_h) / c_h * 100
        print(f"| {name} | {vs} ({nv_o} / {nv_h}) | {t_o:.2f} | {t_h:.2f} | {t_o / t_h:.2f}x | {c_o:.4f} | {c_h:.4f} | "
              f"{diff:+.2f}% | {same:,} / {len(held_out):,} |")

    # Chinese: train on the hotel reviews, round-trip both Chinese files, and check the HF export agrees.
    zh_train = texts(data / "chnsenticorp_hotel_reviews_zh.csv", "review")
    zh_all = zh_train + texts(data / "douban_movie_reviews_zh.jsonl")
    t0 = time.perf_counter()
    zh = train_bpe(zh_train, vocab_size=8192, min_frequency=args.min_frequency)
    t_zh = time.perf_counter() - t0
    t0 = time.perf_counter()
    zh_hf = train_hf(zh_train, 8192, args.min_frequency)
    t_zh_hf = time.perf_counter() - t0
    ids = zh.encode_ordinary_batch(zh_all)
    bad = sum(zh.decode(x) != t for x, t in zip(ids, zh_all))
    with tempfile.TemporaryDirectory() as tmp:
        exported = tokenizers.Tokenizer.from_file(str(Tokenizer.save_hf(zh, tmp)))
        same = sum(e.ids == x for e, x in zip(exported.encode_batch(zh_all, add_special_tokens=False), ids))
    zh_bytes = sum(len(t.encode("utf-8")) for t in zh_all)
    n_zh_hf = sum(len(e.ids) for e in zh_hf.encode_batch(zh_all, add_special_tokens=False))
    print(f"\nChinese (trained on chnsenticorp, vocab 8192): ours {t_zh:.2f}s, HF {t_zh_hf:.2f}s "
          f"({t_zh / t_zh_hf:.2f}x); on both Chinese files, {len(zh_all):,} reviews ({zh_bytes:,} bytes): ours "
          f"{sum(map(len, ids)) / zh_bytes:.4f} tok/byte, HF {n_zh_hf / zh_bytes:.4f}; {len(zh_all) - bad:,} "
          f"round-trip exactly; {same:,} get identical ids from our exported tokenizer.json in `tokenizers`")


if __name__ == "__main__":
    main()
