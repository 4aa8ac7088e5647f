"""Ours against nanoGPT's character-level CPU recipe on the same text for the same minutes, in bits per byte.

    flock /tmp/gpt2-bench.lock python bench/vs_nanogpt.py --recipe douban-zh --nanogpt /tmp/nanogpt
    python bench/vs_nanogpt.py --run runs/douban-zh --nanogpt /tmp/nanogpt --minutes 8
    python bench/vs_nanogpt.py --train train.txt --val val.txt --nanogpt /tmp/nanogpt --minutes 5 --ours-bpb 2.1

nanoGPT is a checkout outside this repository (`--nanogpt PATH`, never modified: it runs from a scratch
directory). What the script does:

1. The documents. With `--run`, the training and held-out documents of that run's recipe, by the same rule
   its data preparation used (val_fraction hash or held-out files), control tokens removed; else the
   documents of `--train` and `--val` (any source gpt2.sources reads; --field, --delimiter).
2. nanoGPT's data, as its shakespeare_char/prepare.py makes it: one character vocabulary over all the text,
   uint16 train.bin/val.bin, the documents joined by "\\n".
3. nanoGPT's README CPU recipe (config/train_shakespeare_char.py --device=cpu --compile=False --block_size=64
   --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --dropout=0.0), for the same minutes: a short probe
   measures its seconds per iteration, then max_iters = lr_decay_iters = minutes × 60 / that, so its
   schedule ends when its time does, as ours does.
4. Scored on the held-out documents: every character predicted once (windows of block_size, each position
   predicting the next character; a leading "\\n" so the first character is predicted too), the
   separators' losses counted as our end-of-text token's are, and bits/byte = nats / ln 2 / the UTF-8
   bytes of the held-out documents' text (the separators, like our special tokens, count no bytes).
5. Ours: with `--recipe`, `gpt2 train RECIPE` runs at the same time as nanoGPT (one load for both, one
   thread each; its minutes are the recipe's train.max_minutes), then its held-out bits/byte (`gpt2 eval RUN` on its val
   shards: the same documents, our special tokens counting no bytes); or an existing `--run`; or `--ours-bpb`.

Prints both and the difference, and writes bench/results/vs-nanogpt-<name>.json.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, cpu_name, parser, write_results

RECIPE = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
          "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--dropout=0.0"]
PROBE_ITERS = 30


def run_split(run: Path | None, recipe: str | None = None) -> tuple[list[str], list[str]]:
    """(training documents, held-out documents) of a run's recipe (or a recipe's), control tokens removed."""
    from gpt2.config import load_config, load_run_config
    from gpt2.data.prepare import DEFAULT_VAL_FRACTION, is_val_document
    from gpt2.sources import resolve_source
    from gpt2.tokenizer.controls import CONTROL_RE
    from gpt2.train.setup import with_control_tokens

    data, controls = with_control_tokens((load_run_config(run) if run is not None else load_config(recipe)).data)
    src = resolve_source(data.source, field=data.field, delimiter=data.delimiter)
    train: list[str] = []
    val: list[str] = []
    if src.val_files and data.val_fraction is None:  # a named corpus's held-out files
        for f in src.files:
            (val if f.name in src.val_files else train).extend(dataclasses.replace(src, files=(f,)).documents())
    else:
        fraction = data.val_fraction if data.val_fraction is not None else DEFAULT_VAL_FRACTION
        for doc in src.documents():
            (val if is_val_document(doc, fraction) else train).append(doc)
    if controls:
        train, val = [CONTROL_RE.sub("", d) for d in train], [CONTROL_RE.sub("", d) for d in val]
    return train, val


def _nanogpt_data(work: Path, train: list[str], val: list[str]) -> tuple[dict[str, int], str]:
    import numpy as np

    train_text, val_text = "\n".join(train), "\n" + "\n".join(val)
    chars = sorted(set(train_text + val_text))
    stoi = {c: i for i, c in enumerate(chars)}
    d = work / "data" / "bench"
    d.mkdir(parents=True)
    np.array([stoi[c] for c in train_text], dtype=np.uint16).tofile(d / "train.bin")
    np.array([stoi[c] for c in val_text], dtype=np.uint16).tofile(d / "val.bin")
    # nanoGPT's train.py reads its vocabulary size from this pickle (we write it, never read it).
    with open(d / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}, f)
    return stoi, val_text


# Set by main(): when ours trains at the same time as nanoGPT, each gets one thread. Two processes of two
# OpenMP threads each on two cores wait at every op's barrier for a descheduled thread: on a 2-core Zen 4 our
# douban-zh run made ~2,000 tokens/s beside nanoGPT that way, against ~8,000 with one thread each.
_THREADS: dict[str, str] = {}


def _train_nanogpt(nanogpt: Path, work: Path, iters: int, *, eval_interval: int) -> tuple[float, str]:
    """Run nanoGPT's train.py for `iters` iterations in `work`; (wall seconds, its output)."""
    cmd = [sys.executable, str(nanogpt / "train.py"), str(nanogpt / "config" / "train_shakespeare_char.py"),
           *RECIPE, "--dataset=bench", "--out_dir=out", f"--max_iters={iters}", f"--lr_decay_iters={iters}",
           f"--eval_interval={eval_interval}", "--always_save_checkpoint=True"]
    t0 = time.time()
    r = subprocess.run(cmd, cwd=work, text=True, capture_output=True,
                       env={**os.environ, **_THREADS, "PYTHONPATH": str(nanogpt)})
    if r.returncode != 0:
        raise SystemExit(f"nanoGPT failed:\n{r.stderr[-3000:]}")
    return time.time() - t0, r.stdout


