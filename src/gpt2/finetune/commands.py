"""`gpt2 finetune classify`: fine-tune a pretrained GPT-2 into a classifier, then score its test split.

    gpt2 train                                                   # a base: runs/shakespeare-cpu
    gpt2 finetune classify finetune-sms-spam                     # → runs/finetune-sms-spam/{best, step-N/}
    gpt2 finetune classify finetune-imdb model.init_from=openai-community/gpt2 train.device=cuda
    gpt2 finetune classify --resume runs/finetune-sms-spam       # continue exactly where it stopped

Training, evaluation intervals, checkpoints, resume, DDP and the progress line are the trainer's
(gpt2.train.loop); the task is gpt2.finetune.task. At the end the checkpoint named `best` (by
finetune.metric on the validation split) scores the test split: the `test` record of metrics.jsonl,
confusion-test.png, and the printed summary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from gpt2.config import RunConfig


def finetune_classify(cfg: RunConfig, *, resume: str | Path | None = None,
                      progress: bool | None = None) -> tuple[Any, dict[str, Any] | None]:
    """Train the classification task; on rank 0, score the test split with the best checkpoint.
    Returns (TrainResult, test metrics or None)."""
    from gpt2.finetune.task import ClassificationTask
    from gpt2.train.loop import run

    task = ClassificationTask(cfg)
    result = run(cfg, task, resume=resume, progress=progress)
    if int(os.environ.get("RANK", "0")) != 0 or not len(task.splits["test"]):
        return result, None
    return result, score_test(task, result.best_checkpoint or result.last_checkpoint, cfg)


def score_test(task: Any, checkpoint: Path, cfg: RunConfig) -> dict[str, Any]:
    from gpt2.common import pick_device, resolve_dtype
    from gpt2.model.classify import GPT2ForSequenceClassification
    from gpt2.train.metrics import MetricsLogger
    from gpt2.train.task import EvalContext

    device = pick_device(cfg.train.device)
    dtype, _ = resolve_dtype(cfg.train.dtype, device)
    model = GPT2ForSequenceClassification.from_pretrained(checkpoint).to(device).eval()
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    ctx = EvalContext(model=model, mode="single", rank=0, world_size=1, device=device, autocast=autocast,
                      step=-1, run_dir=Path(cfg.train.out_dir))
    metrics = task.evaluate(ctx, split="test")
    logger = MetricsLogger(cfg.train.out_dir, tensorboard=False)
    logger.log({"kind": "test", "checkpoint": str(checkpoint), **metrics})
    logger.close()
    return metrics


def _report(metrics: dict[str, Any], names: list[str]) -> str:
    lines = [f"accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}  "
             f"({metrics['examples']} examples)"]
    for name in names:
        c = metrics["per_class"][name]
        lines.append(f"  {name:>12}: precision {c['precision']:.4f}  recall {c['recall']:.4f}  "
                     f"support {c['support']}")
    return "\n".join(lines)


def run_classify(args: argparse.Namespace) -> int:
    """The CLI verb; see the module docstring."""
    from gpt2.config import load_config, load_run_config
    from gpt2.train import TrainingStopped

    recipe = args.args[0] if args.args and "=" not in args.args[0] else None
    overrides = args.args[1:] if recipe else args.args
    if args.resume and recipe is None:
        cfg = load_run_config(args.resume, overrides)
    elif recipe is None:
        from gpt2.errors import UserError

        raise UserError("give a recipe (e.g. finetune-sms-spam, a YAML file) or --resume RUN_DIR")
    else:
        cfg = load_config(recipe, overrides)
    try:
        result, test = finetune_classify(cfg, resume=args.resume)
    except TrainingStopped as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    names = list(result.metrics.get("per_class", {}))
    print(f"\nstep {result.step}: val loss {result.val_loss:.4f}, val " + _report(result.metrics, names))
    if test is not None:
        print(f"test ({result.best_checkpoint or result.last_checkpoint}): " + _report(test, names))
        if args.json:
            print(json.dumps({"val": result.metrics, "test": test}))
    print(f"run directory: {result.run_dir} (metrics.jsonl, confusion-*.png, tensorboard/)")
    print(f"best checkpoint: {result.best_checkpoint}")
    return 130 if result.interrupted else 0


def add_finetune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune a pretrained GPT-2: classification")
    fsub = p.add_subparsers(dest="finetune_verb", required=True, metavar="{classify}")
    c = fsub.add_parser("classify", help="a classifier on labelled texts (GPT2ForSequenceClassification checkpoints)")
    c.add_argument("args", nargs="*", metavar="[RECIPE] [key=value ...]",
                   help="a recipe (finetune-sms-spam, finetune-imdb or a YAML file) and dotted overrides")
    c.add_argument("--resume", metavar="RUN_DIR", help="continue a fine-tune (or a checkpoint) exactly where it stopped")
    c.add_argument("--json", action="store_true", help="also print the validation and test metrics as one JSON line")
    c.set_defaults(func=run_classify)


if __name__ == "__main__":
    from gpt2.cli import main

    sys.exit(main(["finetune", *sys.argv[1:]]))
