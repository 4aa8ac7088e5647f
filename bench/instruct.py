"""Instruction tuning, end to end and measured: does the tuned model answer the held-out instructions and stop?

    python bench/instruct.py                          # base: runs/imdb-lm (trained first if absent) → sft-alpaca
    python bench/instruct.py --base runs/imdb-lm --lora     # also a LoRA fine-tune, side by side

The base is a language model pretrained here (`gpt2 train imdb-lm`: 4 layers, 192 wide, Muon, 30 minutes on
IMDB's training reviews with its own 4,096-token BPE). `gpt2 finetune instruct sft-alpaca` tunes it on 1,000 of
the 1,100 entries of ../shared/data/instruction-data.json (seed 123) and writes the other 100 to
RUN/heldout.jsonl. Then `gpt2 eval MODEL --instruct RUN/heldout.jsonl` scores, on those same 100, the base
(with the same Alpaca prompts) and the tuned model:
- the held-out response loss (response tokens + the closing <|endoftext|>);
- greedy answers of up to 256 new tokens (fewer when the 256-token context leaves less room after the
  prompt; such answers count as not ended): how many end with <|endoftext|>, how many write one of the
  template's headers (`### Instruction:`, `### Input:`, `### Response:`, `Below is an instruction`).
Results and timings (wall and CPU, the CPU's name) go to bench/results/instruct.json and are printed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from common import REPO, cpu_name, markdown_table, parser, steps_table, timed, write_results


def evaluate(model: str, held_out: Path, *extra: str) -> dict:
    """`gpt2 eval MODEL --instruct FILE --json`: its one JSON object, without the answers' texts."""
    argv = [sys.executable, "-m", "gpt2", "eval", model, "--instruct", str(held_out), "--json", *extra]
    r = subprocess.run(argv, cwd=REPO, text=True, capture_output=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv[2:])} failed ({r.returncode}): {r.stderr[-1500:]}")
    result = json.loads(r.stdout.strip().splitlines()[-1])
    answers = result.pop("answers")
    result["examples"] = [a["text"][:300] for a in answers[:3]]
    print(f"gpt2 eval {model}: loss {result['response_loss']:.4f}, ended {result['ended_rate']:.2%}, "
          f"headers {result['header_rate']:.2%}", file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--base", help="an existing base (run directory); skips its pretraining")
    p.add_argument("--lora", action="store_true", help="also fine-tune with LoRA (rank 16) and score it")
    args = p.parse_args(argv)

    steps: list[dict] = []
    base = args.base or "runs/imdb-lm"
    if not args.base:
        steps.append({"step": "pretrain the base on IMDB's training reviews", **timed(["train", "imdb-lm"])})
    runs = {"full": "runs/sft-alpaca"}
    steps.append({"step": "instruction-tune (1,000 entries, 6 epochs)",
                  **timed(["finetune", "instruct", "sft-alpaca", f"model.init_from={base}"])})
    if args.lora:
        runs["lora"] = "runs/sft-alpaca-lora"
        steps.append({"step": "instruction-tune with LoRA rank 16",
                      **timed(["finetune", "instruct", "sft-alpaca", f"model.init_from={base}",
                               "finetune.lora.rank=16", "finetune.lora.alpha=32", "optim.lr=2e-3",
                               f"train.out_dir={runs['lora']}"])})
    held_out = REPO / runs["full"] / "heldout.jsonl"
    results = {"base": evaluate(base, held_out, "--format", "alpaca")}
    for name, run in runs.items():
        results[name] = evaluate(run, held_out)

    record = {"cpu": cpu_name(), "base": base, "held_out": str(held_out.relative_to(REPO)), "steps": steps,
              "results": results}
    out_path = REPO / "bench" / "results" / "instruct.json"
    write_results(out_path, record)
    print(f"\n{record['cpu']}\n")
    print(steps_table(steps))
    print(f"\n100 held-out instructions ({record['held_out']}), greedy, up to 256 new tokens:\n")
    rows = [[name, f"{r['response_loss']:.3f}", f"{r['ended_rate']:.0%}", f"{r['header_rate']:.0%}",
             f"{r['clean_rate']:.0%}", r["cut_by_context"]] for name, r in results.items()]
    print(markdown_table(["model", "response loss", "ended with <\\|endoftext\\|>", "wrote a header", "clean",
                          "cut by the context"], rows))
    print(f"\nwritten: {out_path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
