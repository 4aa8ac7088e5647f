"""Labelled texts for classification: read (csv, tsv, jsonl/json, parquet), map labels, split, balance.

    python -c "from gpt2.finetune.data import read_labelled; print(len(read_labelled('../shared/data/imdb_train.jsonl')))"

A row gives a (text, label) pair from two fields of the same record, so this reads records itself
rather than through gpt2.sources (which yields one text field per record and refuses non-text
values such as IMDB's integer labels); it shares that module's conventions: UTF-8 with undecodable
bytes replaced, a BOM dropped, .csv parsed as RFC 4180 and .tsv as IANA TSV (one row per line, no
quoting: sms_spam.tsv has stray quote characters that a quoting reader would merge rows over).
Labels are strings ("0"/"1" for IMDB's integers). Empty and whitespace-only texts are skipped and counted.

The splits follow LLMs-from-scratch's chapter 6 protocol: downsample every class to the minority
count (747 spam + 747 ham for SMS), shuffle with a seeded generator, cut 70/10/20.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch

from gpt2.errors import UserError, UserFileNotFoundError
from gpt2.model.config import TruncationSide
from gpt2.sources import FORMATS, decode_utf8, read_json_records

_BOM = "\ufeff"


@dataclass
class Labelled:
    """Texts and their labels (aligned), how many rows were skipped for an empty text, and the file read."""

    texts: list[str]
    labels: list[str]
    skipped_empty: int
    source: str

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> Labelled:
        """The rows at `indices`, in that order."""
        return Labelled([self.texts[i] for i in indices], [self.labels[i] for i in indices], 0, self.source)


def _label_str(value: Any, where: str, field: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"  # JSON's spelling, not Python's
    if isinstance(value, (int, str)):
        s = str(value).strip()
        if s:
            return s
    elif isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    raise UserError(f"{where}: label field {field!r} is {value!r}; every row needs a label (text or integer)")


def _show(values: Sequence[str], width: int = 24) -> str:
    return ", ".join(repr(v if len(v) <= width else v[: width - 1] + "…") for v in values)


def _table_columns(path: Path, first_row: list[str], text_field: str, label_field: str | None
                   ) -> tuple[int, int | None, bool]:
    """(text column, label column, whether the first row is a header) for a csv/tsv file; no label column
    when label_field is None (texts to classify)."""
    fields = [text_field] if label_field is None else [text_field, label_field]
    if all(f in first_row for f in fields):
        return first_row.index(text_field), None if label_field is None else first_row.index(label_field), True
    if all(f.isdigit() for f in fields):
        for name, index in zip(("text", "label"), map(int, fields)):
            if index >= len(first_row):
                raise UserError(f"{path}: {name} column index {index} is out of range; rows have "
                                f"{len(first_row)} fields (0-based indices 0..{len(first_row) - 1})")
        return int(text_field), None if label_field is None else int(label_field), False
    if any(f in first_row for f in fields):  # a header, missing one of the two names
        missing = label_field if text_field in first_row else text_field
        raise UserError(f"{path}: no column {missing!r}; columns: {', '.join(first_row)} "
                        "(name them with --text-field/--label-field)")
    naming = " and ".join(repr(f) for f in fields)
    example = "--text-field 1" + ("" if label_field is None else " --label-field 0")
    raise UserError(f"{path}: the first row ({_show(first_row)}) is not a header naming {naming}; name the "
                    f"header's columns, or for a file without a header give 0-based column indices "
                    f"(0..{len(first_row) - 1}), e.g. {example}")


def _read_table(path: Path, fmt: str, text_field: str, label_field: str | None,
                delimiter: str | None) -> tuple[list[str], list[str], int]:
    text, _ = decode_utf8(path.read_bytes())
    text = text.removeprefix(_BOM)
    if fmt == "tsv":
        sep = delimiter or "\t"
        rows: list[list[str]] = [line.rstrip("\r").split(sep) for line in text.split("\n") if line]
    else:
        rows = [r for r in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter or ",") if r]
    if not rows:
        raise UserError(f"{path} is empty: no rows to read")
    ti, li, header = _table_columns(path, rows[0], text_field, label_field)
    texts, labels, skipped = [], [], 0
    need = max(ti, li if li is not None else 0) + 1
    for n, row in enumerate(rows[1:] if header else rows, start=2 if header else 1):
        if need > len(row):
            raise UserError(f"{path}: row {n} has {len(row)} field(s), fewer than the {need} the columns asked "
                            "for need")
        if not row[ti].strip():
            skipped += 1
            continue
        texts.append(row[ti])
        if li is not None and label_field is not None:
            labels.append(_label_str(row[li], f"{path}: row {n}", label_field))
    return texts, labels, skipped


def _read_json(path: Path, text_field: str, label_field: str | None) -> tuple[list[str], list[str], int]:
    texts, labels, skipped = [], [], 0
    fields = [text_field] if label_field is None else [text_field, label_field]
    for where, obj in read_json_records(path):
        if not isinstance(obj, dict):
            raise UserError(f"{where}: expected a JSON object with the field(s) {', '.join(map(repr, fields))}, "
                            f"got {type(obj).__name__}")
        for field in fields:
            if field not in obj:
                raise UserError(f"{where}: no field {field!r}; fields: {', '.join(map(str, obj)) or '(none)'} "
                                "(name them with --text-field/--label-field)")
        value = obj[text_field]
        if value is not None and not isinstance(value, str):
            raise UserError(f"{where}: text field {text_field!r} is {type(value).__name__}, not text")
        if not value or not value.strip():
            skipped += 1
            continue
        texts.append(value)
        if label_field is not None:
            labels.append(_label_str(obj[label_field], where, label_field))
    return texts, labels, skipped


def _read_parquet(path: Path, text_field: str, label_field: str | None) -> tuple[list[str], list[str], int]:
    from gpt2.sources import _pyarrow_parquet  # one place says how to install pyarrow

    pq = _pyarrow_parquet()
    names = pq.read_schema(path).names
    fields = [text_field] if label_field is None else [text_field, label_field]
    for field in fields:
        if field not in names:
            raise UserError(f"{path}: no column {field!r}; columns: {', '.join(names)} "
                            "(name them with --text-field/--label-field)")
    table = pq.read_table(path, columns=fields)
    label_values = table.column(1).to_pylist() if label_field is not None else [None] * table.num_rows
    texts, labels, skipped = [], [], 0
    for n, (value, label) in enumerate(zip(table.column(0).to_pylist(), label_values), start=1):
        if isinstance(value, bytes):
            value = decode_utf8(value)[0]
        if not value or not value.strip():
            skipped += 1
            continue
        texts.append(value)
        if label_field is not None:
            labels.append(_label_str(label, f"{path}: row {n}", label_field))
    return texts, labels, skipped


def read_labelled(
    path: str | Path, *, text_field: str = "text", label_field: str = "label", delimiter: str | None = None
) -> Labelled:
    """Read (text, label) rows from a .csv, .tsv, .jsonl/.ndjson/.json or .parquet file.

    csv/tsv: when the first row holds both field names it is a header; otherwise the fields are 0-based
    column indices ("1", "0" for sms_spam.tsv). `delimiter` replaces the csv/tsv separator (e.g. ";").
    A missing column or field is a UserError listing the ones present.
    """
    return _read(path, text_field=str(text_field), label_field=str(label_field), delimiter=delimiter)


def read_texts(path: str | Path, *, text_field: str = "text", delimiter: str | None = None) -> Labelled:
    """Texts to classify (labels left empty): a .txt file is one text per line, blank lines skipped;
    .csv/.tsv/.jsonl/.json/.parquet are read as read_labelled reads them, the text field only."""
    p = Path(path).expanduser()
    if p.is_file() and p.suffix.lower() not in (".csv", ".tsv", ".jsonl", ".ndjson", ".json", ".parquet"):
        if delimiter is not None:
            raise UserError(f"{p}: a delimiter applies to .csv/.tsv files only; a text file is one text per line")
        lines = decode_utf8(p.read_bytes())[0].removeprefix(_BOM).splitlines()
        texts = [line for line in lines if line.strip()]
        if not texts:
            raise UserError(f"{p}: no text to classify (every line is blank)")
        return Labelled(texts, [], len(lines) - len(texts), str(p))
    return _read(path, text_field=str(text_field), label_field=None, delimiter=delimiter)


def _read(path: str | Path, *, text_field: str, label_field: str | None, delimiter: str | None) -> Labelled:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserFileNotFoundError(f"{p}: no such file" + (" (a directory)" if p.is_dir() else ""))
    fmt = FORMATS.get(p.suffix.lower())
    if fmt not in ("csv", "tsv", "jsonl", "json", "parquet"):
        raise UserError(f"{p}: unsupported file type {p.suffix or '(none)'!r} for labelled data; use .csv, .tsv, "
                        ".jsonl, .json or .parquet")
    if delimiter is not None and fmt not in ("csv", "tsv"):
        raise UserError(f"{p}: a delimiter applies to .csv/.tsv files only, not {p.suffix}")
    if delimiter == "":
        raise UserError("the delimiter must be a character such as ',' or ';', not empty")
    if fmt in ("csv", "tsv"):
        texts, labels, skipped = _read_table(p, fmt, text_field, label_field, delimiter)
    elif fmt == "parquet":
        texts, labels, skipped = _read_parquet(p, text_field, label_field)
    else:
        texts, labels, skipped = _read_json(p, text_field, label_field)
    if not texts:
        raise UserError(f"{p}: no rows with text ({skipped} empty text(s) skipped)")
    return Labelled(texts, labels, skipped, str(p))


# ----------------------------------------------------------------------------------------- labels
def _label_key(labels: Sequence[str]) -> Any:
    try:
        [float(x) for x in labels]
    except ValueError:
        return None
    return float


def label_maps(labels: Sequence[str]) -> tuple[dict[int, str], dict[str, int]]:
    """(id2label, label2id) over the distinct labels, sorted by name; numeric names ("2" < "10") by value."""
    names = sorted(set(labels), key=_label_key(list(set(labels))))
    id2label = dict(enumerate(names))
    return id2label, {name: i for i, name in id2label.items()}


def class_weights(labels: Sequence[str], label2id: dict[str, int]) -> list[float]:
    """Per-class loss weights, index = class id: inverse frequency in `labels`, scaled to mean 1."""
    counts = Counter(labels)
    unknown = sorted(set(counts) - set(label2id))
    if unknown:
        raise UserError(f"labels {_show(unknown)} are not in label2id ({_show(list(label2id))})")
    absent = [name for name in label2id if counts[name] == 0]
    if absent:
        raise UserError(f"no examples of label(s) {_show(absent)}: a class weight needs at least one")
    inverse = np.zeros(len(label2id))
    for name, i in label2id.items():
        inverse[i] = 1.0 / counts[name]
    return (inverse / inverse.mean()).tolist()


# ----------------------------------------------------------------------------------------- splits
def split_indices(
    n: int, *, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2), seed: int
) -> tuple[list[int], list[int], list[int]]:
    """(train, val, test) indices of a seeded permutation of range(n): floor(n·f_train), floor(n·f_val), the rest.

    The rounding is LLMs-from-scratch's, so 1,494 SMS rows split 1,045 / 149 / 300.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise UserError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    order = np.random.default_rng(seed).permutation(n).tolist()
    a = int(n * fractions[0])
    b = a + int(n * fractions[1])
    return order[:a], order[a:b], order[b:]


