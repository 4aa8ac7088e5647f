"""HellaSwag, completion style: which of four endings does the model find most likely after the context?

    gpt2 eval runs/shakespeare-cpu --hellaswag ../shared/data/hellaswag_val_sample1000.jsonl
    gpt2 eval gpt2 --hellaswag val --limit 500            # the validation set, downloaded once when online

Reads the original jsonl format (rowanz/hellaswag: `ctx`, `endings`, `label` per line). Each ending is
scored by the log-likelihood of its tokens given the context (the ending is encoded with a leading
space, as it follows the context's last word):

- acc: the ending with the highest summed log-likelihood;
- acc_norm: the ending with the highest mean log-likelihood per ending token.

That is build-nanogpt's completion-style scoring, which gives these reference points on the full
validation set (10,042 examples): GPT-2 124M acc_norm 0.2955, GPT-2 XL (1.5B) acc_norm 0.4893; chance
is 0.25. (lm-evaluation-harness normalises by bytes instead of tokens, so its acc_norm differs a little.)
A context too long for the model keeps its end: the model sees the last n_positions - ending tokens.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from gpt2.errors import UserError, UserFileNotFoundError
from gpt2.model.gpt2 import GPT2LMHeadModel
from gpt2.sources import json_object, read_json_records

VAL_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
SPLIT_URLS = {"val": VAL_URL, "train": VAL_URL.replace("_val.", "_train.")}
REFERENCE_ACC_NORM = {"gpt2": 0.2955, "gpt2-xl": 0.4893}


@dataclass(frozen=True)
class Example:
    """One HellaSwag item."""

    ctx: str
    endings: tuple[str, ...]
    label: int
    ind: int | None = None


@dataclass
class HellaSwagResult:
    acc: float
    acc_norm: float
    examples: int
    predictions: list[int]
    """Per example: the ending acc picks."""
    predictions_norm: list[int]
    """Per example: the ending acc_norm picks."""

    def to_dict(self, *, with_predictions: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not with_predictions:
            d.pop("predictions")
            d.pop("predictions_norm")
        return d


def resolve_path(spec: str | Path) -> Path:
    """A local jsonl file, or `val`/`train` (alias `hellaswag` = val): downloaded once into the cache.

    $GPT2_HELLASWAG_URL replaces the download address (a mirror, or a file:// URL)."""
    path = Path(spec).expanduser()
    name = str(spec)
    if path.exists() or name not in (*SPLIT_URLS, "hellaswag"):
        if not path.is_file():
            raise UserFileNotFoundError(f"HellaSwag file {path} not found (give a jsonl file, or 'val' to download it)")
        return path
    split = "val" if name == "hellaswag" else name
    from gpt2.common import cache_dir

    dest = cache_dir() / "hellaswag" / f"hellaswag_{split}.jsonl"
    if dest.is_file():
        return dest
    url = os.environ.get("GPT2_HELLASWAG_URL") or SPLIT_URLS[split]
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            data = r.read()
    except (urllib.error.URLError, OSError) as e:
        raise UserFileNotFoundError(f"could not download HellaSwag {split} from {url} ({e}); offline, pass a local "
                                "jsonl file in the original format instead") from None
    from gpt2.common import atomic_write_bytes

    atomic_write_bytes(dest, data)
    return dest


def load_examples(spec: str | Path, *, limit: int | None = None) -> list[Example]:
    """Read and check a HellaSwag jsonl file (the first `limit` examples)."""
    path = resolve_path(spec)
    out: list[Example] = []
    for where, record in read_json_records(path):
        if limit is not None and len(out) >= limit:
            break
        obj = json_object(where, record, ("ctx", "endings", "label"),
                          hint="HellaSwag's jsonl has ctx, endings and label")
        endings, label = obj["endings"], obj["label"]
        if not isinstance(obj["ctx"], str):
            raise UserError(f"{where}: `ctx` must be a string")
        if (not isinstance(endings, list) or len(endings) < 2
                or not all(isinstance(e, str) and e.strip() for e in endings)):
            raise UserError(f"{where}: `endings` must be a list of at least 2 non-empty strings")
        if isinstance(label, str) and label.strip().isdigit():
            label = int(label)
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(endings):
            raise UserError(f"{where}: label {obj['label']!r} is out of range for {len(endings)} endings "
                            f"(0..{len(endings) - 1})")
        out.append(Example(obj["ctx"], tuple(endings), label, obj.get("ind")))
    if not out:
        raise UserError(f"{path} holds no HellaSwag examples")
    return out


def render(tokenizer: Any, example: Example, n_positions: int) -> tuple[list[int], list[list[int]]]:
    """(context ids, ids of each ending), the context cut from the left so the longest ending fits."""
    ctx = tokenizer.encode_ordinary(example.ctx)
    endings = [tokenizer.encode_ordinary(" " + e) for e in example.endings]
    endings = [e[: n_positions - 1] for e in endings]  # at least one context token must precede an ending
    room = n_positions - max(len(e) for e in endings)
    return ctx[max(0, len(ctx) - room):] or ctx[-1:], endings


@torch.no_grad()
def score_endings(model: GPT2LMHeadModel, tokenizer: Any, examples: Sequence[Example], *,
                  batch_size: int = 16) -> list[list[tuple[float, int]]]:
    """Per example, per ending: (summed log-likelihood of the ending tokens, their count).

    Rows are right-padded, which a causal model never sees; the head runs only where an ending token
    is predicted (a few rows of logits instead of every position's)."""
    device = next(model.parameters()).device
    V = model.config.vocab_size
    rows: list[tuple[int, list[int], int]] = []  # (example, context + ending, ending length)
    for i, ex in enumerate(examples):
        ctx, endings = render(tokenizer, ex, model.config.n_positions)
        rows.extend((i, ctx + e, len(e)) for e in endings)
    out: list[list[tuple[float, int]]] = [[] for _ in examples]
    for b in range(0, len(rows), batch_size):
        group = rows[b:b + batch_size]
        L = max(len(r[1]) for r in group) - 1
        x = torch.zeros((len(group), L), dtype=torch.long)
        sel_row, sel_pos, tgt = [], [], []
        for r, (_, ids, n_end) in enumerate(group):
            x[r, :len(ids) - 1] = torch.tensor(ids[:-1])
            for pos in range(len(ids) - 1 - n_end, len(ids) - 1):  # the positions that predict ending tokens
                sel_row.append(r)
                sel_pos.append(pos)
                tgt.append(ids[pos + 1])
        hidden = model.transformer(x.to(device))  # (B, L, C)
        h = hidden[torch.tensor(sel_row, device=device), torch.tensor(sel_pos, device=device)]  # (K, C)
        logits = model.lm_head(h)[:, :V].float()  # (K, V)
        logp = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(tgt, device=device)[:, None])[:, 0]  # (K,)
        logp = logp.double().cpu()
        k = 0
        for ex_i, _, n_end in group:
            out[ex_i].append((logp[k:k + n_end].sum().item(), n_end))
            k += n_end
    return out


