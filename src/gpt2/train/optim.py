"""AdamW with decay / no-decay parameter groups, and the warm-up + decay learning-rate schedule.

    python -m gpt2.train.optim      # print the schedule of the default recipe at a few steps

Weight decay applies to matrices only (attention, MLP, embeddings); biases and LayerNorm gains are
left alone, as in GPT-3 and nanoGPT. The schedule warms up linearly, then decays (cosine or linear)
from lr to lr × min_lr_ratio at max_steps, and holds there.
"""

from __future__ import annotations

import inspect
import math
import sys
from typing import Any

import torch

from gpt2.config import OptimConfig
from gpt2.errors import UserError


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: ≥2-D parameters decayed, the rest not. Tied parameters appear once."""
    decay, no_decay = [], []
    for p in model.parameters():  # parameters() yields a tied tensor once
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, *, device: torch.device) -> torch.optim.AdamW:
    """AdamW over param_groups; the fused kernel on CUDA and CPU (one pass over each tensor)."""
    fused = cfg.fused
    if fused is None:
        # On a CPU too (torch >= 2.4) the fused update makes one pass over each tensor, where foreach
        # makes a temporary for every intermediate: several times faster (bench/train_step.py --optimizer).
        fused = device.type in ("cuda", "cpu") and "fused" in inspect.signature(torch.optim.AdamW).parameters
    # foreach (one multi-tensor op per update step instead of a Python loop over tensors) elsewhere
    kwargs: dict[str, Any] = {"fused": True} if fused else {"foreach": True}
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, **kwargs
    )


class LRSchedule:
    """lr at each step: linear warm-up, then cosine / linear decay to lr × min_lr_ratio, or constant."""

    def __init__(self, cfg: OptimConfig, *, max_steps: int) -> None:
        self.lr, self.min_lr = cfg.lr, cfg.lr * cfg.min_lr_ratio
        self.warmup, self.max_steps, self.kind = cfg.warmup_steps, max_steps, cfg.schedule

    def __call__(self, step: int, *, time_fraction: float | None = None) -> float:
        """Learning rate for optimizer step `step` (0-based).

        With a time budget (train.max_minutes), `time_fraction` is the share of it used so far; the
        decay then follows whichever runs out first, steps or time, so a run cut short by the clock
        still ends at the floor instead of at its peak rate.
        """
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if self.kind == "constant":
            return self.lr
        span = max(self.max_steps - self.warmup, 1)
        progress = min((step - self.warmup) / span, 1.0)
        if time_fraction is not None:
            progress = min(max(progress, time_fraction), 1.0)
        if self.kind == "linear":
            coeff = 1.0 - progress
        else:
            coeff = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr + coeff * (self.lr - self.min_lr)

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "min_lr": self.min_lr, "warmup": self.warmup, "max_steps": self.max_steps,
                "kind": self.kind}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The schedule is a pure function of its settings; resuming with other settings is refused."""
        if state != self.state_dict():
            diff = {k: (state.get(k), v) for k, v in self.state_dict().items() if state.get(k) != v}
            raise UserError(f"the checkpoint's LR schedule differs from this config's: {diff} (saved, now)")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def main() -> int:
    sched = LRSchedule(OptimConfig(), max_steps=1000)
    for s in (0, 50, 99, 100, 500, 999, 1500):
        print(f"step {s:5d}  lr {sched(s):.3e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