def downsample(labels: Sequence[str], *, seed: int) -> list[int]:
    """Indices keeping an equal, random number of rows of every class (the minority's count), in input order."""
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    if not by_class:
        return []
    keep = min(len(v) for v in by_class.values())
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for name in sorted(by_class):  # a fixed order, so the draws do not depend on which label came first
        chosen.extend(rng.choice(by_class[name], size=keep, replace=False).tolist())
    return sorted(chosen)


def check_label_coverage(
    labels: Sequence[str], *, train: Sequence[int], val: Sequence[int] = (), test: Sequence[int] = ()
) -> None:
    """Raise UserError naming any label that appears in the val or test split but never in train."""
    seen = {labels[i] for i in train}
    for split, idx in (("val", val), ("test", test)):
        only = Counter(labels[i] for i in idx if labels[i] not in seen)
        if only:
            names = ", ".join(f"{name!r} ({k} example{'s' * (k != 1)})" for name, k in sorted(only.items()))
            raise UserError(f"label {names} appears in the {split} split but never in train, so the model cannot "
                            "learn it: use more data, another split seed, or drop or merge that label")


# ------------------------------------------------------------------------ encoding and batching
TRUNCATION_SIDES: tuple[str, ...] = get_args(TruncationSide)  # the one list: GPT2Config's type names them


