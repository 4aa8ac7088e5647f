"""Preference tuning, end to end and measured: DPO on the instruction model tuned here, full and LoRA.

    flock /tmp/gpt2-bench.lock python bench/dpo.py --base runs/sft-alpaca
    python bench/dpo.py --base runs/sft-alpaca --runs lora --answers 0 --results bench/results/dpo-polite-lora.json

`gpt2 finetune dpo dpo-polite model.init_from=BASE` trains on 935 of the 1,100 pairs of
../shared/data/instruction-data-with-preference.json (85/5/10, seed 123) and writes the 110 held-out ones to
RUN/heldout.jsonl; with --lora the same recipe trains LoRA adapters (rank 16, alpha 32, --lora-lr) instead.
Each run is its own process, timed (wall and CPU seconds) and measured for its peak RSS (ru_maxrss of that
process). Then `gpt2 eval MODEL --preference RUN/heldout.jsonl --json` scores on those 110 pairs:
- the start (BASE against itself as the reference: every reward 0; its own ranking of chosen and rejected);
- the full DPO run, and the LoRA one (reference: the start, adapters off for LoRA): reward accuracy, mean
  margin, the model's own ranking.
The goal is a reward accuracy ≥ 0.90 and a mean margin ≥ 2.0 in ≤ 15 minutes; LoRA within 3 points of full
with a lower peak RSS. Greedy answers of the start and of the full DPO model to the first --answers held-out
prompts are printed for docs/dpo.md. Everything goes to bench/results/dpo-polite.json with the CPU's name.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, cpu_name, markdown_table, parser, write_results

# Runs `gpt2 ARGV` in this interpreter and reports its own peak RSS (kB on Linux) as the last stderr line.
WITH_RSS = ("import resource, sys\nfrom gpt2.cli import main\nrc = main(sys.argv[1:])\n"
            "print('maxrss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\nsys.exit(rc)")


def timed_rss(argv: list[str]) -> dict:
    """`gpt2 ARGV` in a process of its own: wall and CPU seconds, peak RSS, the stdout's tail."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    r = subprocess.run([sys.executable, "-c", WITH_RSS, *argv], cwd=REPO, text=True, capture_output=True)
    wall = time.time() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"gpt2 {' '.join(argv)} failed ({r.returncode}): {r.stderr[-2000:]}")
    rss_kb = int(r.stderr.strip().splitlines()[-1].split()[1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"gpt2 {' '.join(argv)}: {wall:,.0f} s wall, {cpu:,.0f} s CPU, peak RSS {rss_kb / 1024:,.0f} MB",
          file=sys.stderr)
    return {"command": "gpt2 " + " ".join(argv), "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": rss_kb / 1024,
            "stdout_tail": r.stdout[-1500:]}


def evaluate(model: str, held_out: Path, *extra: str) -> dict:
    argv = [sys.executable, "-m", "gpt2", "eval", model, "--preference", str(held_out), "--json", *extra]
    r = subprocess.run(argv, cwd=REPO, text=True, capture_output=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv[2:])} failed ({r.returncode}): {r.stderr[-1500:]}")
    result = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"gpt2 eval {model}: reward accuracy {result['reward_accuracy']:.4f}, margin {result['mean_margin']:.4f}, "
          f"policy accuracy {result['policy_accuracy']:.4f}", file=sys.stderr)
    return result


