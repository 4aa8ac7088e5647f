"""Preference tuning with DPO: prompt/chosen/rejected pairs → a policy that prefers the chosen, through the one trainer.

    gpt2 finetune dpo dpo-polite                                 # what runs it (gpt2.finetune.commands)
    run(cfg, DPOTask(cfg))                                       # the same from Python

DPO (Rafailov et al. 2023, arXiv:2305.18290) needs no reward model: with the policy π and a frozen
reference π_ref (the start), a pair's loss is -log σ(β · [(log π(y_c|x) - log π_ref(y_c|x)) -
(log π(y_r|x) - log π_ref(y_r|x))]), TRL's `loss_type="sigmoid"`. log π(y|x) is the sum of the response
tokens' log-probabilities (TRL), or their mean with finetune.dpo.average_logps (LLMs-from-scratch; then
the loss is TRL's `sigmoid_norm`). The response is the reply and the <|endoftext|> that closes it; the
prompt and the padding are masked. `rewards/chosen` = β · (log π(y_c|x) - log π_ref(y_c|x)), and so on:
the metrics carry TRL's names (`rewards/chosen`, `rewards/rejected`, `rewards/margins`,
`rewards/accuracies`, `logps/chosen`, `logps/rejected`; `eval_…` on the held-out pairs).

**The trainer's contract.** A micro-batch is B pairs (2B rows, gpt2.finetune.preference_data); its
count is B and loss_sum the sum of the B pair losses, so the trainer normalises per pair across
micro-steps and processes. At step 0 the policy is the reference: every log-ratio is exactly 0, the loss
ln 2 and every reward 0 (tested to 1e-6).

**The reference** is the start, model.init_from (or finetune.dpo.reference, which must share the
policy's tokenizer). Full fine-tuning keeps a frozen copy of it. With finetune.lora.* it is the same
weights with the adapters switched off (gpt2.model.lora.adapters_disabled): no second model in memory.
finetune.dpo.precompute_reference=true scores the reference once, before training (each rank scores every
pair: the same numbers everywhere), and keeps no reference model at all. The held-out pairs' reference
log-probs are computed once in any case (the reference never changes) at the first evaluation.

Checkpoints are ordinary instruction checkpoints (chat.json and the chat template, as
gpt2.finetune.instruct writes them) or PEFT adapters; the held-out pairs land in RUN/heldout.jsonl, so
`gpt2 eval RUN --preference RUN/heldout.jsonl` scores exactly them (gpt2.finetune.dpo_eval).
"""

from __future__ import annotations

import contextlib
import copy
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gpt2.config import RunConfig
from gpt2.errors import UserError
from gpt2.finetune.instruct import InstructTask
from gpt2.train.evaluators import EvalContext, Evaluator
from gpt2.train.task import Batch, Geometry, Loader

METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
           "logps/rejected")


