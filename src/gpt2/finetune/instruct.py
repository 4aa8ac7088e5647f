"""Instruction tuning: prompt/response pairs → a GPT-2 that answers and stops, through the one trainer.

    gpt2 finetune instruct sft-alpaca                            # what runs it (gpt2.finetune.commands)
    run(cfg, InstructTask(cfg))                                  # the same from Python

The data (gpt2.finetune.instruct_data) is Alpaca's instruction/input/output or chat messages. Each
conversation is written in the prompt format `finetune.format` (gpt2.generate.chat.FORMATS). The loss
is on the response tokens and on the <|endoftext|> that closes each response, so the model learns to
stop; prompt tokens are masked unless finetune.train_on_prompt. A batch is (x, y) with y = -100 on
masked and padded positions. The trainer divides the summed loss by the count of targets in the whole
global batch, so a long response weighs by its tokens and padding never counts. Batches come from
length buckets (InstructLoader), so little compute goes to padding.

finetune.split cuts the file into train/val/test by finetune.split_seed. With no validation share
(e.g. [0.9091, 0, 0.0909]: 1,000 + 100 of the 1,100 entries of instruction-data.json), the held-out
test split is what the periodic evaluation reports. Either way the held-out entries are written to
RUN/heldout.jsonl (chat form), so `gpt2 eval RUN --instruct RUN/heldout.jsonl` and the bench score
exactly them. Every checkpoint carries the prompt format: chat.json, and the same template as
`chat_template` in tokenizer_config.json for transformers' apply_chat_template.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from gpt2.config import RunConfig
from gpt2.errors import UserError
from gpt2.finetune.base import FinetuneTask, set_dropout
from gpt2.train.evaluators import EvalContext, Evaluator
from gpt2.train.task import Loader, TokenLossTask

HELD_OUT_FILE = "heldout.jsonl"
Example = tuple[list[int], list[bool]]  # token ids and which of them are targets


def chat_format(name: str) -> Any:
    from gpt2.generate.chat import FORMATS

    if name not in FORMATS:
        raise UserError(f"finetune.format={name!r}: use one of {', '.join(FORMATS)}")
    return FORMATS[name]


def encode_examples(conversations: list[list[dict[str, str]]], tokenizer: Any, fmt: Any, *, max_tokens: int,
                    train_on_prompt: bool = False) -> tuple[list[Example], int, int]:
    """Encode conversations for training or scoring: (examples, truncated, dropped).

    An example longer than `max_tokens` ids (train.seq_len + 1: inputs and shifted targets) keeps its
    beginning; one left with no target token after that is dropped (counted)."""
    from gpt2.finetune.instruct_data import encode_conversation

    out: list[Example] = []
    truncated = dropped = 0
    for conv in conversations:
        ids, mask = encode_conversation(conv, tokenizer, fmt, train_on_prompt=train_on_prompt)
        if len(ids) > max_tokens:
            truncated += 1
            ids, mask = ids[:max_tokens], mask[:max_tokens]
        if not any(mask[1:]):  # the first token is never a target (nothing predicts it)
            dropped += 1
            continue
        out.append((ids, mask))
    return out, truncated, dropped


@torch.no_grad()
def response_loss(model: torch.nn.Module, examples: list[Example], *, batch_size: int, pad_id: int,
                  device: torch.device, autocast: Any = None, rank: int = 0, world_size: int = 1,
                  fsdp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the target tokens' cross-entropy, their count) over this rank's share of `examples`, fp64.

    Examples are sorted by length and cut into batches of `batch_size`; rank r scores every world_size-th
    batch. Under FSDP every rank runs the same number of forwards (an empty share runs one masked-out
    token), since each forward all-gathers the weights."""
    import contextlib

    from gpt2.finetune.instruct_data import PAD_MULTIPLE, pad_examples

    autocast = autocast if autocast is not None else contextlib.nullcontext()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    longest = max((len(e[0]) for e in examples), default=0)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rounds = math.ceil(len(batches) / world_size)
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    for r in range(rounds):
        b = r * world_size + rank
        if b >= len(batches):
            if not fsdp:
                continue
            x = torch.full((1, 1), pad_id, dtype=torch.long)
            y = torch.full((1, 1), -100, dtype=torch.long)
        else:
            x, y = pad_examples([examples[i] for i in batches[b]], pad_id, multiple=PAD_MULTIPLE, longest=longest)
        x, y = x.to(device), y.to(device)
        with autocast:
            loss = model(x, targets=y, return_logits=False).loss
        n = (y != -100).sum()
        total += loss.double() * n
        count += n
    return total, count


