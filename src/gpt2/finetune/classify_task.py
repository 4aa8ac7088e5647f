"""The classification task: labelled texts → GPT2ForSequenceClassification, through the one trainer.

    gpt2 finetune classify finetune-sms-spam                      # what runs it (gpt2.finetune.commands)
    run(cfg, ClassificationTask(cfg))                            # the same from Python

A batch is (input_ids, attention_mask, labels, weights): the examples right-padded to the longest of
the micro-batch, the head reading the last real token. The loss of a batch is the sum over its
examples of weight × cross-entropy (plus, with finetune.every_token_weight, that weight times the mean of
the head's cross-entropy at each of the example's tokens), and its count is the sum of the weights (1 each, or the class
weights of finetune.balance=class_weights), so the trainer's global normalisation gives every example
its weight whatever the micro-batching. Evaluation scores the validation split on every rank's share
and all-reduces the loss and the confusion matrix, so every rank gets the same accuracy, macro-F1,
per-class precision/recall (and the best checkpoint is picked the same everywhere); rank 0 draws the
confusion matrix into the run directory.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gpt2.config import RunConfig
from gpt2.errors import UserError
from gpt2.finetune.base import FinetuneTask
from gpt2.finetune.data import EpochCursor, pad_right
from gpt2.train.evaluators import EvalContext, Evaluator
from gpt2.train.task import Batch, Loader


@dataclass
class Split:
    """One split, tokenized: token ids per example and label ids."""

    ids: list[list[int]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)


def pad_batch(ids: list[list[int]], labels: list[int], weights: list[float], pad_id: int) -> Batch:
    """Right-pad to the longest example: (input_ids (B, T), attention_mask (B, T), labels (B,), weights (B,))."""
    x, mask = pad_right(ids, pad_id)
    return x, mask, torch.tensor(labels, dtype=torch.long), torch.tensor(weights, dtype=torch.float32)


class ExampleLoader(EpochCursor):
    """Resumable training micro-batches of examples, the same order on every rank and every run.

    Each epoch is a permutation drawn from (seed, epoch); a step's micro-batch on rank r takes the r-th
    block of B of the next B × world_size examples of that order, and the last incomplete group of an
    epoch is dropped (so every rank steps in lockstep with full batches). The state is (epoch, offset)."""

    def __init__(self, split: Split, *, batch_size: int, rank: int, world_size: int, seed: int, pad_id: int,
                 class_weights: list[float] | None = None) -> None:
        if len(split) < batch_size * world_size:
            raise UserError(f"the training split has {len(split)} examples, fewer than one step's micro-batches "
                            f"(train.micro_batch_size={batch_size} × {world_size} process(es)); lower "
                            "train.micro_batch_size")
        self.split, self.B, self.rank, self.world = split, batch_size, rank, world_size
        self.seed, self.pad_id, self.class_weights = seed, pad_id, class_weights
        self.epoch, self.offset = 0, 0

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.split))

    def next_batch(self) -> Batch:
        group = self.B * self.world
        if self.offset + group > len(self.split):
            self.epoch, self.offset = self.epoch + 1, 0
        idx = self.order(self.epoch)[self.offset + self.rank * self.B: self.offset + (self.rank + 1) * self.B]
        self.offset += group
        labels = [self.split.labels[i] for i in idx]
        weights = [self.class_weights[y] for y in labels] if self.class_weights else [1.0] * len(labels)
        return pad_batch([self.split.ids[i] for i in idx], labels, weights, self.pad_id)

    @property
    def n_examples(self) -> int:
        return len(self.split)


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, n: int) -> torch.Tensor:
    """(n, n) counts, rows = true label, columns = prediction."""
    return torch.bincount(labels * n + pred, minlength=n * n).reshape(n, n)


def metrics_from_confusion(confusion: list[list[int]], names: list[str]) -> dict[str, Any]:
    """accuracy, macro-F1, per-class precision/recall/F1 (gpt2.finetune.metrics) of a confusion matrix."""
    from gpt2.finetune.metrics import classification_report

    pred, true = [], []
    for i, row in enumerate(confusion):
        for j, c in enumerate(row):
            true += [i] * c
            pred += [j] * c
    return classification_report(pred, true, names)


@torch.no_grad()
def score(model: torch.nn.Module, split: Split, *, batch_size: int, pad_id: int, device: torch.device,
          autocast: Any, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of cross-entropies (fp64), confusion matrix) over this rank's share of `split` (every world_size-th
    example, by length so batches pad little)."""
    n = len(model.config.id2label)
    mine = sorted(range(rank, len(split), world_size), key=lambda i: len(split.ids[i]))
    loss = torch.zeros((), dtype=torch.float64, device=device)
    confusion = torch.zeros((n, n), dtype=torch.long, device=device)
    for s in range(0, len(mine), batch_size):
        idx = mine[s: s + batch_size]
        x, mask, y, _ = (t.to(device) for t in pad_batch([split.ids[i] for i in idx], [split.labels[i] for i in idx],
                                                           [1.0] * len(idx), pad_id))
        with autocast:
            logits = model(x, attention_mask=mask).logits.float()  # (B, n)
        loss += F.cross_entropy(logits, y, reduction="sum").double()
        confusion += confusion_matrix(logits.argmax(-1), y, n)
    return loss, confusion


