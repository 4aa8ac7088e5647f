"""Compare variants of the default recipe at equal wall time, without the machine's load deciding the answer.

    python bench/recipe_sweep.py                                   # the sweep that chose configs/shakespeare-cpu.yaml
    python bench/recipe_sweep.py --variant "w256-adamw:model.n_embd=256 optim.name=adamw optim.lr=2e-3" \\
        --variant "w192-muon:model.n_embd=192 optim.name=muon"      # your own variants (name:overrides)

A time-budgeted run (`train.max_minutes`) ends where the machine's speed at that moment says, so two variants
trained side by side, or on a busy machine, are not compared at equal time. This script splits the two
questions:
1. **speed**: each variant alone, 2 threads, 30 steps of `gpt2 train`; its tokens/s is the median of the
   rates logged from step 10 on;
2. **learning**: each variant then trains the number of steps its speed fits into the budget
   (`--seconds`, default 510: the recipe's 8.75-minute loop less its evaluation passes), with
   `train.max_minutes=null` so the schedule runs on steps, one thread each, `--parallel` runs at a time; the
   final validation bits per byte on the two held-out plays is what it learned.
The same seed, data, tokenizer and shards for all (the cache: $GPT2_CACHE or ~/.cache/gpt2-scratch). Prints
a Markdown table and writes bench/results/recipe-sweep.json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import FIXED_SHAPE, REPO, cpu_info, markdown_table, parser, write_results

# The sweep that chose the recipe (README, "The default run"): the AdamW recipe before it, Muon on it, a
# narrower model that fits more tokens into the budget, then the learning rate.
VARIANTS = {
    "w256-adamw-lr2e-3": "model.n_embd=256 optim.name=adamw optim.lr=2e-3",
    "w256-muon-lr2e-3": "model.n_embd=256 optim.name=muon optim.lr=2e-3",
    "w256-muon-lr3e-3": "model.n_embd=256 optim.name=muon optim.lr=3e-3",
    "w192-muon-lr2e-3": "model.n_embd=192 optim.name=muon optim.lr=2e-3",
    "w192-muon-lr3e-3": "model.n_embd=192 optim.name=muon optim.lr=3e-3",
    "w192-muon-lr4e-3": "model.n_embd=192 optim.name=muon optim.lr=4e-3",
    "w192-muon-lr6e-3": "model.n_embd=192 optim.name=muon optim.lr=6e-3",
    "w192-muon-lr8e-3": "model.n_embd=192 optim.name=muon optim.lr=8e-3",
}
QUIET = ["eval.interval=0", "sample.interval=0", "checkpoint.interval=0"]


def tokens_per_step(overrides: list[str]) -> int:
    """micro_batch_size × seq_len of the default recipe with these overrides."""
    from gpt2.config import load_config

    cfg = load_config("shakespeare-cpu", overrides)
    return cfg.train.micro_batch_size * cfg.train.seq_len


def gpt2_train(out: Path, overrides: list[str]) -> list[dict]:
    """One `gpt2 train` process (the default recipe + overrides); its metrics.jsonl records."""
    argv = [sys.executable, "-m", "gpt2", "train", f"train.out_dir={out}", *QUIET, *FIXED_SHAPE, *overrides]
    r = subprocess.run(argv, cwd=REPO, text=True, capture_output=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if r.returncode != 0:
        sys.exit(f"{' '.join(argv[2:])} exited with {r.returncode}:\n{(r.stdout + r.stderr)[-2000:]}")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def speed(out: Path, overrides: list[str]) -> float:
    """Tokens/s of the variant alone on 2 threads: the median logged rate from step 10 of 30."""
    records = gpt2_train(out, [*overrides, "train.threads=2", "train.max_steps=30", "train.log_interval=5"])
    return statistics.median(x["tok_per_s"] for x in records if x["kind"] == "train" and x["step"] >= 10)


def learn(out: Path, overrides: list[str], steps: int) -> dict:
    """The variant trained for `steps` steps on one thread, schedule on steps; its end record."""
    records = gpt2_train(out, [*overrides, "train.threads=1", "train.max_minutes=null", f"train.max_steps={steps}",
                               "train.log_interval=25"])
    start = next(x for x in records if x["kind"] == "start")
    end = next(x for x in records if x["kind"] == "end")
    return {"parameters": start["parameters"], "optimizer": start["optimizer"], "dtype": start["dtype"],
            "tokens": end["tokens"], "val_loss": end["val_loss"], "val_bpb": end["val_bpb"]}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--variant", action="append", default=None, metavar="NAME:OVERRIDES",
                   help="a variant: a name, a colon, then space-separated key=value overrides (repeatable)")
    p.add_argument("--seconds", type=float, default=510.0, help="the training time each variant gets")
    p.add_argument("--steps", action="append", default=[], metavar="NAME=N",
                   help="train variant NAME for N steps without probing its speed (a speed measured alone before: "
                        "a probe disturbed by other work would give it too few steps)")
    p.add_argument("--dtype", default=None, help="train.dtype for every variant (fp32 stands in for a slow CPU)")
    p.add_argument("--parallel", type=int, default=2, help="fixed-step runs at a time (one thread each)")
    p.add_argument("--out", type=Path, default=None, help="keep the run directories here (default: a temp dir)")
    p.add_argument("--results", type=Path, default=REPO / "bench" / "results" / "recipe-sweep.json")
    args = p.parse_args(argv)
    variants = dict(v.split(":", 1) for v in args.variant) if args.variant else VARIANTS
    if args.dtype:
        variants = {name: f"{ov} train.dtype={args.dtype}".strip() for name, ov in variants.items()}
    fixed = {name: int(n) for name, n in (s.split("=", 1) for s in args.steps)}
    with tempfile.TemporaryDirectory(prefix="recipe-sweep-") as tmp:
        root = args.out or Path(tmp)
        rows = {}
        for name, overrides in variants.items():  # alone, one after the other: the speeds
            batch = tokens_per_step(overrides.split())
            if name in fixed:
                steps = fixed[name]
                tok_s = steps * batch / args.seconds
            else:
                tok_s = speed(root / f"speed-{name}", overrides.split())
                steps = max(1, int(args.seconds * tok_s / batch))
            rows[name] = {"overrides": overrides, "tok_per_s": tok_s, "steps": steps}
            print(f"{name}: {tok_s:,.0f} tokens/s alone → {rows[name]['steps']} steps", file=sys.stderr, flush=True)
        with ThreadPoolExecutor(args.parallel) as pool:  # side by side, on steps: what each learns
            done = {name: pool.submit(learn, root / name, row["overrides"].split(), row["steps"])
                    for name, row in rows.items()}
            for name, future in done.items():
                rows[name].update(future.result())

    cpu, flags = cpu_info()
    record = {"cpu": cpu, "cpu_flags": flags, "seconds": args.seconds, "variants": rows}
    write_results(args.results, record)
    print(f"CPU: {cpu} ({', '.join(flags) or 'no AVX2'}); {args.seconds:g} s of training each\n")
    table = [[name, f"`{r['overrides']}`", f"{r['parameters'] / 1e6:.2f}M", f"{r['tok_per_s']:,.0f}", r["steps"],
              f"{r['tokens'] / 1e6:.2f}M", f"{r['val_bpb']:.3f}"] for name, r in rows.items()]
    print(markdown_table(["variant", "overrides", "parameters", "tokens/s alone", "steps", "tokens", "val bits/byte"],
                         table, "llrrrrr"))
    print(f"\nwritten: {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