class ResponseLoss:
    """The held-out responses' loss per target token (val_loss), its perplexity and the token count, the same
    on every rank."""

    kind = "val"

    def __init__(self, examples: list[Example], *, batch_size: int, pad_id: int, interval: int) -> None:
        self.examples, self.batch_size, self.pad_id, self.interval = examples, batch_size, pad_id, interval

    def __call__(self, ctx: EvalContext) -> dict[str, Any]:
        total, count = response_loss(ctx.model, self.examples, batch_size=self.batch_size, pad_id=self.pad_id,
                                     device=ctx.device, autocast=ctx.autocast, rank=ctx.rank,
                                     world_size=ctx.world_size, fsdp=ctx.mode == "fsdp")
        if ctx.world_size > 1:
            torch.distributed.all_reduce(total)
            torch.distributed.all_reduce(count)
        loss = (total / count.clamp(min=1)).item()
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_tokens": int(count.item())}


class ResponseSamples:
    """Greedy answers to held-out instructions (rank 0; generation's own generators: no global RNG)."""

    kind = "sample"

    def __init__(self, conversations: list[list[dict[str, str]]], tokenizer: Any, fmt: Any, *, max_new_tokens: int,
                 interval: int) -> None:
        self.conversations, self.tokenizer, self.format = conversations, tokenizer, fmt
        self.max_new_tokens, self.interval = max_new_tokens, interval

    def __call__(self, ctx: EvalContext) -> dict[str, Any] | None:
        from gpt2.finetune.instruct_data import encode_conversation
        from gpt2.generate import SampleConfig, generate
        from gpt2.train import distributed as dist_utils

        plain = dist_utils.plain_model(ctx.model, mode=ctx.mode, rank=ctx.rank, device=ctx.device)
        if plain is None:
            return None
        texts = []
        was_training = plain.training
        plain.eval()
        try:
            for conv in self.conversations:
                prompt, _ = encode_conversation(conv[:-1], self.tokenizer, self.format, add_generation_prompt=True)
                room = plain.config.n_positions - len(prompt)
                if room < 1:
                    continue
                config = SampleConfig(max_new_tokens=min(self.max_new_tokens, room), temperature=0)
                with ctx.autocast:
                    gen = generate(plain, self.tokenizer, [prompt], config)[0]
                texts.append(f"{conv[-2]['content']} → {gen.text.strip()}")
        finally:
            plain.train(was_training)
        return {"samples": texts}