def encode_for_classification(
    tokenizer: Any, texts: Sequence[str], *, max_length: int, truncation_side: str
) -> tuple[list[list[int]], int]:
    """(token ids of each text, at most max_length, cut on the right (keep the start), the left (keep the
    end) or in the middle ("both": keep the start and the end, see `truncate`); how many texts were cut): the one
    encoding of training, evaluation and `gpt2 classify`."""
    if max_length < 1:
        raise UserError(f"max_length must be a positive number of tokens, got {max_length}")
    if truncation_side not in TRUNCATION_SIDES:
        raise UserError(f"truncation_side must be one of {', '.join(TRUNCATION_SIDES)}, got {truncation_side!r}")
    out, cut = [], 0
    for ids in tokenizer.encode_ordinary_batch(list(texts)):
        assert ids, "empty texts are skipped before encoding"
        cut += len(ids) > max_length
        out.append(truncate(ids, max_length, truncation_side))
    return out, cut


def truncate(ids: Sequence[int], max_length: int, side: str) -> list[int]:
    """At most max_length of `ids`: the first (side "right" cuts the right), the last ("left"), or the first
    quarter and the last three quarters joined ("both"). A review states its subject at the start and its
    verdict at the end; head + tail with the tail larger is Sun et al. 2019's best cut for long texts
    (How to Fine-Tune BERT for Text Classification: 128 + 382 of 512)."""
    if len(ids) <= max_length:
        return list(ids)
    if side == "right":
        return list(ids[:max_length])
    if side == "left":
        return list(ids[-max_length:])
    head = max_length // 4
    return [*ids[:head], *ids[len(ids) - (max_length - head):]]


def pad_right(ids: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest: (input_ids (B, T), attention_mask (B, T)), the one batching of classification."""
    T = max(map(len, ids))
    x = torch.full((len(ids), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), T), dtype=torch.long)
    for i, seq in enumerate(ids):
        x[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[i, : len(seq)] = 1
    return x, mask


class EpochCursor:
    """Where a resumable loader is (its epoch, its offset in that epoch's order), saved with the split's size,
    so a resume on other data is one error line instead of silently different batches. Subclasses set
    `epoch` and `offset` and say how many examples they hold (`n_examples`)."""

    epoch: int
    offset: int

    @property
    def n_examples(self) -> int:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "offset": self.offset, "examples": self.n_examples}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("examples") != self.n_examples:
            raise UserError(f"the checkpoint's training split had {state.get('examples')} examples, this one has "
                            f"{self.n_examples}: resume with the same finetune.* data settings")
        self.epoch, self.offset = state["epoch"], state["offset"]
