"""`gpt2 finetune classify|instruct|dpo`: fine-tune a pretrained GPT-2 into a classifier, an instruction follower,
or (DPO) one that prefers the chosen of two answers.

    gpt2 train                                                   # a base: runs/shakespeare-cpu
    gpt2 finetune classify finetune-sms-spam                     # → runs/finetune-sms-spam/{best, step-N/}
    gpt2 finetune classify finetune-imdb model.init_from=openai-community/gpt2 train.device=cuda
    gpt2 finetune classify --resume runs/finetune-sms-spam       # continue exactly where it stopped
    gpt2 finetune classify finetune-sms-spam-lora                # LoRA adapters (finetune.lora.*), PEFT's format
    gpt2 finetune instruct sft-alpaca                            # → runs/sft-alpaca, then `gpt2 chat runs/sft-alpaca`
    gpt2 finetune dpo dpo-polite                                 # → runs/dpo-polite: preference tuning of sft-alpaca

Training, evaluation intervals, checkpoints, resume, DDP and the progress line are the trainer's
(gpt2.train.loop); the task is gpt2.finetune.classify_task. At the end the checkpoint named `best` (by
finetune.metric on the validation split) scores the test split: the `test` record of metrics.jsonl,
confusion-test.png, and the printed summary. An instruction run (gpt2.finetune.instruct) reports its
held-out response loss and two greedy answers, and leaves the held-out entries in RUN/heldout.jsonl;
a DPO run (gpt2.finetune.dpo) its held-out rewards, and its held-out pairs in the same file.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import torch

from gpt2.common import print_result
from gpt2.config import RunConfig


def finetune_classify(cfg: RunConfig, *, resume: str | Path | None = None,
                      progress: bool | None = None) -> tuple[Any, dict[str, Any] | None]:
    """Train the classification task; on rank 0, score the test split with the best checkpoint.
    Returns (TrainResult, test metrics or None)."""
    from gpt2.finetune.classify_task import ClassificationTask
    from gpt2.train.loop import run

    task = ClassificationTask(cfg)
    result = run(cfg, task, resume=resume, progress=progress)
    if int(os.environ.get("RANK", "0")) != 0 or not len(task.splits["test"]):
        return result, None
    return result, score_test(task, result.best_checkpoint or result.last_checkpoint, cfg)


def score_test(task: Any, checkpoint: Path, cfg: RunConfig) -> dict[str, Any]:
    from gpt2.common import pick_device, resolve_dtype
    from gpt2.load import load
    from gpt2.train.evaluators import EvalContext
    from gpt2.train.metrics import MetricsLogger

    device = pick_device(cfg.train.device)
    dtype, _ = resolve_dtype(cfg.train.dtype, device)
    model = load(checkpoint, task="classify", device=str(device)).model  # an HF directory or a LoRA adapter
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    ctx = EvalContext(model=model, mode="single", rank=0, world_size=1, device=device, autocast=autocast,
                      step=-1, run_dir=Path(cfg.train.out_dir))
    metrics = task.metrics("test")(ctx)
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


def _config(args: argparse.Namespace) -> RunConfig:
    """The run's config: a recipe and overrides, or --resume RUN (its run.yaml) and overrides."""
    from gpt2.config import config_from_args

    return config_from_args(args.args, resume=args.resume, example=args.example_recipe)


def run_classify(args: argparse.Namespace) -> int:
    """`gpt2 finetune classify`; see the module docstring."""
    from gpt2.train import TrainingStopped

    cfg = _config(args)
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
            print_result({"val": result.metrics, "test": test}, as_json=True, one_line=True)
    print(f"run directory: {result.run_dir} (metrics.jsonl, confusion-*.png, tensorboard/)")
    print(f"best checkpoint: {result.best_checkpoint}")
    return 130 if result.interrupted else 0


def finetune_instruct(cfg: RunConfig, *, resume: str | Path | None = None, progress: bool | None = None) -> Any:
    """Train the instruction task (gpt2.finetune.instruct); returns the TrainResult."""
    from gpt2.finetune.instruct import InstructTask
    from gpt2.train.loop import run

    return run(cfg, InstructTask(cfg), resume=resume, progress=progress)


def run_instruct(args: argparse.Namespace) -> int:
    """`gpt2 finetune instruct`: train, then say where the model and its held-out entries are."""
    from gpt2.finetune.instruct import HELD_OUT_FILE
    from gpt2.train import TrainingStopped

    cfg = _config(args)
    try:
        result = finetune_instruct(cfg, resume=args.resume)
    except TrainingStopped as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    held_out = result.run_dir / HELD_OUT_FILE
    print(f"\nstep {result.step}: held-out response loss {result.metrics.get('val_loss', float('nan')):.4f} "
          f"({result.metrics.get('val_tokens', 0):,} response tokens)")
    for text in result.samples:
        print(f"  {text}")
    if args.json:
        print_result({"val": result.metrics, "samples": result.samples}, as_json=True, one_line=True)
    print(f"run directory: {result.run_dir} (metrics.jsonl, tensorboard/, {HELD_OUT_FILE})")
    print(f"chat with it: gpt2 chat {result.run_dir}    score it: gpt2 eval {result.run_dir} --instruct {held_out}")
    return 130 if result.interrupted else 0


def finetune_dpo(cfg: RunConfig, *, resume: str | Path | None = None, progress: bool | None = None) -> Any:
    """Train the preference task (gpt2.finetune.dpo); returns the TrainResult."""
    from gpt2.finetune.dpo import DPOTask
    from gpt2.train.loop import run

    return run(cfg, DPOTask(cfg), resume=resume, progress=progress)


def run_dpo(args: argparse.Namespace) -> int:
    """`gpt2 finetune dpo`: train, then report the held-out rewards and say where the model is."""
    from gpt2.finetune.instruct import HELD_OUT_FILE
    from gpt2.train import TrainingStopped

    if args.format is not None:
        args.args = [*args.args, f"finetune.dpo.format={args.format}"]
    cfg = _config(args)
    try:
        result = finetune_dpo(cfg, resume=args.resume)
    except TrainingStopped as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    m = result.metrics
    print(f"\nstep {result.step}: held-out DPO loss {m.get('val_loss', float('nan')):.4f}, reward accuracy "
          f"{m.get('eval_rewards/accuracies', float('nan')):.4f}, margin {m.get('eval_rewards/margins', float('nan')):.4f} "
          f"({m.get('val_pairs', 0)} pairs)")
    for text in result.samples:
        print(f"  {text}")
    if args.json:
        print_result({"val": m, "samples": result.samples}, as_json=True, one_line=True)
    held_out = result.run_dir / HELD_OUT_FILE
    print(f"run directory: {result.run_dir} (metrics.jsonl, tensorboard/, {HELD_OUT_FILE})")
    print(f"chat with it: gpt2 chat {result.run_dir}    score it: gpt2 eval {result.run_dir} --preference {held_out}")
    return 130 if result.interrupted else 0

