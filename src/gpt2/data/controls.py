"""Put each record's metadata before its text as control tokens, for conditioning a language model on it.

    python -c "from gpt2.data.controls import with_controls; print(with_controls(
        '../shared/data/douban_movie_reviews_zh.jsonl', field='text', control_fields=['stars'], out_dir='/tmp/c'))"

`data.control_fields: [stars]` in a recipe turns the record {"stars": 5, "text": "剧情不错"} into the
document "<|stars=5|>剧情不错", where <|stars=5|> is one special token (gpt2.tokenizer.controls). The
documents are written once to a jsonl file named by the source's content and the fields (a cache), which
the tokenizer training and `gpt2 data prepare` then read like any other source. Records of .jsonl, .json
(a list or JSON lines) and .csv/.tsv files with a header are read; a record without a field's value gets
no token for that field.

`balance=True` (`data.balance_controls`) repeats each training record whose control values are rarer than
the most common ones, so the model reads every rating about as often: Douban's 68 one-star reviews against
495 four-star ones would otherwise teach `<|stars=1|>` little. Held-out records (by the same content hash
as `gpt2 data prepare`'s val_fraction rule, hence the fraction passed in) are written once, so held-out
scores mean what they meant.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from gpt2.common import atomic_write_text
from gpt2.data.prepare import is_val_document
from gpt2.errors import UserError, UserFileNotFoundError
from gpt2.sources import read_json_records
from gpt2.tokenizer.controls import control_token


def _records(path: Path) -> Iterator[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with open(path, encoding="utf-8-sig", newline="") as f:
            yield from csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
        return
    if suffix not in (".jsonl", ".ndjson", ".json"):
        raise UserError(f"control_fields reads records from .jsonl, .json, .csv or .tsv files, not {path.name}")
    for _, record in read_json_records(path):
        yield record


def with_controls(source: str | Path, *, field: str, control_fields: Sequence[str], out_dir: str | Path,
                  balance: bool = False, val_fraction: float = 0.0) -> tuple[Path, list[str]]:
    """(a jsonl of {"text": control tokens + text} per record, the control tokens in sorted order); with
    `balance`, training records of rarer control values repeated (see the module docstring)."""
    path = Path(source).expanduser()
    if not path.is_file():
        raise UserFileNotFoundError(f"control_fields need a file of records; {source} is not a file")
    settings = [field, list(control_fields)] + ([True, val_fraction] if balance else [])
    key = hashlib.sha256(path.read_bytes() + json.dumps(settings).encode()).hexdigest()[:16]
    out = Path(out_dir) / f"{path.stem}-controls-{key}.jsonl"
    tokens: set[str] = set()
    docs: list[tuple[str, str]] = []  # (the record's control tokens, its document)
    for i, rec in enumerate(_records(path)):
        if not isinstance(rec, dict) or field not in rec:
            raise UserError(f"{path}: record {i + 1} has no field {field!r}")
        prefix = ""
        for name in control_fields:
            value = rec.get(name)
            if value is None or str(value).strip() == "":
                continue
            token = control_token(name, value)
            tokens.add(token)
            prefix += token
        docs.append((prefix, prefix + str(rec[field] or "")))
    missing = [n for n in control_fields if not any(t.startswith(f"<|{n}=") for t in tokens)]
    if missing:
        raise UserError(f"{path}: no record has a value for control field {missing[0]!r}")
    if not out.is_file():
        repeats = _balancing_repeats(docs, val_fraction) if balance else [1] * len(docs)
        lines = [json.dumps({"text": doc}, ensure_ascii=False) for (_, doc), n in zip(docs, repeats) for _ in range(n)]
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, "\n".join(lines) + "\n")
    return out, sorted(tokens, key=_natural)


def _balancing_repeats(docs: list[tuple[str, str]], val_fraction: float) -> list[int]:
    """How often to write each document: a training document round(most common / its controls' count)
    times, counted over the training documents; a held-out one once."""
    held_out = [val_fraction > 0 and is_val_document(doc, val_fraction) for _, doc in docs]
    counts = Counter(prefix for (prefix, _), val in zip(docs, held_out) if not val)
    most = max(counts.values(), default=1)
    return [1 if val else max(1, round(most / counts[prefix])) for (prefix, _), val in zip(docs, held_out)]


def _natural(token: str) -> tuple[str, float, str]:
    """Sort <|stars=2|> before <|stars=10|>: numbers by value."""
    name, _, value = token[2:-2].partition("=")
    try:
        return name, float(value), value
    except ValueError:
        return name, float("inf"), value
