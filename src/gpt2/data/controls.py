"""Put each record's metadata before its text as control tokens, for conditioning a language model on it.

    python -c "from gpt2.data.controls import with_controls; print(with_controls(
        '../shared/data/douban_movie_reviews_zh.jsonl', field='text', control_fields=['stars'], out_dir='/tmp/c'))"

`data.control_fields: [stars]` in a recipe turns the record {"stars": 5, "text": "剧情不错"} into the
document "<|stars=5|>剧情不错", where <|stars=5|> is one special token (gpt2.tokenizer.controls). The
documents are written once to a jsonl file named by the source's content and the fields (a cache), which
the tokenizer training and `gpt2 data prepare` then read like any other source. Records of .jsonl, .json
(a list or JSON lines) and .csv/.tsv files with a header are read; a record without a field's value gets
no token for that field.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from gpt2.common import atomic_write_text
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


def with_controls(source: str | Path, *, field: str, control_fields: Sequence[str], out_dir: str | Path
                  ) -> tuple[Path, list[str]]:
    """(a jsonl of {"text": control tokens + text} per record, the control tokens in sorted order)."""
    path = Path(source).expanduser()
    if not path.is_file():
        raise UserFileNotFoundError(f"control_fields need a file of records; {source} is not a file")
    key = hashlib.sha256(path.read_bytes() + json.dumps([field, list(control_fields)]).encode()).hexdigest()[:16]
    out = Path(out_dir) / f"{path.stem}-controls-{key}.jsonl"
    tokens: set[str] = set()
    lines: list[str] = []
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
        lines.append(json.dumps({"text": prefix + str(rec[field] or "")}, ensure_ascii=False))
    missing = [n for n in control_fields if not any(t.startswith(f"<|{n}=") for t in tokens)]
    if missing:
        raise UserError(f"{path}: no record has a value for control field {missing[0]!r}")
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, "\n".join(lines) + "\n")
    return out, sorted(tokens, key=_natural)


def _natural(token: str) -> tuple[str, float, str]:
    """Sort <|stars=2|> before <|stars=10|>: numbers by value."""
    name, _, value = token[2:-2].partition("=")
    try:
        return name, float(value), value
    except ValueError:
        return name, float("inf"), value
