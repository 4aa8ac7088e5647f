"""Classification fine-tuning, end to end and timed: the base's pretraining, the fine-tune, the test scores.

    python bench/finetune_classify.py sms                  # gpt2 train (the default run) → finetune-sms-spam
    python bench/finetune_classify.py sms --base runs/shakespeare-cpu     # reuse a base, time the rest
    python bench/finetune_classify.py imdb                 # gpt2 train imdb-lm → finetune-imdb (25,000 test reviews)
    python bench/finetune_classify.py sms-lora --base runs/imdb-lm   # SMS with LoRA: 5 settings, then 4 seeds against full

Each step is a `gpt2` command run as a subprocess from the repository root (so the recipes' ../shared/data
paths resolve), timed by wall clock and by the CPU time of its processes (user + sys, both cores). The
results (commands, times, test accuracy and macro-F1, the CPU) go to bench/results/finetune-<task>.json
and are printed as a table. `sms` also fine-tunes on the natural, imbalanced split (no down-sampling,
70/10/20, best checkpoint by macro-F1) and reports its test macro-F1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from common import REPO, cpu_name, markdown_table, parser, steps_table, timed, write_results

# The SMS LoRA comparison: five LoRA settings at seed 0 (rank, alpha, lr, steps: 330 steps are 5 epochs),
# then the chosen one (lora-r16-a16) and full fine-tuning of the same base at seeds 0-3. train.seed moves
# the score head's initialisation, the adapters' and the batch order; the split (finetune.split_seed) stays.
_LORA = {
    "lora-r16-a16": ["finetune.lora.rank=16", "finetune.lora.alpha=16", "optim.lr=2e-3"],
    "lora-r16-a32": ["finetune.lora.rank=16", "finetune.lora.alpha=32", "optim.lr=2e-3"],
    "lora-r16-a32-lr4e-3": ["finetune.lora.rank=16", "finetune.lora.alpha=32", "optim.lr=4e-3"],
    "lora-r32-a64-lr1e-3": ["finetune.lora.rank=32", "finetune.lora.alpha=64", "optim.lr=1e-3", "train.max_steps=660"],
    "lora-r8-a16-lr3e-3": ["finetune.lora.rank=8", "finetune.lora.alpha=16", "optim.lr=3e-3", "train.max_steps=500"],
}
SMS_LORA_RUNS: list[tuple[str, int, list[str]]] = [
    *[(name, 0, o) for name, o in _LORA.items()],
    *[("lora-r16-a16", seed, _LORA["lora-r16-a16"]) for seed in (1, 2, 3)],
    *[("full", seed, []) for seed in (0, 1, 2, 3)],
]


def test_record(run_dir: Path) -> dict:
    rows = [json.loads(x) for x in (REPO / run_dir / "metrics.jsonl").read_text().splitlines()]
    test = [r for r in rows if r["kind"] == "test"][-1]
    start = [r for r in rows if r["kind"] == "start"][-1]
    return {"accuracy": test["accuracy"], "macro_f1": test["macro_f1"], "test_examples": test["examples"],
            "checkpoint": test["checkpoint"], "examples": start.get("examples"), "per_class": test["per_class"]}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("task", choices=["sms", "imdb", "sms-lora"])
    p.add_argument("--base", help="an existing base (run directory); skips its pretraining")
    p.add_argument("--tag", help="imdb: a variant's name: its run is runs/finetune-imdb-TAG and its record "
                                 "bench/results/finetune-imdb-TAG.json")
    p.add_argument("overrides", nargs="*", help="imdb: key=value overrides of the fine-tune (with --tag)")
    args = p.parse_intermixed_args(argv)  # overrides may come after the options
    if (args.overrides or args.tag) and args.task != "imdb":
        p.error("--tag and overrides apply to the imdb task")
    if args.overrides and not args.tag:
        p.error("a variant with overrides needs a --tag, so it does not overwrite the recipe's record")

    steps: list[dict] = []
    if args.task == "sms":
        base = args.base or "runs/shakespeare-cpu"
        if not args.base:
            steps.append({"step": "pretrain the base (the default run)", **timed(["train"])})
        out = "runs/finetune-sms-spam"
        steps.append({"step": "fine-tune (747 + 747, 70/10/20)",
                      **timed(["finetune", "classify", "finetune-sms-spam", f"model.init_from={base}"])})
        balanced = test_record(Path(out))
        natural_out = "runs/finetune-sms-spam-natural"
        steps.append({"step": "fine-tune on the natural split (no down-sampling)",
                      **timed(["finetune", "classify", "finetune-sms-spam", f"model.init_from={base}",
                               "finetune.balance=none", "finetune.metric=macro_f1", "train.max_steps=500",
                               "eval.interval=50", f"train.out_dir={natural_out}"])})
        results = {"balanced": balanced, "natural": test_record(Path(natural_out))}
    elif args.task == "sms-lora":  # LoRA instead of every weight; the best checkpoint by validation loss
        base = args.base or "runs/imdb-lm"
        if not args.base:
            steps.append({"step": "pretrain the base on the training reviews", **timed(["train", "imdb-lm"])})
        results = {}
        for name, seed, overrides in SMS_LORA_RUNS:
            out = f"runs/finetune-sms-spam-{name}-seed{seed}"
            steps.append({"step": f"fine-tune {name}, seed {seed} (747 + 747, 70/10/20)",
                          **timed(["finetune", "classify", "finetune-sms-spam", f"model.init_from={base}",
                                   *overrides, f"train.seed={seed}", "finetune.metric=val_loss",
                                   f"train.out_dir={out}"])})
            results[f"{name}-seed{seed}"] = {**test_record(Path(out)), "overrides": overrides, "seed": seed}
    else:
        base = args.base or "runs/imdb-lm"
        if not args.base:
            steps.append({"step": "pretrain the base on the training reviews", **timed(["train", "imdb-lm"])})
        out = f"runs/finetune-imdb-{args.tag}" if args.tag else "runs/finetune-imdb"
        steps.append({"step": "fine-tune, then score the 25,000 test reviews",
                      **timed(["finetune", "classify", "finetune-imdb", f"model.init_from={base}", *args.overrides,
                               *([f"train.out_dir={out}"] if args.tag else [])])})
        results = {"test": {**test_record(Path(out)), "overrides": args.overrides}}

    record = {"task": args.task, "cpu": cpu_name(), "base": base, "steps": steps, "results": results,
              "total_wall_s": sum(s["wall_s"] for s in steps), "total_cpu_s": sum(s["cpu_s"] for s in steps)}
    out_path = REPO / "bench" / "results" / f"finetune-{args.task}{'-' + args.tag if args.tag else ''}.json"
    write_results(out_path, record)
    print(f"\n{record['cpu']}\n")
    print(steps_table(steps) + "\n")
    for name, r in results.items():
        print(f"{name}: test accuracy {r['accuracy']:.4f}, macro-F1 {r['macro_f1']:.4f} "
              f"({r['test_examples']} test examples)")
    if args.task == "sms-lora":  # each setting over its seeds
        rows = []
        for name in dict.fromkeys(n for n, _, _ in SMS_LORA_RUNS):
            accs = [r["accuracy"] for k, r in results.items() if k.rsplit("-seed", 1)[0] == name]
            rows.append([name, len(accs), ", ".join(f"{a:.4f}" for a in accs), f"{sum(accs) / len(accs):.4f}",
                         f"{min(accs):.4f}"])
        print("\n" + markdown_table(["setting", "seeds", "test accuracy, each", "mean", "min"], rows, "lrlrr"))
    print(f"\nwritten: {out_path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
