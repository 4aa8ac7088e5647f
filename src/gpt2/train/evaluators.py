"""Evaluators: what the trainer measures besides the training loss, each a small object it calls.

A task's `evaluators()` lists them once its data is prepared (task.py); the trainer runs each every
`interval` steps and at the end, with the model in eval mode, and logs what it returns as a record of
its `kind`:

- `kind = "val"` (exactly one, first): the held-out metrics, `val_loss` at least, the same on every rank.
  The task's `best_metric` picks the checkpoint named `best` from them, and the final one is the run's
  result. Language models: `TokenValidation` (loss and bits per byte); the fine-tunes bring theirs
  (gpt2.finetune.classify_task, .instruct, .dpo).
- `kind = "hellaswag"`: `HellaSwag`, accuracy on the examples of eval.hellaswag.
- `kind = "sample"`: `{"samples": [...]}`, generated text. At the end these run after the last
  checkpoint is written, and not at all when the run was interrupted (so a Ctrl-C exits at once).

An evaluator returns None when it has nothing to report on this rank (FSDP's other ranks for samples).
Evaluators use their own seeded generators, never the global RNG, so they never change the losses that
follow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from gpt2.config import RunConfig


@dataclass
class EvalContext:
    """What an evaluation may use: the model as training holds it (FSDP-sharded under FSDP), in eval mode."""

    model: torch.nn.Module
    mode: str
    rank: int
    world_size: int
    device: torch.device
    autocast: Any
    step: int
    run_dir: Path

    @property
    def master(self) -> bool:
        return self.rank == 0


class Evaluator(Protocol):
    """See the module docstring."""

    kind: str  # "val", "hellaswag" or "sample": the kind of its metrics record
    interval: int  # run every this many steps (0: only at the end)

    def __call__(self, ctx: EvalContext) -> dict[str, Any] | None: ...


class TokenValidation:
    """A language model's loss on the validation windows of its token shards (eval.steps batches at most), and
    bits per byte when the bytes per token of the validation text are known."""

    kind = "val"

    def __init__(self, cfg: RunConfig, loader: Any, bytes_per_token: float | None) -> None:
        self.interval, self.steps = cfg.eval.interval, cfg.eval.steps
        self.loader, self.bytes_per_token = loader, bytes_per_token

    def __call__(self, ctx: EvalContext) -> dict[str, Any]:
        loader, device = self.loader, ctx.device
        loader.reset()
        total = torch.zeros((), device=device, dtype=torch.float64)
        count = torch.zeros((), device=device, dtype=torch.float64)
        limit = self.steps or len(loader)
        with torch.no_grad(), ctx.autocast:
            for _ in range(min(limit, len(loader))):
                x, y = loader.next_batch()
                if x.shape[0] == 0 and ctx.mode != "fsdp":  # FSDP: every rank runs every forward (all-gathers)
                    continue
                x, y = x.to(device), y.to(device)
                loss = ctx.model(x, targets=y, return_logits=False).loss
                total += loss.double() * y.numel()
                count += y.numel()
        if ctx.world_size > 1:
            torch.distributed.all_reduce(total)
            torch.distributed.all_reduce(count)
        val = (total / count.clamp(min=1)).item()
        bpb = val / math.log(2) / self.bytes_per_token if self.bytes_per_token else None
        return {"val_loss": val, "val_bpb": bpb}


class HellaSwag:
    """Accuracy (and length-normalised accuracy) on HellaSwag examples, every eval.hellaswag_interval steps
    (eval.interval when 0)."""

    kind = "hellaswag"

    def __init__(self, cfg: RunConfig, tokenizer: Any, examples: Any) -> None:
        self.interval = cfg.eval.hellaswag_interval or cfg.eval.interval
        self.tokenizer, self.examples = tokenizer, examples

    def __call__(self, ctx: EvalContext) -> dict[str, Any] | None:
        from gpt2.eval.hellaswag import evaluate_hellaswag
        from gpt2.train import distributed as dist_utils

        # DDP: each rank scores its share of the examples and the counts are summed. FSDP: rank 0 scores
        # them all on the gathered weights (the scorer runs the body and the head separately, and ranks
        # scoring different shares would make different numbers of FSDP forwards).
        fsdp = ctx.mode == "fsdp"
        scorer = dist_utils.plain_model(ctx.model, mode="fsdp", rank=ctx.rank, device=ctx.device) if fsdp else ctx.model
        if scorer is None:
            return None
        share = (0, 1) if fsdp else (ctx.rank, ctx.world_size)
        with ctx.autocast:
            hs = evaluate_hellaswag(scorer, self.tokenizer, self.examples, rank=share[0], world_size=share[1])
        return {"hellaswag_acc": hs.acc, "hellaswag_acc_norm": hs.acc_norm, "hellaswag_examples": hs.examples}


class TextSamples:
    """Continuations of the prompts of sample.prompts (rank 0; under FSDP on the gathered weights)."""

    kind = "sample"

    def __init__(self, cfg: RunConfig, tokenizer: Any) -> None:
        self.cfg, self.interval, self.tokenizer = cfg, cfg.sample.interval, tokenizer

    def __call__(self, ctx: EvalContext) -> dict[str, Any] | None:
        from gpt2.train import distributed as dist_utils

        plain = dist_utils.plain_model(ctx.model, mode=ctx.mode, rank=ctx.rank, device=ctx.device)  # FSDP: all gather
        if plain is None:
            return None
        return {"samples": sample_text(plain, self.tokenizer, self.cfg)}


def sample_text(model: torch.nn.Module, tokenizer: Any, cfg: RunConfig) -> list[str]:
    """Continue each configured prompt with the generation engine (its own seeded generators: the
    training RNG is not touched, so samples never change the losses that follow)."""
    from gpt2.generate import SampleConfig, generate

    s = cfg.sample
    # leave at least half the context for the prompt (truncated from the left if longer)
    max_new = min(s.max_new_tokens, model.config.n_positions // 2)
    config = SampleConfig(max_new_tokens=max_new, temperature=s.temperature, top_k=s.top_k or None,
                          seed=cfg.train.seed, long_prompt="truncate")
    was_training = model.training
    model.eval()
    try:
        # pack=False: no packed copy of the weights, which change after every step anyway
        gens = generate(model, tokenizer, list(s.prompts), config, pack=False)
    finally:
        model.train(was_training)
    return [prompt + g.text for prompt, g in zip(s.prompts, gens)]
