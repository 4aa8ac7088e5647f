"""Checkpoints: one self-contained, HF-loadable directory per step, written atomically, the last k kept.

    gpt2 checkpoint list runs/default        # list a run's checkpoints

    runs/default/
      step-000200/   config.json  model.safetensors  tokenizer files  run.yaml  trainer_state.pt
      step-000400/   ...
      latest         a one-line file naming the newest complete checkpoint
      best           (tasks with a validation metric) the checkpoint that scored best; never pruned

A checkpoint is filled under a temporary name and renamed when whole, then `latest` is rewritten
(also by rename), so a kill at any moment leaves the previous checkpoint intact and `latest` pointing
at a complete one. `transformers.GPT2LMHeadModel.from_pretrained("runs/default/step-000400")` loads the
model as it is; trainer_state.pt holds what exact resumption needs (optimizer, schedule, step, tokens
seen, data position, RNG states of every rank).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gpt2.common import TRAINER_STATE, atomic_directory, atomic_write_text, list_checkpoints

# Where a run's checkpoints are is read below every layer (gpt2.common); re-exported beside the writer.
from gpt2.common import resolve_checkpoint as resolve_checkpoint
from gpt2.errors import UserError


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model: torch.nn.Module | None,
    trainer_state: dict[str, Any],
    tokenizer: Any = None,
    run_yaml: str | None = None,
    keep_last: int = 3,
    config: Any = None,
    tmp: Path | None = None,
    best: dict[str, Any] | None = None,
    architecture: str = "GPT2LMHeadModel",
    write_model: Callable[[Path], None] | None = None,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write step-NNNNNN atomically, point `latest` at it, and delete all but the newest keep_last.

    A sharded checkpoint (gpt2.train.distributed) passes model=None with the model's `config` and
    `architecture` (its class name, for config.json), and the
    temporary directory `tmp` its ranks have already written their shards into. `best` (the trainer's
    best evaluation so far: metric, value, step, checkpoint) is marked when it is this step, and the
    checkpoint it names is never pruned; it is marked before pruning, so a kill leaves it named.
    `write_model(dir)` writes the model instead of `model.save_pretrained(dir)` (a LoRA run's adapter);
    `extra(dir)` adds files after the model and the tokenizer."""
    run_dir = Path(run_dir)
    final = run_dir / checkpoint_name(step)
    with atomic_directory(final, tmp=tmp) as tmp:
        if write_model is not None:
            write_model(tmp)
        elif model is not None:
            model.save_pretrained(tmp)  # type: ignore[operator]  # the model's own HF class and config
        else:
            config.save(tmp, architecture=architecture)
        if tokenizer is not None:
            tokenizer.save(tmp)
        if extra is not None:
            extra(tmp)
        if run_yaml is not None:
            (tmp / "run.yaml").write_text(run_yaml, encoding="utf-8")
        torch.save(trainer_state, tmp / TRAINER_STATE)
    atomic_write_text(run_dir / "latest", final.name + "\n")
    if best is not None and best["step"] == step:
        mark_best(run_dir, best)
    spare = run_dir / best["checkpoint"] if best is not None else best_checkpoint(run_dir)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        if old != spare:
            shutil.rmtree(old, ignore_errors=True)
    return final


def mark_best(run_dir: str | Path, best: dict[str, Any]) -> None:
    """Name the best checkpoint so far (`best` holds its directory name; best.json says why)."""
    import json

    run_dir = Path(run_dir)
    atomic_write_text(run_dir / "best.json", json.dumps(best) + "\n")
    atomic_write_text(run_dir / "best", best["checkpoint"] + "\n")


def best_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint `best` names, if there is one and it is complete."""
    marker = Path(run_dir) / "best"
    if not marker.is_file():
        return None
    path = Path(run_dir) / marker.read_text().strip()
    return path if (path / TRAINER_STATE).is_file() else None


def clean_stale(run_dir: str | Path) -> None:
    """Remove temporary directories a killed writer left behind (.step-NNNNNN.*.tmp)."""
    run_dir = Path(run_dir)
    if run_dir.is_dir():
        for p in run_dir.glob(".step-*.tmp"):
            shutil.rmtree(p, ignore_errors=True)


def load_trainer_state(checkpoint: str | Path) -> dict[str, Any]:
    path = Path(checkpoint) / TRAINER_STATE
    try:
        # RNG states and the optimizer are plain tensors and containers; numpy's RNG state needs
        # numpy scalars, hence weights_only=False for our own file.
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserError(f"cannot read {path}: {e}") from None