class InstructTask(FinetuneTask, TokenLossTask):
    """Instructions and responses (finetune.*) on a pretrained language model (model.init_from)."""

    name = "instruct"
    best_metric = ("val_loss", "min")

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        if not cfg.finetune.train_file:
            raise UserError("finetune.train_file is not set: give Alpaca json/jsonl (instruction, input, output) or "
                            "chat jsonl ({\"messages\": [{\"role\": ..., \"content\": ...}, ...]})")
        self.format = chat_format(cfg.finetune.format)
        self.conversations: dict[str, list[list[dict[str, str]]]] = {}
        self.examples: dict[str, list[Example]] = {}
        self.eval_split = "val"
        self.summary: dict[str, Any] = {}

    # ----------------------------------------------------------------------------------- data
    def _read_splits(self) -> None:
        from gpt2.finetune.instruct_data import read_instruct

        f = self.cfg.finetune
        whole = read_instruct(f.train_file)
        given = {name: read_instruct(path) for name, path in (("val", f.val_file), ("test", f.test_file)) if path}
        tr, va, te = self.split_indices(len(whole), given)
        self.conversations = {"train": [whole[i] for i in tr]}
        for name, idx in (("val", va), ("test", te)):
            self.conversations[name] = given[name] if name in given else [whole[i] for i in idx]
        if not self.conversations["val"] and not self.conversations["test"]:
            raise UserError(f"finetune.split={list(f.split)} holds nothing out: give a validation or test share "
                            "(e.g. [0.9091, 0, 0.0909] for 1,000 + 100 of 1,100 entries) or finetune.val_file")
        self.eval_split = "val" if self.conversations["val"] else "test"
        stats: dict[str, Any] = {}
        for name, convs in self.conversations.items():
            self.examples[name], truncated, dropped = encode_examples(
                convs, self.tokenizer, self.format, max_tokens=self.cfg.train.seq_len + 1,
                train_on_prompt=f.train_on_prompt and name == "train")
            stats[name] = {"examples": len(self.examples[name]), "truncated": truncated, "dropped": dropped}
            if truncated or dropped:
                print(f"{name}: {truncated} example(s) longer than train.seq_len+1={self.cfg.train.seq_len + 1} "
                      f"tokens were cut, {dropped} left with no response token were dropped", file=sys.stderr)
        if not self.examples["train"]:
            raise UserError(f"no training examples left from {f.train_file} (see the counts above)")
        self.summary = {"format": self.format.name, "train_on_prompt": f.train_on_prompt,
                        "splits": stats, "evaluated_on": self.eval_split}

    def ready(self, *, master: bool) -> None:
        super().ready(master=master)
        held_out = self.conversations["test"] or self.conversations["val"]
        if master and held_out:
            from gpt2.common import atomic_write_text

            run_dir = Path(self.cfg.train.out_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            lines = "".join(json.dumps({"messages": c}, ensure_ascii=False) + "\n" for c in held_out)
            atomic_write_text(run_dir / HELD_OUT_FILE, lines)

    # ---------------------------------------------------------------------------------- model
    def build_model(self, checkpoint: Path | None) -> torch.nn.Module:
        from gpt2.model.gpt2 import GPT2LMHeadModel

        p = self.cfg.model.dropout or 0.0
        if checkpoint is not None and self.lora is None:
            model = GPT2LMHeadModel.from_pretrained(checkpoint, resid_pdrop=p, embd_pdrop=p, attn_pdrop=p)
        else:  # the base (for a LoRA run's resume too: the checkpoint's adapter goes onto it)
            model = set_dropout(self._base, p)
        self.check_context(model)
        self._base = None
        return self.adapt(model, checkpoint, write_base=False)

    def train_loader(self, *, rank: int, world_size: int) -> Loader:
        from gpt2.finetune.instruct_data import InstructLoader

        return InstructLoader(self.examples["train"], batch_size=self.cfg.train.micro_batch_size, rank=rank,
                              world_size=world_size, seed=self.cfg.train.seed, pad_id=self.pad_id)

    # ----------------------------------------------------------------------------- evaluation
    def evaluators(self, *, rank: int, world_size: int) -> list[Evaluator]:
        return [ResponseLoss(self.examples[self.eval_split], batch_size=self.cfg.finetune.eval_batch_size,
                             pad_id=self.pad_id, interval=self.cfg.eval.interval), self.samples()]

    def samples(self) -> ResponseSamples:
        """Answers to the first two held-out instructions."""
        return ResponseSamples(self.conversations[self.eval_split][:2], self.tokenizer, self.format,
                               max_new_tokens=self.cfg.sample.max_new_tokens, interval=self.cfg.sample.interval)

    def save_extra(self, directory: Path) -> None:
        from gpt2.generate.chat import save_chat_format

        save_chat_format(directory, self.format.name)

    def start_record(self) -> dict[str, Any]:
        return {"tokenizer": repr(self.tokenizer), **self.summary, **super().start_record()}