class ClassificationMetrics:
    """The loss, accuracy, macro-F1 and per-class precision/recall of a split, the same on every rank (each
    scores its share; the loss and the confusion matrix are all-reduced); rank 0 draws the confusion matrix
    into the run directory."""

    kind = "val"

    def __init__(self, data: Split, *, split: str, names: list[str], batch_size: int, pad_id: int,
                 interval: int) -> None:
        self.data, self.split, self.names = data, split, names
        self.batch_size, self.pad_id, self.interval = batch_size, pad_id, interval

    def __call__(self, ctx: EvalContext) -> dict[str, Any]:
        loss, confusion = score(ctx.model, self.data, batch_size=self.batch_size, pad_id=self.pad_id,
                                device=ctx.device, autocast=ctx.autocast, rank=ctx.rank, world_size=ctx.world_size)
        if ctx.world_size > 1:
            torch.distributed.all_reduce(loss)
            torch.distributed.all_reduce(confusion)
        report = metrics_from_confusion(confusion.tolist(), self.names)
        split = self.split
        if ctx.master:
            from gpt2.finetune.metrics import plot_confusion

            plot_confusion(report["confusion"], self.names, ctx.run_dir / f"confusion-{split}.png",
                           title=f"{split}, step {ctx.step}: accuracy {report['accuracy']:.4f}")
        return {"val_loss" if split == "val" else f"{split}_loss": loss.item() / max(len(self.data), 1), **report}


