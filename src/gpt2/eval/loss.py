"""Language-model metrics of a model on text or token shards: mean loss, perplexity, bits per byte.

    gpt2 eval runs/shakespeare-cpu                               # the run's own held-out split
    gpt2 eval gpt2 --data ../shared/data/the-verdict.txt --stride 512

The text becomes one token stream the way `gpt2 data prepare` lays out shards: <|endoftext|> before
every document. The first token is context only; every later token is predicted exactly once.

Bits per byte = total loss in nats / ln 2 / UTF-8 bytes of the predicted tokens (an <|endoftext|>
stands for no text and counts 0 bytes). Perplexity depends on the vocabulary (a 4k-token model has
more, easier tokens than GPT-2's 50k), bits per byte does not, so runs with different tokenizers and
OpenAI's GPT-2 can be placed on one scale.

Sliding window (the scheme of HF's perplexity guide): windows of `context` tokens start every `stride`
tokens; each window scores only the targets the previous one did not, so every target counts once and,
past the first window, sees at least context - stride tokens of history. stride = context gives
disjoint windows: the fastest, and what training's validation loss does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpt2.errors import UserError
from gpt2.model.gpt2 import GPT2LMHeadModel


@dataclass
class LMScore:
    """What `evaluate_tokens` measured."""

    loss: float
    """Mean cross-entropy in nats per predicted token."""
    tokens: int
    """Predicted tokens (targets)."""
    bytes: int
    """UTF-8 bytes those targets stand for."""
    context: int
    stride: int
    windows: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.loss < 700 else math.inf

    @property
    def bits_per_byte(self) -> float:
        return self.loss * self.tokens / math.log(2) / self.bytes if self.bytes else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "perplexity": self.perplexity, "bits_per_byte": self.bits_per_byte}


def check_vocabulary(model: GPT2LMHeadModel, tokenizer: Any) -> None:
    """Raise ValueError when the model was not trained with this tokenizer's vocabulary."""
    if model.config.vocab_size != tokenizer.n_vocab:
        raise UserError(
            f"the checkpoint's vocabulary has {model.config.vocab_size:,} tokens but the tokenizer has "
            f"{tokenizer.n_vocab:,}: pass the tokenizer the model was trained with (--tokenizer DIR)"
        )


def window_spans(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, scored) per window over a stream of n_tokens: the window's inputs are
    tokens[start:end], its targets tokens[start+1:end+1], and the last `scored` targets count."""
    if context < 1 or not 1 <= stride <= context:
        raise UserError(f"need 1 <= stride <= context, got stride={stride}, context={context}")
    spans: list[tuple[int, int, int]] = []
    last = n_tokens - 1  # inputs end here: the last token is only ever a target
    start, prev_end = 0, 0
    while prev_end < last:
        end = min(start + context, last)
        spans.append((start, end, end - prev_end))
        prev_end = end
        start += stride
    return spans


@torch.no_grad()
def evaluate_tokens(
    model: GPT2LMHeadModel,
    ids: np.ndarray | Sequence[int],
    *,
    n_bytes: int,
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> LMScore:
    """Mean loss over every target of the token stream `ids`, with a sliding window (module docstring).

    n_bytes is the UTF-8 size of the text the targets stand for (see `count_bytes`)."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) < 2:
        raise UserError("need at least 2 tokens to predict anything")
    if int(ids.max()) >= model.config.vocab_size or int(ids.min()) < 0:
        raise UserError(f"token id {int(ids.max())} is outside the checkpoint's vocabulary of "
                         f"{model.config.vocab_size:,}: the data was tokenized with another tokenizer")
    context = context or model.config.n_positions
    if context > model.config.n_positions:
        raise UserError(f"context {context} is longer than the model's n_positions={model.config.n_positions}")
    stride = stride or context
    spans = window_spans(len(ids), context, stride)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    from tqdm.auto import tqdm

    bar = tqdm(total=len(spans), desc="loss", unit="window", disable=not progress, leave=False, dynamic_ncols=True)
    for i in range(0, len(spans), batch_size):
        group = spans[i:i + batch_size]
        L = max(end - start for start, end, _ in group)
        x = np.zeros((len(group), L), dtype=np.int64)
        y = np.full((len(group), L), -100, dtype=np.int64)  # -100: not scored (seen before, or padding)
        for row, (start, end, scored) in enumerate(group):
            n = end - start
            x[row, :n] = ids[start:end]
            y[row, n - scored:n] = ids[end - scored + 1:end + 1]
        xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        k = int((y != -100).sum())
        # The fused head + loss (the training path) gives the mean over scored targets; times k is their sum.
        total += model(xt, targets=yt, return_logits=False).loss.double().cpu() * k
        count += k
        bar.update(len(group))
    bar.close()
    model.train(was_training)
    return LMScore(loss=(total / count).item(), tokens=count, bytes=n_bytes, context=context, stride=stride,
                   windows=len(spans))


