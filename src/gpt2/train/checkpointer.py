"""The trainer's checkpoint part: what a checkpoint holds of a run, written and read back in one place.

    ckpt = Checkpointer(cfg, task, components={"schedule": schedule, "train_loader": loader, "guard": guard,
                                               "scaler": scaler, "rng": RNGState(rank, world_size)}, ...)
    ckpt.save(step, model, optimizer, progress=trainer.state_dict())   # every rank; rank 0 publishes
    ckpt.restore(state, checkpoint, model, optimizer)                  # the components, at resume

Each component of the run that must continue bit for bit is an object with `state_dict()` and
`load_state_dict(state)` (the LR schedule, the training loader's position, the spike guard, the grad
scaler, and `RNGState`: the RNG states of every rank); trainer_state.pt holds each under its name, beside
the trainer's own progress (step, tokens, best evaluation, the loop's seconds; Trainer.state_dict) and
the run's layout, which a resume checks (gpt2.train.distributed.check_layout). The model goes out as an
HF directory (or its LoRA adapter, or FSDP shards with checkpoint.sharded), with the tokenizer, the
task's files and run.yaml; the file side (atomic directories, `latest`, `best`, pruning) is
checkpoint.py. Like torchtitan's CheckpointManager, the trainer hands over its stateful parts once
and asks for a save; nothing of the loop's own timing is read behind its back.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from gpt2.config import RunConfig, to_yaml
from gpt2.errors import UserError
from gpt2.train import distributed as dist_utils
from gpt2.train.checkpoint import checkpoint_name, numpy_rng_state, plain_numpy_rng, save_checkpoint
from gpt2.train.task import Task


class Stateful(Protocol):
    def state_dict(self) -> Any: ...
    def load_state_dict(self, state: Any) -> None: ...


class RNGState:
    """The global RNGs (torch, numpy, Python, CUDA) of every rank: saved as a list by rank (all-gathered), and
    restored by each rank from its own entry, so dropout continues exactly."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def state_dict(self) -> list[dict[str, Any]]:
        mine: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": plain_numpy_rng(np.random.get_state()),  # a tensor and ints: read back with weights_only=True
            "python": random.getstate(),
        }
        if torch.cuda.is_available():
            mine["cuda"] = torch.cuda.get_rng_state_all()
        if self.world_size == 1:
            return [mine]
        every: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(every, mine)
        return every

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        state = states[self.rank]
        torch.set_rng_state(state["torch"])
        np.random.set_state(numpy_rng_state(state["numpy"]))
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class LoopClock:
    """Seconds the training loop has run over every resume (train.max_minutes budgets them): what a checkpoint
    saves before the loop starts is what the checkpoint it resumed from said."""

    def __init__(self) -> None:
        self.before, self.started = 0.0, None

    def start(self) -> None:
        self.started = time.time()

    def seconds(self) -> float:
        return self.before + (time.time() - self.started if self.started is not None else 0.0)

    def load(self, seconds: float) -> None:
        self.before = seconds


class Checkpointer:
    """Writes a run's checkpoints (every rank calls `save`) and restores one; see the module docstring."""

    def __init__(self, cfg: RunConfig, task: Task, *, components: dict[str, Stateful], run_dir: Path, mode: str,
                 rank: int, world_size: int, grad_accum: int) -> None:
        if cfg.checkpoint.sharded and mode != "fsdp":
            raise UserError("checkpoint.sharded=true needs train.distributed=fsdp under torchrun; without FSDP every "
                            "checkpoint is one HF directory already")
        self.cfg, self.task, self.components = cfg, task, components
        self.run_dir, self.mode, self.rank, self.world_size, self.grad_accum = run_dir, mode, rank, world_size, grad_accum

    def layout(self) -> dict[str, Any]:
        """How the run was laid out: a resume must match it."""
        return {"world_size": self.world_size, "grad_accum": self.grad_accum, "distributed": self.mode,
                "optim_name": self.cfg.optim.name, "task": self.task.name}

    def save(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *,
             progress: dict[str, Any]) -> Path | None:
        """Write step-NNNNNN (every rank takes part); its path on rank 0, None elsewhere. `progress`: the
        trainer's step, tokens, best evaluation and loop seconds."""
        master = self.rank == 0
        trainer_state = {**progress, **{name: c.state_dict() for name, c in self.components.items()},
                         **self.layout()}
        best = progress.get("best")
        common = dict(trainer_state=trainer_state, tokenizer=self.task.tokenizer, run_yaml=to_yaml(self.cfg),
                      keep_last=self.cfg.checkpoint.keep_last, best=best, extra=self.task.save_extra)
        if self.cfg.checkpoint.sharded:  # every rank writes its shards; rank 0 adds the rest and publishes
            tmp = dist_utils.shared_tmp_dir(self.run_dir, checkpoint_name(step), rank=self.rank)
            dist_utils.save_sharded(tmp, model, optimizer)
            arch = dist_utils.model_class(model).__name__
            path = (save_checkpoint(self.run_dir, step, model=None, config=model.config, tmp=tmp,
                                    architecture=arch, **common) if master else None)
            torch.distributed.barrier()
            return path
        trainer_state["optimizer"] = dist_utils.full_optimizer_state(model, optimizer, mode=self.mode)
        to_save = dist_utils.plain_model(model, mode=self.mode, rank=self.rank)
        if not master:
            return None
        return save_checkpoint(self.run_dir, step, model=to_save,
                               write_model=lambda d: self.task.save_model(to_save, d), **common)

    def restore(self, state: dict[str, Any], checkpoint: Path, model: torch.nn.Module,
                optimizer: torch.optim.Optimizer, *, sharded: bool) -> None:
        """Check the layout, then load the optimizer (and the model, when sharded) and every component."""
        dist_utils.check_layout(state, world_size=self.world_size, grad_accum=self.grad_accum, mode=self.mode,
                                checkpoint=checkpoint)
        if state.get("optim_name", "adamw") != self.cfg.optim.name:
            raise UserError(f"{checkpoint} was trained with optim.name={state.get('optim_name', 'adamw')}; resume "
                            f"with that optimizer, or start a new run from its weights with "
                            f"model.init_from={checkpoint}")
        if sharded:
            dist_utils.load_sharded(checkpoint, model, optimizer)
        else:
            dist_utils.load_full_optimizer_state(model, optimizer, state["optimizer"], mode=self.mode)
        for name, component in self.components.items():
            component.load_state_dict(state[name])
