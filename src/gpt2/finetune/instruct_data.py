"""Instruction-tuning data: read conversations, encode them with a loss mask, pad, batch by length, hold out.

    python -c "from gpt2.finetune.instruct_data import read_instruct; print(len(read_instruct('../shared/data/instruction-data.json')))"

**Files** (`read_instruct`), the form detected per file from its first record:
- Alpaca: a JSON list, or JSON lines, of {"instruction", "input" (optional), "output"}; each entry
  becomes [user(content=instruction, input=input), assistant(content=output)] ("input" only when
  non-empty);
- chat: JSON lines (or a JSON list) of {"messages": [{"role", "content"}, ...]}, taken as given:
  roles system, user, assistant; an optional system message first, then user and assistant
  alternating, ending with the assistant's response.
An empty output (or empty assistant content) is kept, not skipped: the example still trains the
<|endoftext|> that closes the response, so its loss count is never zero, and reading never silently
changes how many examples (and so which held-out split) a file gives. Whitespace is kept as written.

**Encoding** (`encode_conversation`, defined in gpt2.generate.chat so `gpt2 chat` shares it): the
format's layout, with ids equal to transformers' apply_chat_template on the `chat_template` that
save_chat_format writes, and a target mask: True on each assistant reply's tokens and the
<|endoftext|> that closes it (every token with train_on_prompt=True, as litgpt's option does).

**Batches** (`pad_examples`, `InstructLoader`): x are the ids but the last, y the next tokens, -100 where
the next token is not a target or is padding; so the trainer's count is (y != -100).sum(). Each epoch
is drawn from (seed, epoch); it is shuffled, cut into chunks of ~50 micro-batches, each chunk sorted
by length, cut into micro-batches, and the micro-batch order shuffled again, so a batch pads to
examples of similar length (measured on instruction-data.json in the tests) while the order stays
random. Rank r takes every world_size-th micro-batch. A batch's length is rounded up to a multiple of
PAD_MULTIPLE (8) tokens (never past the data's longest example): on CPU, oneDNN keeps a compiled kernel for
every matrix shape it meets, and one length per batch made a DPO run's peak RSS grow with its steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpt2.errors import UserError, UserFileNotFoundError
from gpt2.finetune.data import EpochCursor
from gpt2.generate.chat import Message, chat_template, check_conversation, encode_conversation

__all__ = ["PAD_MULTIPLE", "InstructLoader", "Message", "chat_template", "encode_conversation", "held_out_split", "pad_examples",
           "read_instruct"]

IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index

Example = tuple[list[int], list[bool]]  # (ids, target mask), as encode_conversation returns them


# ----------------------------------------------------------------------------------------- reading
def _records(path: Path) -> list[tuple[str, Any]]:
    """(where, record) for each record of a JSON list or a JSON-lines file; invalid JSON names its line."""
    from gpt2.sources import read_json_records

    records = read_json_records(path)
    if not records:
        raise UserError(f"{path} holds no examples (an empty file or an empty list): give Alpaca entries "
                        "({\"instruction\", \"input\", \"output\"}) or chat lines ({\"messages\": [...]})")
    return records


def _alpaca(where: str, entry: Any) -> list[Message]:
    if not isinstance(entry, dict):
        raise UserError(f"{where} is a {type(entry).__name__}, not an object with instruction, input, output")
    for key in ("instruction", "output"):
        if key not in entry:
            raise UserError(f"{where} has no {key!r}; an Alpaca entry needs instruction and output (input optional); "
                            f"it has {', '.join(map(repr, entry)) or 'no keys'}")
        if not isinstance(entry[key], str):
            raise UserError(f"{where}: {key!r} must be a string, got {type(entry[key]).__name__}; quote it")
    inp = entry.get("input")
    if inp is not None and not isinstance(inp, str):
        raise UserError(f"{where}: 'input' must be a string (or absent), got {type(inp).__name__}")
    user: Message = {"role": "user", "content": entry["instruction"], **({"input": inp} if inp else {})}
    return [user, {"role": "assistant", "content": entry["output"]}]


def _chat(where: str, record: Any) -> list[Message]:
    if not isinstance(record, dict) or "messages" not in record:
        raise UserError(f"{where} has no 'messages'; the file's first record is a chat conversation, so every line "
                        "must be {\"messages\": [...]}")
    messages = record["messages"]
    check_conversation(messages, generation=False, where=where)
    return [dict(m) for m in messages]


def read_instruct(path: str | Path) -> list[list[Message]]:
    """The conversations of an instruction file, Alpaca or chat form (module docstring); bad input is a one-line
    UserError naming the file and the entry or line and saying how to fix it."""
    path = Path(path)
    if not path.is_file():
        raise UserFileNotFoundError(f"instruction file {path} not found")
    records = _records(path)
    first = records[0][1]
    chat = isinstance(first, dict) and "messages" in first
    return [(_chat if chat else _alpaca)(where, record) for where, record in records]


# ----------------------------------------------------------------------------------------- batches
# Batch lengths in steps of 8 tokens: `gpt2 finetune dpo dpo-polite` (runs/sft-alpaca, Zen 4, bf16) peaked at
# 1,823 MB with one length per batch and 983 MB with this (and the head's rows in steps of 64, gpt2.model.gpt2),
# in 55 s against 52-58 s; steps of 32 gave 834 MB but 63 s (more padding). oneDNN's primitive cache keeps a
# kernel for every shape it meets. The padding is masked, so the loss is unchanged.
PAD_MULTIPLE = 8


def pad_examples(examples: list[Example], pad_id: int, *, multiple: int = 1, longest: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest example: x (B, T) input ids, y (B, T) next-token targets, T = longest - 1,
    rounded up to a multiple of `multiple` but never past `longest` - 1 (the data's longest example, so never
    past the context).

    For ids t0..tn with mask m0..mn: x = t0..t(n-1), y[i] = t(i+1) if m(i+1) else -100; padding is -100 in y
    (and pad_id in x, never a target)."""
    T = max(len(ids) for ids, _ in examples) - 1
    if multiple > 1 and longest is not None:
        T = max(T, min(-(-T // multiple) * multiple, longest - 1))
    x = torch.full((len(examples), T), pad_id, dtype=torch.long)
    y = torch.full((len(examples), T), IGNORE_INDEX, dtype=torch.long)
    for b, (ids, mask) in enumerate(examples):
        assert len(ids) == len(mask), "ids and mask differ in length"
        n = len(ids) - 1
        if n <= 0:
            continue
        seq = torch.tensor(ids, dtype=torch.long)
        x[b, :n] = seq[:-1]
        y[b, :n] = torch.where(torch.tensor(mask[1:]), seq[1:], IGNORE_INDEX)
    return x, y


class InstructLoader(EpochCursor):
    """Resumable micro-batches of encoded conversations, bucketed by length, the same on every run.

    An epoch's order comes from np.random.default_rng([seed, epoch]) alone (no global RNG): a permutation,
    of which the first multiple of batch_size × world_size examples are kept (the rest, random ones, wait for
    the next epoch, as ExampleLoader drops its last incomplete group); chunks of `bucket_batches` micro-batches
    sorted by length; micro-batches cut from them; their order shuffled. Rank r takes micro-batches r,
    r + world_size, ...: every rank steps with full batches, and no two ranks share an example within an
    epoch. The state is (epoch, offset: examples of the epoch's batch order consumed by all ranks), as
    ExampleLoader's; an exact resume needs the same examples, batch size and world size."""

    bucket_batches = 50  # ~50 micro-batches per sorted chunk: little padding, and the order stays random

    def __init__(self, examples: Sequence[Example], *, batch_size: int, rank: int, world_size: int, seed: int,
                 pad_id: int) -> None:
        if len(examples) < batch_size * world_size:
            raise UserError(f"the training split has {len(examples)} examples, fewer than one step's micro-batches "
                            f"(train.micro_batch_size={batch_size} × {world_size} process(es)); lower "
                            "train.micro_batch_size")
        self.examples, self.B, self.rank, self.world = examples, batch_size, rank, world_size
        self.seed, self.pad_id = seed, pad_id
        self.lengths = np.array([self.length(e) for e in examples])
        self.longest = int(self.lengths.max())  # no batch is padded past it
        self.epoch, self.offset = 0, 0
        self._batches: tuple[int, list[np.ndarray]] | None = None

    @staticmethod
    def length(example: Any) -> int:
        """What the buckets sort by: an example's token count (a preference pair's loader gives its own)."""
        return len(example[0])

    def collate(self, examples: list[Any]) -> tuple[torch.Tensor, ...]:
        """One micro-batch of examples as tensors (pad_examples here; a preference pair's loader gives its own)."""
        return pad_examples(examples, self.pad_id, multiple=PAD_MULTIPLE, longest=self.longest)

    def batches(self, epoch: int) -> list[np.ndarray]:
        """The epoch's micro-batches (example indices), in order, over all ranks."""
        if self._batches is not None and self._batches[0] == epoch:
            return self._batches[1]
        rng = np.random.default_rng([self.seed, epoch])
        group = self.B * self.world
        order = rng.permutation(len(self.examples))[: len(self.examples) // group * group]
        chunk = self.bucket_batches * self.B
        # a stable sort keeps the shuffled order among equal lengths
        order = np.concatenate([c[np.argsort(self.lengths[c], kind="stable")]
                                for c in np.split(order, range(chunk, len(order), chunk))])
        batches = [order[i: i + self.B] for i in range(0, len(order), self.B)]
        batches = [batches[i] for i in rng.permutation(len(batches))]
        self._batches = (epoch, batches)
        return batches

    def next_batch(self) -> tuple[torch.Tensor, ...]:
        """This rank's next micro-batch: (x (B, T), y (B, T)) as pad_examples gives them (see collate)."""
        if self.offset + self.B * self.world > len(self.batches(self.epoch)) * self.B:
            self.epoch, self.offset = self.epoch + 1, 0
        idx = self.batches(self.epoch)[self.offset // self.B + self.rank]
        self.offset += self.B * self.world
        return self.collate([self.examples[i] for i in idx])

    @property
    def n_examples(self) -> int:
        return len(self.examples)


def held_out_split(n: int, *, fraction_or_count: float | int, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices), both ascending, the held-out ones drawn from np.random.default_rng(seed).

    An int is a count (e.g. 100 of 1,100), a float in (0, 1) a fraction (rounded to a count)."""
    k = fraction_or_count
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        raise UserError(f"the held-out share must be a count or a fraction in (0, 1), got {k!r}")
    if isinstance(k, float):
        if not 0 < k < 1:
            raise UserError(f"a held-out fraction must be in (0, 1), got {k}; give a count (an integer) otherwise")
        k = max(1, round(n * k))
    if not 0 <= k < n:
        raise UserError(f"cannot hold out {k} of {n} examples: leave at least one to train on")
    held = np.random.default_rng(seed).permutation(n)[:k]
    mask = np.zeros(n, dtype=bool)
    mask[held] = True
    return np.flatnonzero(~mask).tolist(), np.flatnonzero(mask).tolist()


# --------------------------------------------------------------------------------------------- CLI
