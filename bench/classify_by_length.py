"""Where a classifier's errors are: test accuracy by each text's length in tokens, and what reading both ends adds.

    python bench/classify_by_length.py runs/finetune-imdb --file ../shared/data/imdb_test.jsonl --limit 4000

A checkpoint sees at most `max_length` tokens of a text (for finetune-imdb: the last 256). This scores a
random sample of a labelled file (seed 0) as `gpt2 classify` does, then prints the accuracy for each
bucket of the texts' full token counts, so one can tell whether long texts, cut to fit, are where the
errors are. It also scores each text a second time from its other end (`truncation_side` flipped) and
averages the two probabilities: what a classifier reading both ends of a long text would get.
The table goes to stdout; `--json OUT` writes it as JSON too.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

BUCKETS = ((1, 128), (128, 256), (256, 512), (512, None))


def accuracy(pred: list[int], gold: list[int], keep: list[bool]) -> tuple[int, float | None]:
    n = sum(keep)
    right = sum(p == g for p, g, k in zip(pred, gold, keep) if k)
    return n, (right / n if n else None)


def main(argv: list[str] | None = None) -> int:
    from gpt2.finetune.classify_inference import Reading, classify
    from gpt2.finetune.data import read_labelled

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a classification checkpoint or run directory")
    p.add_argument("--file", required=True, help="a labelled csv/tsv/jsonl/parquet file")
    p.add_argument("--text-field", default="text")
    p.add_argument("--label-field", default="label")
    p.add_argument("--limit", type=int, default=4000, help="score a random sample of this many texts (0: all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", dest="json_out", help="also write the table to this JSON file")
    args = p.parse_args(argv)

    data = read_labelled(args.file, text_field=args.text_field, label_field=args.label_field)
    rows = list(zip(data.texts, data.labels))
    random.Random(0).shuffle(rows)
    if args.limit:
        rows = rows[: args.limit]
    texts, labels = [t for t, _ in rows], [y for _, y in rows]
    model, tok, directory = Reading(device="cpu").load(args.checkpoint)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    gold = [names.index(y) for y in labels]
    lengths = [len(ids) for ids in tok.encode_ordinary_batch(texts)]
    side = model.config.truncation_side or "right"
    other = "left" if side == "right" else "right"
    p_own = classify(model, tok, texts, batch_size=args.batch_size)
    p_other = classify(model, tok, texts, batch_size=args.batch_size, truncation_side=other)
    argmax = lambda ps: [max(range(len(q)), key=q.__getitem__) for q in ps]  # noqa: E731
    pred_own = argmax(p_own)
    pred_both = argmax([[(a + b) / 2 for a, b in zip(q, r)] for q, r in zip(p_own, p_other)])

    max_length = model.config.max_length or model.config.n_positions
    print(f"{directory}: reads the {'last' if side == 'left' else 'first'} {max_length} tokens; "
          f"{len(texts):,} texts of {args.file} (random sample, seed 0)\n")
    print(f"| tokens in the text | texts | accuracy, as trained ({side} cut) | both ends averaged |")
    print("|---|---:|---:|---:|")
    table = []
    for lo, hi in (*BUCKETS, (1, None)):
        keep = [n >= lo and (hi is None or n < hi) for n in lengths]
        n, acc = accuracy(pred_own, gold, keep)
        _, acc_both = accuracy(pred_both, gold, keep)
        label = "all" if (lo, hi) == (1, None) else f"{lo}-{hi - 1}" if hi else f"{lo}+"
        table.append({"tokens": label, "texts": n, "accuracy": acc, "both_ends": acc_both})
        fmt = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
        print(f"| {label} | {n:,} | {fmt(acc)} | {fmt(acc_both)} |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"checkpoint": str(directory), "file": args.file,
                                                    "max_length": max_length, "side": side, "rows": table},
                                                   indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