class ClassificationTask(FinetuneTask):
    """Labelled texts (finetune.*) on a pretrained base (model.init_from) with a new score head."""

    name = "classify"

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        if not cfg.finetune.train_file:
            raise UserError("finetune.train_file is not set: give a csv/tsv/jsonl/parquet file with text and label "
                            "columns (finetune.text_field, finetune.label_field)")
        metric = cfg.finetune.metric
        self.best_metric = (metric, "min" if metric == "val_loss" else "max")
        self.splits: dict[str, Split] = {}
        self.id2label: dict[int, str] = {}
        self.class_weights: list[float] | None = None
        self.summary: dict[str, Any] = {}

    # ----------------------------------------------------------------------------------- data
    def _read_splits(self) -> None:
        from gpt2.finetune import data as D

        f, seq_len = self.cfg.finetune, self.cfg.train.seq_len
        read = lambda path: D.read_labelled(path, text_field=f.text_field, label_field=f.label_field)  # noqa: E731
        whole = read(f.train_file)
        skipped = whole.skipped_empty
        texts, labels = whole.texts, whole.labels
        given = {name: read(path) for name, path in (("val", f.val_file), ("test", f.test_file)) if path}
        skipped += sum(d.skipped_empty for d in given.values())
        keep = np.arange(len(texts))
        if f.balance == "downsample":
            keep = np.asarray(D.downsample(labels, seed=f.split_seed))
        tr, va, te = self.split_indices(len(keep), given)
        parts = {"train": ([texts[i] for i in keep[tr]], [labels[i] for i in keep[tr]])}
        for name, idx in (("val", va), ("test", te)):
            parts[name] = ((given[name].texts, given[name].labels) if name in given
                           else ([texts[i] for i in keep[idx]], [labels[i] for i in keep[idx]]))
        every = [y for name in ("train", "val", "test") for y in parts[name][1]]
        n_tr, n_va = len(parts["train"][1]), len(parts["val"][1])
        D.check_label_coverage(every, train=range(n_tr), val=range(n_tr, n_tr + n_va),
                               test=range(n_tr + n_va, len(every)))
        self.id2label, label2id = D.label_maps(parts["train"][1])
        if f.balance == "class_weights":
            self.class_weights = D.class_weights(parts["train"][1], label2id)
        self.truncated = 0
        for name, (t, y) in parts.items():
            ids, cut = D.encode_for_classification(self.tokenizer, t, max_length=seq_len,
                                                   truncation_side=f.truncation_side)
            self.truncated += cut
            self.splits[name] = Split(ids=ids, labels=[label2id[v] for v in y])
        if not len(self.splits["val"]):
            raise UserError("the validation split is empty: give finetune.val_file or a larger finetune.split[1]")
        self.summary = {
            "labels": [self.id2label[i] for i in range(len(self.id2label))],
            "examples": {k: len(v) for k, v in self.splits.items()},
            "skipped_empty": skipped,
            "truncated": self.truncated,
        }
        if skipped:
            print(f"skipped {skipped} empty text(s)", file=sys.stderr)

    # ---------------------------------------------------------------------------------- model
    def build_model(self, checkpoint: Path | None) -> torch.nn.Module:
        from gpt2.model.classify import GPT2ForSequenceClassification

        p = self.cfg.model.dropout or 0.0
        if checkpoint is not None and self.lora is None:
            model = GPT2ForSequenceClassification.from_pretrained(checkpoint, resid_pdrop=p, embd_pdrop=p, attn_pdrop=p)
        else:  # a fresh head on the base (for a LoRA run's resume too: the adapter then brings the trained head)
            base = self._base
            # from_lm builds the classifier from the base's config: its dropout modules get the run's rate
            base.config.resid_pdrop = base.config.embd_pdrop = base.config.attn_pdrop = p
            model = GPT2ForSequenceClassification.from_lm(base, id2label=self.id2label, pad_token_id=self.pad_id,
                                                          max_length=self.cfg.train.seq_len,
                                                          truncation_side=self.cfg.finetune.truncation_side)
        self.check_context(model)
        self._base = None
        freeze(model, self.cfg.finetune.trainable, self.cfg.finetune.last_blocks)
        return self.adapt(model, checkpoint, write_base=True)

    def train_loader(self, *, rank: int, world_size: int) -> Loader:
        return ExampleLoader(self.splits["train"], batch_size=self.cfg.train.micro_batch_size, rank=rank,
                             world_size=world_size, seed=self.cfg.train.seed, pad_id=self.pad_id,
                             class_weights=self.class_weights)

    # ----------------------------------------------------------------------------------- loss
    def count(self, batch: Batch) -> float:
        return float(batch[3].sum())

    def tokens(self, batch: Batch) -> int:
        return int(batch[1].sum())

    def loss_sum(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        x, mask, y, w = batch
        aux = self.cfg.finetune.every_token_weight
        if not aux:
            logits = model(x, attention_mask=mask).logits.float()  # (B, num_labels)
            return (F.cross_entropy(logits, y, reduction="none") * w).sum()
        from gpt2.model.classify import last_token_index

        every = model(x, attention_mask=mask, every_position=True).logits.float()  # (B, T, num_labels)
        B, T, n = every.shape
        last = last_token_index(x, attention_mask=mask, pad_token_id=None)  # (B,)
        ce = F.cross_entropy(every.reshape(B * T, n), y.repeat_interleave(T), reduction="none").view(B, T)
        m = mask.to(ce.dtype)
        # each example weighs the same whatever its length: the mean over its real tokens
        per_example = ce[torch.arange(B), last] + aux * (ce * m).sum(1) / m.sum(1).clamp(min=1)
        return (per_example * w).sum()

    # ----------------------------------------------------------------------------- evaluation
    def evaluators(self, *, rank: int, world_size: int) -> list[Evaluator]:
        return [self.metrics("val")]

    def metrics(self, split: str) -> ClassificationMetrics:
        """The evaluator of a split (the trainer's is "val"; gpt2 finetune classify scores "test" at the end)."""
        return ClassificationMetrics(self.splits[split], split=split, names=[self.id2label[i] for i in
                                     range(len(self.id2label))], batch_size=self.cfg.finetune.eval_batch_size,
                                     pad_id=self.pad_id, interval=self.cfg.eval.interval)

    def start_record(self) -> dict[str, Any]:
        return {"tokenizer": repr(self.tokenizer), **self.summary, **super().start_record()}


def freeze(model: torch.nn.Module, trainable: str, last_blocks: int) -> None:
    """What trains: `head` (the score layer), `last_blocks` (the last N blocks, the final LayerNorm and the
    head, as LLMs-from-scratch trains the last block) or `all`."""
    if trainable == "all":
        return
    for p in model.parameters():
        p.requires_grad_(False)
    keep: list[torch.nn.Module] = [model.score]
    if trainable == "last_blocks":
        blocks = model.transformer.h
        if last_blocks > len(blocks):
            raise UserError(f"finetune.last_blocks={last_blocks} but the model has {len(blocks)} blocks")
        keep += [*blocks[len(blocks) - last_blocks:], model.transformer.ln_f]
    for m in keep:
        for p in m.parameters():
            p.requires_grad_(True)
