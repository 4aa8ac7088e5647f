"""Tasks: what the trainer trains. A task says what a batch is, what its loss is, and how it is evaluated.

    from gpt2.train.loop import run
    run(cfg, LanguageModelTask(cfg))          # what `gpt2 train` does
    run(cfg, ClassificationTask(cfg))         # what `gpt2 finetune classify` does (gpt2.finetune.task)

The trainer (loop.py) owns everything around the objective: batch geometry, accumulation, the loss
normalisation, clipping, guards, the schedule, evaluation and checkpoint intervals, resume, metrics,
DDP/FSDP. A task owns the rest:

- its data: `prepare` builds it (tokenizer, shards, splits); the trainer calls it on rank 0 first, then
  on each node's first process, then everywhere, so the caches are written once;
- its model: `build_model` makes it fresh or from `model.init_from`, or loads the checkpoint to resume;
- its batches: `train_loader` gives a resumable loader whose `next_batch()` is a tuple of CPU tensors;
- its loss: `count(batch)` is the number of counted targets of a micro-batch (tokens that are not
  masked, or examples, or their class weights, or preference pairs), known before the forward;
  `loss_sum(model, batch)` is the SUM of the per-target losses. The trainer divides by the count of the
  whole global batch, over every micro-step and rank, so padding and masking never change how much a
  target weighs; `step_metrics` adds what else a step measured to its train record;
- its evaluation (`evaluate`, and for language models HellaSwag and samples), and its start record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from gpt2.config import RunConfig
from gpt2.errors import UserError

Batch = tuple[torch.Tensor, ...]


class Loader(Protocol):
    """A resumable source of batches (gpt2.data.loader.TokenLoader is one)."""

    def next_batch(self) -> Batch: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class Geometry:
    """One micro-batch holds `per_micro` units on each rank; a step holds `per_step` over all ranks."""

    per_micro: int
    per_step: int
    unit: str  # "tokens" or "examples", for messages
    tokens_per_micro: int  # forward tokens of one micro-batch on one rank (throughput, MFU)


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


class Task:
    """The base of every task; see the module docstring. Subclasses fill in every method that raises."""

    name = "task"
    tokenizer: Any = None
    best_metric: tuple[str, str] | None = None  # (metric, "max"|"min"): the checkpoint named `best`

    def prepare(self, *, progress: bool) -> None:
        raise NotImplementedError

    def ready(self, *, master: bool) -> None:
        """Called on every rank once every rank has prepared (e.g. rank 0 measures bytes per token)."""

    def geometry(self, world_size: int) -> Geometry:
        raise NotImplementedError

    def build_model(self, checkpoint: Path | None) -> torch.nn.Module:
        raise NotImplementedError

    def train_loader(self, *, rank: int, world_size: int) -> Loader:
        raise NotImplementedError

    def count(self, batch: Batch) -> float:
        raise NotImplementedError

    def loss_sum(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def tokens(self, batch: Batch) -> int:
        """Tokens the forward of this micro-batch processes (throughput and MFU)."""
        return batch[0].numel()

    def step_metrics(self, *, world_size: int) -> dict[str, Any]:
        """Metrics of the step just taken besides its loss, the same on every rank (DPO: its rewards over the
        step's pairs), logged with the step's train record. Called on every rank after every step's
        micro-batches, so it may all-reduce what `loss_sum` gathered."""
        return {}

    def evaluate(self, ctx: EvalContext) -> dict[str, Any]:
        """Metrics on the validation data, the same on every rank; `val_loss` at least."""
        raise NotImplementedError

    def hellaswag(self, ctx: EvalContext) -> dict[str, Any] | None:
        return None

    def sample(self, ctx: EvalContext) -> list[str] | None:
        return None

    def start_record(self) -> dict[str, Any]:
        return {}

    def flops_per_token(self, model: torch.nn.Module) -> float:
        """Training FLOPs per forward token (for MFU)."""
        raise NotImplementedError

    def save_model(self, model: torch.nn.Module, directory: Path) -> None:
        """Write the model into a checkpoint directory being filled (an HF directory; a LoRA task writes
        its adapter instead, gpt2.finetune.base)."""
        model.save_pretrained(directory)  # type: ignore[operator]  # the model's own HF class and config

    def save_extra(self, directory: Path) -> None:
        """Files of the task's own for a checkpoint directory being filled, after the model and the tokenizer
        (an instruction task writes its prompt format)."""


class LanguageModelTask(Task):
    """Next-token prediction on windows of llm.c token shards: pretraining and continued pretraining."""

    name = "lm"

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.shard_dir: Path | None = None
        self.val_bytes_per_token: float | None = None
        self.val_loader: Any = None
        self.hellaswag_examples = None
        if cfg.eval.hellaswag:  # read (and checked) before anything runs, so a bad file fails at once
            from gpt2.eval.hellaswag import load_examples

            self.hellaswag_examples = load_examples(cfg.eval.hellaswag, limit=cfg.eval.hellaswag_limit or None)

    # ----------------------------------------------------------------------------------- data
    def prepare(self, *, progress: bool) -> None:
        from gpt2.train.setup import ensure_shards, ensure_tokenizer

        self.tokenizer = ensure_tokenizer(self.cfg.data, progress=progress)
        self.shard_dir = ensure_shards(self.cfg.data, self.tokenizer, progress=progress)

    def ready(self, *, master: bool) -> None:
        from gpt2.train.setup import bytes_per_token

        if master:
            self.val_bytes_per_token = bytes_per_token(self.shard_dir, self.tokenizer)

    def geometry(self, world_size: int) -> Geometry:
        T, B = self.cfg.train.seq_len, self.cfg.train.micro_batch_size
        per_micro = B * T
        per_step = self.cfg.train.global_batch_tokens or per_micro * world_size
        if per_step % (per_micro * world_size) != 0:
            n = per_micro * world_size
            raise UserError(
                f"train.global_batch_tokens={per_step} is not a multiple of micro_batch_size × seq_len × "
                f"processes = {B} × {T} × {world_size} = {n}; pick a multiple, e.g. {n * max(1, round(per_step / n))}"
            )
        return Geometry(per_micro=per_micro, per_step=per_step, unit="tokens", tokens_per_micro=per_micro)

    def flops_per_token(self, model: torch.nn.Module) -> float:
        from gpt2.model.info import flops_per_token

        return flops_per_token(model.config, self.cfg.train.seq_len, training=True)

    # ---------------------------------------------------------------------------------- model
    def build_model(self, checkpoint: Path | None) -> torch.nn.Module:
        from gpt2.model.gpt2 import GPT2LMHeadModel
        from gpt2.train.setup import build_model

        cfg = self.cfg
        model = build_model(cfg.model, cfg.train, vocab_size=self.tokenizer.n_vocab, eot=self.tokenizer.eot_token)
        if checkpoint is not None:
            p = cfg.model.dropout
            model = GPT2LMHeadModel.from_pretrained(checkpoint, resid_pdrop=p, embd_pdrop=p, attn_pdrop=p,
                                                    pad_vocab_size_multiple=model.config.pad_vocab_size_multiple)
        return model

    def train_loader(self, *, rank: int, world_size: int) -> Loader:
        from gpt2.data.loader import TokenLoader

        t = self.cfg.train
        self.val_loader = TokenLoader(self.shard_dir, split="val", batch_size=t.micro_batch_size, seq_len=t.seq_len,
                                      rank=rank, world_size=world_size, shuffle=False, drop_last=False)
        return TokenLoader(self.shard_dir, split="train", batch_size=t.micro_batch_size, seq_len=t.seq_len, rank=rank,
                           world_size=world_size, shuffle=True, seed=t.seed)

    # ----------------------------------------------------------------------------------- loss
    def count(self, batch: Batch) -> float:
        return float((batch[1] != -100).sum())

    def loss_sum(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        x, y = batch
        # The model's loss is the mean over the targets that are not -100 (0 when there are none);
        # times their count it is their sum.
        return model(x, targets=y, return_logits=False).loss * (y != -100).sum()

    # ----------------------------------------------------------------------------- evaluation
    def evaluate(self, ctx: EvalContext) -> dict[str, Any]:
        loader, device = self.val_loader, ctx.device
        loader.reset()
        total = torch.zeros((), device=device, dtype=torch.float64)
        count = torch.zeros((), device=device, dtype=torch.float64)
        limit = self.cfg.eval.steps or len(loader)
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
        bpb = val / math.log(2) / self.val_bytes_per_token if self.val_bytes_per_token else None
        return {"val_loss": val, "val_bpb": bpb}

    def hellaswag(self, ctx: EvalContext) -> dict[str, Any] | None:
        from gpt2.eval.hellaswag import evaluate_hellaswag
        from gpt2.train import distributed as dist_utils

        if self.hellaswag_examples is None:
            return None
        # DDP: each rank scores its share of the examples and the counts are summed. FSDP: rank 0 scores
        # them all on the gathered weights (the scorer runs the body and the head separately, and ranks
        # scoring different shares would make different numbers of FSDP forwards).
        fsdp = ctx.mode == "fsdp"
        scorer = dist_utils.plain_model(ctx.model, mode="fsdp", rank=ctx.rank, device=ctx.device) if fsdp else ctx.model
        if scorer is None:
            return None
        share = (0, 1) if fsdp else (ctx.rank, ctx.world_size)
        with ctx.autocast:
            hs = evaluate_hellaswag(scorer, self.tokenizer, self.hellaswag_examples, rank=share[0], world_size=share[1])
        return {"hellaswag_acc": hs.acc, "hellaswag_acc_norm": hs.acc_norm, "hellaswag_examples": hs.examples}

    def sample(self, ctx: EvalContext) -> list[str] | None:
        from gpt2.train import distributed as dist_utils

        plain = dist_utils.plain_model(ctx.model, mode=ctx.mode, rank=ctx.rank, device=ctx.device)  # FSDP: all gather
        if plain is None:
            return None
        return sample_text(plain, self.tokenizer, self.cfg)

    def start_record(self) -> dict[str, Any]:
        return {"tokenizer": repr(self.tokenizer), "shards": str(self.shard_dir)}


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
