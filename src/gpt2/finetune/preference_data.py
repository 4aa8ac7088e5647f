"""Preference data for DPO: read prompt/chosen/rejected records, encode each pair in a chat format, batch pairs.

    python -c "from gpt2.finetune.preference_data import read_preference; \
               print(read_preference('../shared/data/instruction-data-with-preference.json')[0])"

**Files** (`read_preference`, through the one JSON/JSON-lines reader gpt2.sources.read_json_records), the
form detected per record:
- Alpaca with preferences (LLMs-from-scratch ch07's instruction-data-with-preference.json): {"instruction",
  "input" (optional), "chosen", "rejected"}; the prompt is the user message [instruction, input];
- TRL's explicit prompt: {"prompt", "chosen", "rejected"}, strings (the prompt is the user's message), or
  conversations: "prompt" a list of messages ending with the user's, "chosen"/"rejected" each a list of
  one assistant message;
- TRL's implicit prompt: "chosen" and "rejected" whole conversations; the prompt is their longest
  common prefix of messages, and what follows it must be one assistant message on each side.
A string prompt is rendered through the chat format as the user's message (TRL writes a plain-text
prompt verbatim; here every prompt goes through the model's prompt format, as instruction tuning did).
A record without "chosen" or "rejected", or whose prompt cannot be found, is a one-line error naming it.

**Encoding** (`encode_pairs`): each side is encode_conversation(prompt + [assistant reply]) of
gpt2.generate.chat: the ids of the prompt, the reply and the <|endoftext|> closing it, with the target
mask on the reply and the <|endoftext|> (as TRL appends the EOS to each completion). The prompt's ids
are the same on both sides. A pair longer than `max_tokens` keeps its beginning (TRL's keep_start); a
pair left with no reply token on either side is dropped (counted).

**Batches** (`pad_pairs`, `PairLoader`): B pairs are 2B rows, the chosen sides first, then the rejected ones
(TRL's concatenated order), right-padded as gpt2.finetune.instruct_data.pad_examples pads: x the ids, y
the next tokens with -100 where the next token is no reply token or is padding. With reference log-probs
computed ahead (finetune.dpo.precompute_reference), a third tensor holds them: (2B,) in the same order.
PairLoader is InstructLoader's length buckets and resumable state with a pair's length (its longer side).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gpt2.errors import UserError, UserFileNotFoundError
from gpt2.finetune.instruct_data import PAD_MULTIPLE, InstructLoader, pad_examples
from gpt2.generate.chat import Message, check_conversation, encode_conversation

Example = tuple[list[int], list[bool]]  # (ids, target mask), as encode_conversation returns them

_HOW = ("a preference pair needs 'chosen' and 'rejected' and a prompt: 'prompt' (a string or messages), or "
        "'instruction' (and 'input'), or chosen/rejected as whole conversations sharing the prompt")


@dataclass
class Preference:
    """One record as read: the prompt's messages (ending with the user's) and the two replies."""

    prompt: list[Message]
    chosen: str
    rejected: str

    def to_record(self) -> dict[str, Any]:
        """TRL's conversational form with an explicit prompt (what read_preference reads back as it was)."""
        return {"prompt": self.prompt, "chosen": [{"role": "assistant", "content": self.chosen}],
                "rejected": [{"role": "assistant", "content": self.rejected}]}


@dataclass
class Pair:
    """One encoded pair; `ref` holds the reference's summed log-probs (chosen, rejected) once precomputed."""

    chosen: Example
    rejected: Example
    ref: tuple[float, float] | None = None


# ----------------------------------------------------------------------------------------- reading
def _reply(where: str, key: str, value: Any) -> str:
    """A completion: a string, or a list of exactly one assistant message."""
    if isinstance(value, str):
        return value
    if (isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict)
            and value[0].get("role") == "assistant" and isinstance(value[0].get("content"), str)):
        return value[0]["content"]
    raise UserError(f"{where}: {key!r} must be a string or a list of one assistant message "
                    "([{\"role\": \"assistant\", \"content\": ...}])")


def _implicit(where: str, chosen: Any, rejected: Any) -> Preference:
    """TRL's implicit prompt: the longest common prefix of two conversations, then one assistant message each."""
    for key, conv in (("chosen", chosen), ("rejected", rejected)):
        check_conversation(conv, generation=False, where=f"{where}: {key!r}")
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    n = min(n, len(chosen) - 1, len(rejected) - 1)
    if len(chosen) - n != 1 or len(rejected) - n != 1 or chosen[n]["role"] != "assistant":
        raise UserError(f"{where}: 'chosen' and 'rejected' must be the same conversation up to their last, assistant "
                        "message (the prompt is their common beginning); give a 'prompt' otherwise")
    return Preference([dict(m) for m in chosen[:n]], chosen[n]["content"], rejected[n]["content"])