def greedy_answers(model: str, held_out: Path, n: int, max_new_tokens: int = 64) -> list[dict]:
    """Greedy answers of `model` to the first n held-out prompts, in its own prompt format."""
    from gpt2.finetune.preference_data import read_preference
    from gpt2.generate import SampleConfig, generate
    from gpt2.generate.chat import encode_conversation
    from gpt2.load import load

    loaded = load(REPO / model if not Path(model).is_absolute() else model, device="cpu")
    out = []
    for p in read_preference(held_out)[:n]:
        prompt, _ = encode_conversation(p.prompt, loaded.tokenizer, loaded.chat_format, add_generation_prompt=True)
        room = min(max_new_tokens, loaded.model.config.n_positions - len(prompt))
        gen = generate(loaded.model, loaded.tokenizer, [prompt], SampleConfig(max_new_tokens=room, temperature=0))[0]
        user = p.prompt[-1]
        out.append({"instruction": user["content"], "input": user.get("input", ""), "answer": gen.text.strip(),
                    "chosen": p.chosen, "rejected": p.rejected})
    return out


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--base", default="runs/sft-alpaca", help="the instruction model to start from")
    p.add_argument("--out", default="runs/dpo-polite", help="the full run's directory (LoRA: OUT-lora)")
    p.add_argument("--runs", default="full,lora", help="which runs: full, lora or both (full,lora)")
    p.add_argument("--results", default="bench/results/dpo-polite.json", help="where the JSON record goes")
    p.add_argument("--lora-lr", default="2e-3", help="optim.lr of the LoRA run")
    p.add_argument("--answers", type=int, default=10, help="greedy answers before/after to print (0: none)")
    p.add_argument("overrides", nargs="*", help="key=value overrides for both runs (e.g. optim.lr=2e-4)")
    args = p.parse_args(argv)

    common = ["finetune", "dpo", "dpo-polite", f"model.init_from={args.base}", *args.overrides]
    wanted = args.runs.split(",")
    runs: dict[str, str] = {}
    steps = []
    if "full" in wanted:
        runs["full"] = args.out
        steps.append({"step": "DPO, full", **timed_rss([*common, f"train.out_dir={args.out}"])})
    if "lora" in wanted:
        runs["lora"] = f"{args.out}-lora"
        steps.append({"step": "DPO, LoRA r16", **timed_rss([*common, f"train.out_dir={runs['lora']}",
                                                             "finetune.lora.rank=16", "finetune.lora.alpha=32",
                                                             f"optim.lr={args.lora_lr}"])})
    held_out = REPO / next(iter(runs.values())) / "heldout.jsonl"
    results = {"start": evaluate(args.base, held_out, "--reference", args.base)} if "full" in runs else {}
    for name, run in runs.items():
        results[name] = evaluate(run, held_out)
    answers = {}
    if args.answers and "full" in runs:
        answers = {"start": greedy_answers(args.base, held_out, args.answers),
                   "full": greedy_answers(args.out, held_out, args.answers)}
    record = {"cpu": cpu_name(), "base": args.base, "held_out": str(held_out.relative_to(REPO) if held_out.is_relative_to(REPO) else held_out), "steps": steps,
              "results": results, "answers": answers}
    out_path = REPO / args.results
    write_results(out_path, record)

    print(f"\n{record['cpu']}\n")
    print(markdown_table(["run", "command", "wall", "CPU time", "peak RSS"],
                         [[s["step"], f"`{s['command']}`", f"{s['wall_s'] / 60:.1f} min", f"{s['cpu_s'] / 60:.1f} min",
                           f"{s['peak_rss_mb']:,.0f} MB"] for s in steps], "llrrr"))
    print(f"\n{next(iter(results.values()))['pairs']} held-out pairs ({record['held_out']}):\n")
    print(markdown_table(["model", "reward accuracy", "mean margin", "model alone ranks chosen first", "DPO loss"],
                         [[name, f"{r['reward_accuracy']:.4f}", f"{r['mean_margin']:.4f}",
                           f"{r['policy_accuracy']:.4f}", f"{r['loss']:.4f}"] for name, r in results.items()]))
    for i, (before, after) in enumerate(zip(answers.get("start", []), answers.get("full", []))):
        instruction = before["instruction"] + (f" ({before['input']})" if before["input"] else "")
        print(f"\n{i + 1}. {instruction}\n   before: {before['answer']}\n   after:  {after['answer']}")
    print(f"\nwritten: {out_path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