def count_bytes(tokenizer: Any, targets: np.ndarray) -> int:
    """UTF-8 bytes that a run of target ids stands for (special tokens count 0)."""
    special = np.array(sorted(tokenizer.special_tokens.values()), dtype=np.int64)
    text_ids = targets[~np.isin(targets, special)] if len(special) else targets
    return len(tokenizer.decode_bytes(text_ids.tolist()))


def text_stream(tokenizer: Any, documents: Iterable[str]) -> tuple[np.ndarray, int]:
    """Documents → (one token stream with <|endoftext|> before each, UTF-8 bytes of the documents)."""
    parts: list[np.ndarray] = []
    n_bytes = 0
    eot = np.array([tokenizer.eot_token], dtype=np.int64)
    for doc in documents:
        parts.append(eot)
        parts.append(np.fromiter(tokenizer.encode_ordinary(doc), dtype=np.int64))
        n_bytes += len(doc.encode("utf-8"))
    if not parts:
        raise UserError("no documents to evaluate")
    return np.concatenate(parts), n_bytes


def shard_stream(shard_dir: str | Path, tokenizer: Any, *, split: str = "val") -> np.ndarray:
    """The tokens of a prepared split (or shard files / a glob), checked against the tokenizer's hash."""
    import json

    from gpt2.data.loader import TokenStream, shard_files

    meta_path = Path(shard_dir) / "meta.json"
    if meta_path.is_file():
        recorded = json.loads(meta_path.read_text()).get("tokenizer", {})
        ours = getattr(tokenizer, "hash", None)
        if recorded.get("hash") and ours and recorded["hash"] != ours:
            raise UserError(f"{shard_dir} was tokenized with another tokenizer ({recorded.get('spec', '?')}, "
                             f"{recorded.get('n_vocab', '?')} tokens) than this one ({tokenizer.n_vocab:,} tokens): "
                             "pass the matching --tokenizer or re-prepare the data")
    stream = TokenStream(shard_files(shard_dir, split=split))
    return np.concatenate([a.astype(np.int64) for a in stream.arrays])


def evaluate_source(
    model: GPT2LMHeadModel,
    tokenizer: Any,
    source: str | Path,
    *,
    split: str = "val",
    field: str = "text",
    column: str | int | None = None,
    delimiter: str | None = None,
    header: bool = True,
    max_tokens: int | None = None,
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> LMScore:
    """Loss, perplexity and bits per byte on a shard directory's `split`, or on any text source that
    `gpt2 data prepare` reads (a .txt/.jsonl/.csv/.parquet file, a directory, a glob)."""
    check_vocabulary(model, tokenizer)
    path = Path(source)
    if path.is_dir() and (any(path.glob("*.bin")) or (path / "meta.json").is_file()):
        ids = shard_stream(path, tokenizer, split=split)
        n_bytes = None
    else:
        from gpt2.sources import read_documents

        docs = read_documents(str(source), field=field, column=column, delimiter=delimiter, header=header)
        ids, n_bytes = text_stream(tokenizer, docs)
    if max_tokens is not None and len(ids) > max_tokens + 1:
        ids, n_bytes = ids[:max_tokens + 1], None
    if n_bytes is None:
        n_bytes = count_bytes(tokenizer, ids[1:])
    return evaluate_tokens(model, ids, n_bytes=n_bytes, context=context, stride=stride, batch_size=batch_size,
                           progress=progress)