# ------------------------------------------------------------------------------------------- the loss
def sequence_logps(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the log-probs of each row's targets (N,), their count (N,)) for x, y (N, T); -100 is no target.

    The head runs fused, on the response tokens only (gpt2.model.loss.lm_head_token_nll): no (N, T, V)
    logits, which at GPT-2's vocabulary would outweigh the model, its optimizer and LoRA's saving."""
    nll = model(x, targets=y, return_logits=False, reduction="none").loss  # (N, T), 0 where y is -100
    return -nll.sum(1), (y != -100).sum(1)


def dpo_loss(policy: torch.Tensor, reference: torch.Tensor, *, beta: float
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO's sigmoid loss per pair and the rewards: policy and reference log-probs (2B,), chosen rows first.

    Returns (losses (B,), chosen rewards (B,), rejected rewards (B,)); the rewards carry no gradient."""
    chosen, rejected = (policy - reference).chunk(2)  # log-ratios, (B,) each
    losses = -F.logsigmoid(beta * (chosen - rejected))
    return losses, beta * chosen.detach(), beta * rejected.detach()


def pair_logps(sums: torch.Tensor, counts: torch.Tensor, *, average: bool) -> torch.Tensor:
    """A response's log π(y|x): the sum over its tokens, or (average) their mean."""
    return sums / counts.clamp(min=1).to(sums.dtype) if average else sums


def preference_stats(policy: torch.Tensor, reference: torch.Tensor, *, beta: float) -> torch.Tensor:
    """Sums over pairs, float64: [pairs, loss, reward chosen, reward rejected, margin, accurate, logp chosen,
    logp rejected, policy alone ranks chosen first]; the inputs are (2B,) log-probs, chosen rows first."""
    losses, rc, rr = dpo_loss(policy.detach(), reference, beta=beta)
    pc, pr = policy.detach().chunk(2)
    cols = [torch.ones_like(losses), losses, rc, rr, rc - rr, (rc > rr).to(rc.dtype), pc, pr, (pc > pr).to(pc.dtype)]
    return torch.stack([c.double().sum() for c in cols])


def stats_to_metrics(stats: torch.Tensor, *, prefix: str = "") -> dict[str, float]:
    """Means over pairs of what preference_stats summed, under TRL's names (`prefix` "eval_" for held-out pairs)."""
    s = (stats / stats[0].clamp(min=1)).tolist()
    names = ["loss", *METRICS[:2], "rewards/margins", "rewards/accuracies", *METRICS[4:], "policy_accuracy"]
    return {f"{prefix}{name}": s[i + 1] for i, name in enumerate(names)}


# ------------------------------------------------------------------------------------------- scoring
@torch.no_grad()
def score_pairs(model: torch.nn.Module, pairs: list[Any], *, batch_size: int, pad_id: int, device: torch.device,
                autocast: Any = None, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probs (2n,), token counts (2n,)) of every pair's chosen then rejected side, chosen rows first,
    the same on every rank: pairs sorted by length, batches of `batch_size`, rank r scores every world_size-th
    batch and the results are all-reduced."""
    from gpt2.finetune.instruct_data import PAD_MULTIPLE
    from gpt2.finetune.preference_data import PairLoader, pad_pairs

    autocast = autocast if autocast is not None else contextlib.nullcontext()
    n = len(pairs)
    sums = torch.zeros(2 * n, dtype=torch.float64, device=device)
    counts = torch.zeros(2 * n, dtype=torch.float64, device=device)
    order = sorted(range(n), key=lambda i: PairLoader.length(pairs[i]))
    longest = max((PairLoader.length(p) for p in pairs), default=0)
    batches = [order[i: i + batch_size] for i in range(0, n, batch_size)]
    for b in range(rank, len(batches), world_size):
        idx = torch.tensor(batches[b], device=device)
        x, y = pad_pairs([pairs[i] for i in batches[b]], pad_id, multiple=PAD_MULTIPLE, longest=longest)[:2]
        with autocast:
            s, c = sequence_logps(model, x.to(device), y.to(device))
        rows = torch.cat([idx, idx + n])  # chosen rows, then rejected rows
        sums[rows], counts[rows] = s.double(), c.double()
    if world_size > 1:
        torch.distributed.all_reduce(sums)
        torch.distributed.all_reduce(counts)
    return sums, counts


def _as_pairs_order(values: torch.Tensor) -> torch.Tensor:
    """(2n,) chosen-then-rejected → (n, 2) per pair."""
    return values.view(2, -1).t()


# --------------------------------------------------------------------------------------------- the task
class DPOTask(InstructTask):
    """Preference pairs (finetune.train_file, finetune.dpo.*) on an instruction-tuned model (model.init_from)."""

    name = "dpo"
    best_metric = ("val_loss", "min")

    def __init__(self, cfg: RunConfig) -> None:  # InstructTask's, but the format comes from the base (prepare)
        from gpt2.finetune.base import FinetuneTask

        FinetuneTask.__init__(self, cfg)
        if not cfg.finetune.train_file:
            raise UserError("finetune.train_file is not set: give preference pairs, e.g. "
                            "../shared/data/instruction-data-with-preference.json or TRL's "
                            "{\"prompt\", \"chosen\", \"rejected\"} jsonl")
        if cfg.train.distributed == "fsdp":
            raise UserError("DPO runs single-process or under DDP (train.distributed=ddp): its reference model is "
                            "not sharded")
        self.dpo = cfg.finetune.dpo
        self.format: Any = None
        self.conversations: dict[str, list[list[dict[str, str]]]] = {}
        self.preferences: dict[str, list[Any]] = {}
        self.pairs: dict[str, list[Any]] = {}
        self.eval_split = "val"
        self.summary: dict[str, Any] = {}
        self.reference: torch.nn.Module | None = None  # a frozen model; None with LoRA or precomputed scores
        self.policy: torch.nn.Module | None = None
        self._other_reference: Any = None  # finetune.dpo.reference when it is not the start
        self._held_out_ref: torch.Tensor | None = None
        self._stats: torch.Tensor | None = None

    # ----------------------------------------------------------------------------------- data
    def prepare(self, *, progress: bool) -> None:
        """The base and its tokenizer and prompt format, the reference (when it is another model), the pairs."""
        from gpt2.finetune.instruct import chat_format

        base = self.load_base()
        self.tokenizer, self.pad_id = base.tokenizer, base.tokenizer.eot_token
        if self.dpo.format is not None:
            self.format = chat_format(self.dpo.format)
        elif base.chat_format is not None:
            self.format = base.chat_format
        else:
            from gpt2.generate.chat import FORMATS

            raise UserError(f"{self.cfg.model.init_from} has no chat.json, so its prompt format is unknown (DPO starts "
                            f"from an instruction-tuned model): name one with --format / finetune.dpo.format "
                            f"({', '.join(FORMATS)})")
        ref = self.dpo.reference
        if ref is not None and str(ref) != str(self.cfg.model.init_from):
            self._other_reference = load_reference(ref, self.tokenizer, policy_name=str(self.cfg.model.init_from))
        self._read_splits()

    def _read_splits(self) -> None:
        from gpt2.finetune.preference_data import encode_pairs, read_preference

        f = self.cfg.finetune
        whole = read_preference(f.train_file)
        given = {name: read_preference(path) for name, path in (("val", f.val_file), ("test", f.test_file)) if path}
        tr, va, te = self.split_indices(len(whole), given)
        self.preferences = {"train": [whole[i] for i in tr]}
        for name, idx in (("val", va), ("test", te)):
            self.preferences[name] = given[name] if name in given else [whole[i] for i in idx]
        if not self.preferences["val"] and not self.preferences["test"]:
            raise UserError(f"finetune.split={list(f.split)} holds nothing out: give a validation or test share "
                            "(e.g. [0.85, 0.05, 0.1]) or finetune.val_file")
        self.eval_split = "val" if self.preferences["val"] else "test"
        stats: dict[str, Any] = {}
        for name, prefs in self.preferences.items():
            self.pairs[name], kept, truncated = encode_pairs(prefs, self.tokenizer, self.format,
                                                             max_tokens=self.cfg.train.seq_len + 1)
            # what sample() shows: each kept pair's prompt and chosen reply
            self.conversations[name] = [[*prefs[i].prompt, {"role": "assistant", "content": prefs[i].chosen}]
                                        for i in kept]
            dropped = len(prefs) - len(kept)
            stats[name] = {"pairs": len(kept), "truncated": truncated, "dropped": dropped}
            if truncated or dropped:
                print(f"{name}: {truncated} side(s) longer than train.seq_len+1={self.cfg.train.seq_len + 1} tokens "
                      f"were cut, {dropped} pair(s) left with no response token were dropped", file=sys.stderr)
        if not self.pairs["train"]:
            raise UserError(f"no training pairs left from {f.train_file} (see the counts above)")
        self.summary = {"format": self.format.name, "beta": self.dpo.beta, "average_logps": self.dpo.average_logps,
                        "precompute_reference": self.dpo.precompute_reference,
                        "reference": str(self.dpo.reference or self.cfg.model.init_from),
                        "splits": stats, "evaluated_on": self.eval_split}

    def ready(self, *, master: bool) -> None:
        from gpt2.finetune.instruct import HELD_OUT_FILE
        from gpt2.finetune.preference_data import write_preference

        self.master = master
        held_out = self.preferences["test"] or self.preferences["val"]
        if master:
            run_dir = Path(self.cfg.train.out_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            write_preference(run_dir / HELD_OUT_FILE, held_out)

    def geometry(self, world_size: int) -> Geometry:
        g = super().geometry(world_size)
        g.tokens_per_micro *= 2  # a pair is two sequences
        return g

    # ---------------------------------------------------------------------------------- model
    def build_model(self, checkpoint: Path | None) -> torch.nn.Module:
        """The policy as instruction tuning builds it; first the reference: a frozen copy of the start, the
        other model finetune.dpo.reference names, or nothing (LoRA: adapters off; or scores computed here)."""
        start = self._base
        reference = self._other_reference or start
        if self.dpo.precompute_reference:
            self._precompute(reference)
        elif self._other_reference is not None:
            self.reference = self._other_reference
        elif self.lora is None:
            # the start itself becomes the policy of a fresh run; a resumed one loads the checkpoint instead
            self.reference = copy.deepcopy(start) if checkpoint is None else start
        self._other_reference = None
        if self.reference is not None:
            self.reference.eval().requires_grad_(False)
        self.policy = super().build_model(checkpoint)
        return self.policy

    def _precompute(self, reference: torch.nn.Module) -> None:
        """Every pair's reference log-probs, once: the training pairs carry theirs into their batches."""
        from gpt2.common import pick_device, resolve_dtype

        device = pick_device(self.cfg.train.device)
        dtype, _ = resolve_dtype(self.cfg.train.dtype, device)
        autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
        was = reference.training
        reference.to(device).eval()
        bs = self.cfg.finetune.eval_batch_size
        sums, _ = score_pairs(reference, self.pairs["train"], batch_size=bs, pad_id=self.pad_id, device=device,
                              autocast=autocast)
        for pair, (c, r) in zip(self.pairs["train"], _as_pairs_order(sums).tolist()):
            pair.ref = (c, r)
        self._held_out_ref = score_pairs(reference, self.pairs[self.eval_split], batch_size=bs, pad_id=self.pad_id,
                                         device=device, autocast=autocast)[0]
        reference.train(was)
        if self.master:
            print(f"reference log-probs computed for {len(self.pairs['train'])} training and "
                  f"{len(self.pairs[self.eval_split])} held-out pairs", file=sys.stderr)

    def train_loader(self, *, rank: int, world_size: int) -> Loader:
        from gpt2.finetune.preference_data import PairLoader

        return PairLoader(self.pairs["train"], batch_size=self.cfg.train.micro_batch_size, rank=rank,
                          world_size=world_size, seed=self.cfg.train.seed, pad_id=self.pad_id)

    # ----------------------------------------------------------------------------------- loss
    def count(self, batch: Batch) -> float:
        return float(batch[0].shape[0] // 2)  # pairs

    def _reference_sums(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The reference's summed log-probs of the rows: the frozen model, or the policy with its adapters off."""
        from gpt2.model.lora import adapters_disabled

        with torch.no_grad():
            if self.reference is not None:
                self.reference.to(x.device)
                return sequence_logps(self.reference, x, y)[0]
            assert self.policy is not None
            was = self.policy.training
            self.policy.eval()  # the reference is deterministic: no dropout
            try:
                with adapters_disabled(self.policy):
                    return sequence_logps(self.policy, x, y)[0]
            finally:
                self.policy.train(was)

    def loss_sum(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        x, y = batch[0], batch[1]
        sums, counts = sequence_logps(model, x, y)
        ref_sums = batch[2].to(sums.dtype) if len(batch) > 2 else self._reference_sums(x, y).to(sums.dtype)
        average = self.dpo.average_logps
        policy, reference = pair_logps(sums, counts, average=average), pair_logps(ref_sums, counts, average=average)
        losses, _, _ = dpo_loss(policy, reference, beta=self.dpo.beta)
        stats = preference_stats(policy, reference, beta=self.dpo.beta)
        self._stats = stats if self._stats is None else self._stats + stats
        return losses.sum()

    def step_metrics(self, *, world_size: int) -> dict[str, Any]:
        """The step's rewards and log-probs, means over its pairs on every micro-step and rank (TRL's names)."""
        stats, self._stats = self._stats, None
        if stats is None:
            return {}
        if world_size > 1:
            torch.distributed.all_reduce(stats)
        metrics = stats_to_metrics(stats)
        return {k: metrics[k] for k in METRICS}

    # ----------------------------------------------------------------------------- evaluation
    def evaluators(self, *, rank: int, world_size: int) -> list[Evaluator]:
        """The DPO metrics of the held-out pairs, then InstructTask's samples (their prompts and chosen replies)."""
        return [PreferenceMetrics(self), self.samples()]

    def held_out_reference(self, ctx: EvalContext, **kw: Any) -> torch.Tensor:
        """The reference's summed log-probs of the held-out pairs, scored once (the reference never changes)."""
        from gpt2.model.lora import adapters_disabled

        if self._held_out_ref is None:
            pairs = self.pairs[self.eval_split]
            if self.reference is not None:
                self.reference.to(ctx.device)
                self._held_out_ref = score_pairs(self.reference, pairs, **kw)[0]
            else:
                with adapters_disabled(ctx.model):
                    self._held_out_ref = score_pairs(ctx.model, pairs, **kw)[0]
        return self._held_out_ref


class PreferenceMetrics:
    """The DPO loss (val_loss) and TRL's metrics on the held-out pairs, prefixed eval_ as TRL's evaluation."""

    kind = "val"

    def __init__(self, task: DPOTask) -> None:
        self.task, self.interval = task, task.cfg.eval.interval

    def __call__(self, ctx: EvalContext) -> dict[str, Any]:
        task = self.task
        pairs = task.pairs[task.eval_split]
        kw = dict(batch_size=task.cfg.finetune.eval_batch_size, pad_id=task.pad_id, device=ctx.device,
                  autocast=ctx.autocast, rank=ctx.rank, world_size=ctx.world_size)
        reference = task.held_out_reference(ctx, **kw)
        sums, counts = score_pairs(ctx.model, pairs, **kw)
        average, beta = task.dpo.average_logps, task.dpo.beta
        stats = preference_stats(pair_logps(sums, counts, average=average),
                                 pair_logps(reference, counts, average=average), beta=beta)
        metrics = stats_to_metrics(stats, prefix="eval_")
        loss = metrics.pop("eval_loss")
        return {"val_loss": loss, "val_pairs": len(pairs), **metrics}


def load_reference(name: str | Path, tokenizer: Any, *, policy_name: str) -> torch.nn.Module:
    """A reference model by name (gpt2.load), refused unless its tokenizer is the policy's."""
    from gpt2.load import load

    ref = load(name, device="cpu")
    if ref.tokenizer is None or ref.tokenizer.hash != tokenizer.hash:
        raise UserError(f"the reference {name} has another tokenizer than the policy {policy_name}: DPO compares "
                        "the two models' log-probabilities of the same token ids, so they must share one tokenizer")
    return ref.model
