"""Tasks: what the trainer trains. A task is its data, its model, and its loss as a sum with a count.

    from gpt2.train.loop import run
    run(cfg, LanguageModelTask(cfg))          # what `gpt2 train` does
    run(cfg, ClassificationTask(cfg))         # what `gpt2 finetune classify` does (gpt2.finetune.classify_task)

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
  target weighs; `step_metrics` adds what else a step measured to its train record. `TokenLossTask`
  is this for next-token prediction (language modelling, instruction tuning);
- its evaluators (`evaluators`): objects the trainer calls on held-out data (gpt2.train.evaluators:
  validation loss, HellaSwag, samples; classification metrics in gpt2.finetune.classify_task);
- what a checkpoint holds of it (`save_model`, `save_extra`) and its start record.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from gpt2.config import RunConfig
from gpt2.errors import UserError
from gpt2.train.evaluators import Evaluator

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


class Task:
    """The base of every task; see the module docstring. Subclasses fill in every method that raises."""

    name = "task"
    cfg: RunConfig
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

    def evaluators(self, *, rank: int, world_size: int) -> list[Evaluator]:
        """What the trainer measures on held-out data (gpt2.train.evaluators): the "val" evaluator first.
        Called on every rank after `train_loader`."""
        raise NotImplementedError

    def start_record(self) -> dict[str, Any]:
        return {}

    def save_model(self, model: torch.nn.Module, directory: Path) -> None:
        """Write the model into a checkpoint directory being filled (an HF directory; a LoRA task writes
        its adapter instead, gpt2.finetune.base)."""
        model.save_pretrained(directory)  # type: ignore[operator]  # the model's own HF class and config

    def save_extra(self, directory: Path) -> None:
        """Files of the task's own for a checkpoint directory being filled, after the model and the tokenizer
        (an instruction task writes its prompt format)."""


class TokenLossTask(Task):
    """Next-token loss on (x, y) batches, y = -100 where nothing is predicted (masked or padded): the count of
    a micro-batch is its targets, its loss the sum of their cross-entropies. Language modelling and
    instruction tuning both train this way."""

    def count(self, batch: Batch) -> float:
        return float((batch[1] != -100).sum())

    def loss_sum(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        x, y = batch
        # The model's loss is the mean over the targets that are not -100 (0 when there are none);
        # times their count it is their sum.
        return model(x, targets=y, return_logits=False).loss * (y != -100).sum()


class LanguageModelTask(TokenLossTask):
    """Next-token prediction on windows of llm.c token shards: pretraining and continued pretraining."""

    name = "lm"

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.shard_dir: Path | None = None
        self.val_bytes_per_token: float | None = None
        self.hellaswag_examples = None
        self.sizing = None  # the plan of a model.preset=auto run (gpt2.train.sizing.Plan)
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

    # ---------------------------------------------------------------------------------- model
    def build_model(self, checkpoint: Path | None) -> torch.nn.Module:
        from gpt2.model.gpt2 import GPT2LMHeadModel
        from gpt2.train.setup import build_model

        cfg = self.cfg
        if checkpoint is not None and cfg.model.preset == "auto":
            # The shape and the dropout picked at the start are the checkpoint's own (its config.json).
            pdrops = cfg.model.pdrops() if cfg.model.dropout is not None else {}
            return GPT2LMHeadModel.from_pretrained(checkpoint, **pdrops)
        if cfg.model.preset == "auto":
            self._size_model()
        model = build_model(cfg.model, cfg.train, vocab_size=self.tokenizer.n_vocab, eot=self.tokenizer.eot_token)
        if checkpoint is not None:
            model = GPT2LMHeadModel.from_pretrained(checkpoint, **cfg.model.pdrops(),
                                                    pad_vocab_size_multiple=model.config.pad_vocab_size_multiple)
        return model

    def _size_model(self) -> None:
        """model.preset=auto: time the LADDER's rungs here and fill model.* and optim.weight_decay with the pick
        (gpt2.train.sizing) in the run's config itself, so run.yaml records what trained."""
        import torch.distributed as dist

        from gpt2.common import pick_device, resolve_dtype, seed_everything
        from gpt2.data.loader import shard_files
        from gpt2.data.shards import read_header
        from gpt2.train.setup import build_model
        from gpt2.train.sizing import size_model, time_shape

        cfg = self.cfg
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise UserError("model.preset=auto times this machine for a single-process run; name the shape "
                            "(model.preset, model.n_layer/n_head/n_embd) for a distributed one")
        device = pick_device(cfg.train.device)
        dtype, _ = resolve_dtype(cfg.train.dtype, device)
        train_tokens = sum(read_header(f).n_tokens for f in shard_files(self.shard_dir, split="train"))
        vocab, eot = self.tokenizer.n_vocab, self.tokenizer.eot_token

        def time_rung(rung):
            from gpt2.train.sizing import apply

            shaped, _ = apply(cfg.model, cfg.optim, rung)
            return time_shape(lambda: build_model(shaped, cfg.train, vocab_size=vocab, eot=eot), cfg,
                              vocab_size=vocab, device=device, dtype=dtype)

        cfg.model, cfg.optim, self.sizing = size_model(cfg, train_tokens=train_tokens, time_rung=time_rung)
        # Timing built models and drew random numbers: seed again, so the model starts exactly as a run that
        # names this shape (run.yaml) does.
        seed_everything(cfg.train.seed)
        print(f"model: sized to this machine: {self.sizing.reason}", file=sys.stderr)

    def train_loader(self, *, rank: int, world_size: int) -> Loader:
        from gpt2.data.loader import TokenLoader

        t = self.cfg.train
        return TokenLoader(self.shard_dir, split="train", batch_size=t.micro_batch_size, seq_len=t.seq_len, rank=rank,
                           world_size=world_size, shuffle=True, seed=t.seed)

    # ----------------------------------------------------------------------------- evaluation
    def evaluators(self, *, rank: int, world_size: int) -> list[Evaluator]:
        from gpt2.data.loader import TokenLoader
        from gpt2.train.evaluators import HellaSwag, TextSamples, TokenValidation

        t = self.cfg.train
        val_loader = TokenLoader(self.shard_dir, split="val", batch_size=t.micro_batch_size, seq_len=t.seq_len,
                                 rank=rank, world_size=world_size, shuffle=False, drop_last=False)
        out: list[Evaluator] = [TokenValidation(self.cfg, val_loader, self.val_bytes_per_token)]
        if self.hellaswag_examples is not None:
            out.append(HellaSwag(self.cfg, self.tokenizer, self.hellaswag_examples))
        out.append(TextSamples(self.cfg, self.tokenizer))
        return out

    def start_record(self) -> dict[str, Any]:
        record = {"tokenizer": repr(self.tokenizer), "shards": str(self.shard_dir)}
        if self.sizing is not None:
            record["sizing"] = self.sizing.record()
        return record