def parse_preference(where: str, record: Any) -> Preference:
    """One record in any of the forms of the module docstring; a one-line UserError otherwise."""
    if not isinstance(record, dict):
        raise UserError(f"{where} is a {type(record).__name__}, not an object; {_HOW}")
    for key in ("chosen", "rejected"):
        if key not in record:
            raise UserError(f"{where} has no {key!r}; {_HOW}; it has {', '.join(map(repr, record)) or 'no keys'}")
    if "prompt" in record:
        prompt = record["prompt"]
        if isinstance(prompt, str):
            messages: list[Message] = [{"role": "user", "content": prompt}]
        else:
            check_conversation(prompt, generation=True, where=f"{where}: 'prompt'")
            messages = [dict(m) for m in prompt]
        return Preference(messages, _reply(where, "chosen", record["chosen"]),
                          _reply(where, "rejected", record["rejected"]))
    if "instruction" in record:
        inp = record.get("input")
        if not isinstance(record["instruction"], str) or (inp is not None and not isinstance(inp, str)):
            raise UserError(f"{where}: 'instruction' (and 'input') must be strings")
        user: Message = {"role": "user", "content": record["instruction"], **({"input": inp} if inp else {})}
        for key in ("chosen", "rejected"):
            if not isinstance(record[key], str):
                raise UserError(f"{where}: {key!r} must be a string, got {type(record[key]).__name__}")
        return Preference([user], record["chosen"], record["rejected"])
    if isinstance(record["chosen"], list) and isinstance(record["rejected"], list):
        return _implicit(where, record["chosen"], record["rejected"])
    raise UserError(f"{where} has no prompt; {_HOW}")


def read_preference(path: str | Path) -> list[Preference]:
    """The pairs of a preference file (module docstring); bad input is a one-line UserError naming the entry."""
    from gpt2.sources import read_json_records

    path = Path(path)
    if not path.is_file():
        raise UserFileNotFoundError(f"preference file {path} not found")
    records = read_json_records(path)
    if not records:
        raise UserError(f"{path} holds no preference pairs (an empty file or an empty list)")
    return [parse_preference(where, record) for where, record in records]


def write_preference(path: str | Path, pairs: list[Preference]) -> None:
    """JSON lines in TRL's conversational form, written whole or not at all."""
    from gpt2.common import atomic_write_text

    atomic_write_text(Path(path), "".join(json.dumps(p.to_record(), ensure_ascii=False) + "\n" for p in pairs))


# ---------------------------------------------------------------------------------------- encoding
def encode_pairs(pairs: list[Preference], tokenizer: Any, fmt: Any, *, max_tokens: int
                 ) -> tuple[list[Pair], list[int], int]:
    """(encoded pairs, the index in `pairs` of each, how many were cut to max_tokens); dropped ones are absent."""
    out: list[Pair] = []
    kept: list[int] = []
    truncated = 0
    for i, p in enumerate(pairs):
        sides = []
        for reply in (p.chosen, p.rejected):
            ids, mask = encode_conversation([*p.prompt, {"role": "assistant", "content": reply}], tokenizer, fmt)
            if len(ids) > max_tokens:
                truncated += 1
                ids, mask = ids[:max_tokens], mask[:max_tokens]
            sides.append((ids, mask))
        if all(any(mask[1:]) for _, mask in sides):  # the first token is never a target
            out.append(Pair(sides[0], sides[1]))
            kept.append(i)
    return out, kept, truncated


def pad_pairs(pairs: list[Pair], pad_id: int, *, multiple: int = 1, longest: int | None = None
              ) -> tuple[torch.Tensor, ...]:
    """(x (2B, T), y (2B, T)), plus ref (2B,) when every pair has its reference log-probs: chosen rows first.
    `multiple` and `longest` round T up as pad_examples does."""
    x, y = pad_examples([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id, multiple=multiple,
                        longest=longest)
    if all(p.ref is not None for p in pairs):
        ref = torch.tensor([p.ref[0] for p in pairs] + [p.ref[1] for p in pairs], dtype=torch.float64)  # type: ignore[index]
        return x, y, ref
    return x, y


class PairLoader(InstructLoader):
    """InstructLoader's resumable length buckets over preference pairs; a micro-batch is pad_pairs of B pairs."""

    @staticmethod
    def length(example: Any) -> int:
        return max(len(example.chosen[0]), len(example.rejected[0]))

    def collate(self, examples: list[Any]) -> tuple[torch.Tensor, ...]:
        return pad_pairs(examples, self.pad_id, multiple=PAD_MULTIPLE, longest=self.longest)