def _score_nanogpt(nanogpt: Path, work: Path, stoi: dict[str, int], val_text: str, val_bytes: int) -> dict:
    import torch

    spec = importlib.util.spec_from_file_location("nanogpt_model", nanogpt / "model.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ckpt = torch.load(work / "out" / "ckpt.pt", map_location="cpu", weights_only=True)
    model = mod.GPT(mod.GPTConfig(**ckpt["model_args"]))
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()})
    model.eval()
    ids = torch.tensor([stoi[c] for c in val_text])
    block = ckpt["model_args"]["block_size"]
    nats, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(ids) - 1, block):  # each window predicts the next `block` characters once
            x, y = ids[i : i + block], ids[i + 1 : i + 1 + block]
            x = x[: len(y)]
            logits, _ = model(x[None], y[None])  # (1, T, V)
            nats += float(torch.nn.functional.cross_entropy(logits[0], y, reduction="sum"))
            n += len(y)
    assert n == len(val_text) - 1
    return {"iters": int(ckpt["iter_num"]), "chars_predicted": n, "nats_per_char": nats / n,
            "bits_per_byte": nats / math.log(2) / val_bytes}


def _ours(run: Path) -> float:
    """Our held-out bits/byte: the run's own final evaluation (its metrics.jsonl end record, on every held-out
    token), else `gpt2 eval RUN` (which needs the run's shards still in the cache)."""
    metrics = run / "metrics.jsonl"
    if metrics.is_file():
        ends = [json.loads(line) for line in metrics.read_text().splitlines() if '"kind": "end"' in line]
        if ends and ends[-1].get("val_bpb") is not None:
            return float(ends[-1]["val_bpb"])
    r = subprocess.run([sys.executable, "-m", "gpt2", "eval", str(run), "--json", "--no-record"], cwd=REPO,
                       text=True, capture_output=True)
    if r.returncode != 0:
        raise SystemExit(f"gpt2 eval {run} failed: {r.stderr[-500:]}")
    return float(json.loads(r.stdout)["bits_per_byte"])


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--run", type=Path, help="our run directory: its recipe gives the split, its val shards our score")
    p.add_argument("--recipe", help="train ours with this recipe (`gpt2 train RECIPE`) side by side with nanoGPT, "
                   "both at once under the same load, then score it")
    p.add_argument("--train", help="training documents (with --val, instead of --run)")
    p.add_argument("--val", help="held-out documents")
    p.add_argument("--field", default="text")
    p.add_argument("--delimiter", default=None)
    p.add_argument("--ours-bpb", type=float, default=None, help="our held-out bits/byte, when not from --run")
    p.add_argument("--nanogpt", type=Path, required=True, help="a nanoGPT checkout (karpathy/nanoGPT)")
    p.add_argument("--minutes", type=float, default=None,
                   help="nanoGPT's training time (default: the recipe's train.max_minutes)")
    p.add_argument("--name", default=None, help="results name (default: the run's or the val file's)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of --recipe, as `gpt2 train` takes them")
    args = p.parse_args()
    # Ours starts first, so its run begins from the cache as it was (empty, for the recipe's figure).
    ours_proc, ours_run, ours_t0, ours_wall = None, args.run, 0.0, None
    if args.recipe is not None:
        from gpt2.config import load_config

        cfg = load_config(args.recipe, args.overrides)
        args.minutes = args.minutes or cfg.train.max_minutes
        ours_run = REPO / cfg.train.out_dir
        ours_t0 = time.time()
        _THREADS["OMP_NUM_THREADS"] = "1"
        ours_proc = subprocess.Popen([sys.executable, "-m", "gpt2", "train", args.recipe, *args.overrides], cwd=REPO,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, **_THREADS})
    if args.run is not None or args.recipe is not None:
        train, val = run_split(args.run, args.recipe)
    elif args.train and args.val:
        from gpt2.sources import parse_delimiter, read_documents

        opts = {"field": args.field, "delimiter": parse_delimiter(args.delimiter)}
        train, val = list(read_documents(args.train, **opts)), list(read_documents(args.val, **opts))
    else:
        raise SystemExit("give --run RUN, or --train FILE and --val FILE")
    if args.ours_bpb is None and ours_run is None:
        raise SystemExit("give --ours-bpb, or --run/--recipe for ours")
    if args.minutes is None:
        raise SystemExit("give --minutes")
    if args.ours_bpb is None and ours_proc is None:  # a finished run: scored before nanoGPT's minutes, not after
        args.ours_bpb = _ours(ours_run)
    val_bytes = sum(len(d.encode("utf-8")) for d in val)
    work = Path(tempfile.mkdtemp(prefix="vs-nanogpt-"))
    try:
        shutil.copy(args.nanogpt / "configurator.py", work)  # train.py execs it from its working directory
        stoi, val_text = _nanogpt_data(work, train, val)
        _, probe = _train_nanogpt(args.nanogpt, work, PROBE_ITERS, eval_interval=10**9)
        shutil.rmtree(work / "out", ignore_errors=True)
        # Its own per-iteration times after warm-up ("iter 12: loss 3.1, time 41.2ms, ...").
        ms = [float(t) for t in re.findall(r"^iter (?:[5-9]|\d\d+): .*time ([\d.]+)ms", probe, re.M)]
        iters = max(1, int(args.minutes * 60_000 / (sum(ms) / len(ms))))
        print(f"nanoGPT probe: {sum(ms) / len(ms):.1f} ms per iteration → {iters} iterations for {args.minutes} "
              "minutes", file=sys.stderr)
        wall, out = _train_nanogpt(args.nanogpt, work, iters, eval_interval=iters)
        theirs = _score_nanogpt(args.nanogpt, work, stoi, val_text, val_bytes)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ours_log = ""
    if ours_proc is not None:
        t0 = time.time()
        ours_log = ours_proc.communicate()[0]
        ours_wall = time.time() - ours_t0
        if ours_proc.returncode != 0:
            raise SystemExit(f"gpt2 train {args.recipe} failed:\n{ours_log[-2000:]}")
        print(f"ours finished {time.time() - t0:.0f} s after nanoGPT", file=sys.stderr)
    ours = args.ours_bpb if args.ours_bpb is not None else _ours(ours_run)
    name = args.name or args.recipe or (args.run.name if args.run else Path(args.val).stem)
    record = {"cpu": cpu_name(), "name": name, "minutes": args.minutes, "train_documents": len(train),
              "val_documents": len(val), "val_bytes": val_bytes, "vocabulary_chars": len(stoi),
              "nanogpt": {**theirs, "wall_s": wall, "recipe": RECIPE,
                          "last_log": [ln for ln in out.splitlines() if re.match(r"step \d+:", ln)][-1:]},
              "ours_bits_per_byte": ours, "ours_wall_s": ours_wall, "ours_log_tail": ours_log[-1500:],
              "difference": theirs["bits_per_byte"] - ours}
    write_results(REPO / "bench" / "results" / f"vs-nanogpt-{name}.json", record)
    print(f"held-out bits/byte on {len(val)} documents ({val_bytes:,} bytes): ours {ours:.4f}, nanoGPT "
          f"{theirs['bits_per_byte']:.4f} ({theirs['iters']} iterations in {wall:.0f} s); ours is "
          f"{theirs['bits_per_byte'] - ours:+.4f} below")


if __name__ == "__main__":
    main()