def evaluate_hellaswag(
    model: GPT2LMHeadModel,
    tokenizer: Any,
    data: str | Path | Sequence[Example],
    *,
    limit: int | None = None,
    batch_size: int = 16,
    progress: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> HellaSwagResult:
    """acc and acc_norm over the examples (this rank's share of them when world_size > 1; the counts are
    summed across ranks when torch.distributed is initialised, so every rank returns the same numbers)."""
    examples = list(data) if not isinstance(data, (str, Path)) else load_examples(data, limit=limit)
    if limit is not None:
        examples = examples[:limit]
    mine = examples[rank::world_size]
    was_training = model.training
    model.eval()
    from tqdm.auto import tqdm

    preds, preds_norm = [], []
    chunk = max(1, batch_size // 4)  # examples per call, so the bar moves and memory stays small
    with tqdm(total=len(mine), desc="hellaswag", unit="ex", disable=not progress, leave=False,
              dynamic_ncols=True) as bar:
        for i in range(0, len(mine), chunk):
            for scores in score_endings(model, tokenizer, mine[i:i + chunk], batch_size=batch_size):
                sums = torch.tensor([s for s, _ in scores], dtype=torch.float64)
                means = torch.tensor([s / n for s, n in scores], dtype=torch.float64)
                preds.append(int(sums.argmax()))
                preds_norm.append(int(means.argmax()))
            bar.update(len(mine[i:i + chunk]))
    model.train(was_training)
    counts = torch.tensor([sum(p == ex.label for p, ex in zip(preds, mine)),
                           sum(p == ex.label for p, ex in zip(preds_norm, mine)), len(mine)], dtype=torch.float64)
    if world_size > 1 and torch.distributed.is_initialized():
        device = next(model.parameters()).device
        counts = counts.to(device)
        torch.distributed.all_reduce(counts)
        counts = counts.cpu()
    n = int(counts[2])
    return HellaSwagResult(acc=float(counts[0]) / n, acc_norm=float(counts[1]) / n, examples=n,
                           predictions=preds, predictions_norm=preds_norm)
