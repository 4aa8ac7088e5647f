"""AdamW against Muon on the default recipe at equal wall time: steps, tokens and validation bits per byte.

    python bench/optim_compare.py                              # the recipe's own budget (8.75 min) per optimizer
    python bench/optim_compare.py --minutes 2                  # a short check
    python bench/optim_compare.py --minutes 4 optim.muon_lr=4e-3 train.threads=2   # overrides go to both runs
    python bench/optim_compare.py --adamw-lr 2e-3      # AdamW at its own tuned lr, Muon at the recipe's

Each optimizer trains `configs/shakespeare-cpu.yaml` (what `gpt2 train` runs with no arguments) in a
process of its own, one after the other, into its own run directory under a temporary directory, with
the same seed, data, tokenizer and shards (the cache is shared: $GPT2_CACHE or ~/.cache/gpt2-scratch)
and the same `train.max_minutes`, so the learning rate decays to the recipe's floor on the same clock in
both. What differs is `optim.name` (and, with `--adamw-lr`, the AdamW run's `optim.lr`): AdamW
everywhere, or Muon on the blocks' matrices with AdamW on the rest (gpt2/train/optim.py). The runs are
sequential, not interleaved, so a machine shared with other work can favour either; the load averages
before and after are printed with the table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import FIXED_SHAPE, REPO, cpu_info, markdown_table, parser

RECIPE = REPO / "configs" / "shakespeare-cpu.yaml"


def cpu_model() -> tuple[str, bool]:
    """The CPU's model name and whether it has AVX-512 BF16 (native bf16 matmuls)."""
    name, flags = cpu_info()
    return name, "avx512_bf16" in flags


def run(optimizer: str, out: Path, minutes: float, overrides: list[str]) -> dict:
    """One `gpt2 train` process; its start and end records from metrics.jsonl, and its wall time."""
    args = [sys.executable, "-m", "gpt2", "train", str(RECIPE), f"train.out_dir={out}", f"optim.name={optimizer}",
            f"train.max_minutes={minutes}", *FIXED_SHAPE, *overrides]
    log = out.with_suffix(".log")
    t0 = time.perf_counter()
    with log.open("w") as f:
        r = subprocess.run(args, stdout=f, stderr=subprocess.STDOUT, cwd=REPO,
                           env=dict(os.environ, PYTHONUNBUFFERED="1"))
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"{optimizer}: gpt2 train exited with {r.returncode}; its output:\n{log.read_text()[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    start = next(x for x in records if x["kind"] == "start")
    end = next(x for x in records if x["kind"] == "end")
    return {"start": start, "end": end, "wall": wall}


def main(argv: list[str] | None = None) -> int:
    import yaml

    p = parser(__doc__)
    p.add_argument("--minutes", type=float, default=None,
                   help="train.max_minutes for each run (default: the recipe's own budget)")
    p.add_argument("--out", type=Path, default=None, help="keep the run directories here (default: a temp dir)")
    p.add_argument("--adamw-lr", default=None,
                   help="optim.lr for the AdamW run only (default: the recipe's; 2e-3 is AdamW's tuned value "
                        "from the AdamW recipe before Muon, where 3e-3 was worse)")
    p.add_argument("overrides", nargs="*", help="key=value overrides passed to both runs")
    args = p.parse_args(argv)
    minutes = args.minutes or yaml.safe_load(RECIPE.read_text())["train"]["max_minutes"]

    name, bf16 = cpu_model()
    import torch

    load_before = os.getloadavg()
    results = {}
    with tempfile.TemporaryDirectory(prefix="optim-compare-") as tmp:
        root = args.out or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for optimizer in ("adamw", "muon"):
            print(f"training with {optimizer} for {minutes:g} min ...", file=sys.stderr, flush=True)
            own = [f"optim.lr={args.adamw_lr}"] if optimizer == "adamw" and args.adamw_lr else []
            results[optimizer] = run(optimizer, root / optimizer, minutes, [*args.overrides, *own])
    load_after = os.getloadavg()

    dtype = results["adamw"]["start"]["dtype"]
    print(f"recipe {RECIPE.name}, train.max_minutes={minutes:g} each, overrides: {' '.join(args.overrides) or 'none'}"
          + (f"; AdamW's optim.lr={args.adamw_lr}" if args.adamw_lr else ""))
    print(f"CPU: {name}, {os.cpu_count()} CPUs, avx512_bf16: {'yes' if bf16 else 'no'}; dtype {dtype} "
          f"({results['adamw']['start']['dtype_reason']}); torch {torch.__version__}")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)")
    for optimizer, r in results.items():
        print(f"{optimizer}: {r['start']['optimizer']}")
    print()
    rows = [[optimizer, r["end"]["step"], f"{r['end']['tokens']:,}", f"{r['end']['seconds']:.0f}", f"{r['wall']:.0f}",
             f"{r['end']['val_loss']:.4f}", f"{r['end']['val_bpb']:.4f}"] for optimizer, r in results.items()]
    print(markdown_table(["optimizer", "steps", "tokens", "run wall s", "process wall s", "val loss", "val bits/byte"],
                         rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
