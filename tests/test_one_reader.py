"""One reader of documents: tokenizer training, `gpt2 data prepare` and `gpt2 eval --completions` see the same texts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import gpt2.tokenizer.bpe as bpe
from gpt2.data.prepare import prepare
from gpt2.data.shards import read_shard
from gpt2.eval.completions import load_completion_pairs
from gpt2.sources import read_documents
from gpt2.tokenizer import train_bpe

# Each file has the awkward cases: empty and whitespace-only records, a null, a quoted csv field spanning
# lines, CRLF line ends (kept byte for byte), non-ASCII text, a BOM.
CSV = ('\ufefflabel,text\r\n1,"first review, with a comma"\r\n0,\r\n1,"two\r\nlines"\r\n0,"   "\r\n'
       '1,距离川沙公路较近\r\n')
JSONL = "\n".join([json.dumps({"text": "alpha beta"}), "", json.dumps({"text": ""}), json.dumps({"text": None}),
                   json.dumps({"text": "  \n"}), json.dumps({"text": "gamma\r\ndelta", "other": 1}),
                   json.dumps({"text": "评论 ünïcode"}, ensure_ascii=False)]) + "\n"
TXT = "line one\r\nline two\r\n\r\n\r\nsecond paragraph\r\n"
EXPECTED = {
    ("data.csv", None): ["first review, with a comma", "two\r\nlines", "距离川沙公路较近"],
    ("data.jsonl", None): ["alpha beta", "gamma\r\ndelta", "评论 ünïcode"],
    ("data.txt", None): [TXT],
    ("data.txt", "blank"): ["line one\r\nline two", "second paragraph\r\n"],
}


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "data.csv").write_bytes(CSV.encode("utf-8"))
    (tmp_path / "data.jsonl").write_bytes(JSONL.encode("utf-8"))
    (tmp_path / "data.txt").write_bytes(TXT.encode("utf-8"))
    return tmp_path


def _tokenizer_sees(path: Path, delimiter: str | None, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = bpe.count_chunks

    def spy(documents, **kwargs):
        docs = list(documents)
        seen.extend(docs)
        return real(docs, **kwargs)

    monkeypatch.setattr(bpe, "count_chunks", spy)
    train_bpe(files=[path], delimiter=delimiter, vocab_size=260, min_frequency=1)
    return seen


def _prepare_sees(path: Path, delimiter: str | None, out: Path) -> list[str]:
    tok = train_bpe(["any text at all"], vocab_size=257)  # byte-level: decoding gives back the exact text
    prepare(path, out=out, tokenizer=tok, workers=1, val_fraction=0.0, delimiter=delimiter)
    tokens = np.concatenate([read_shard(p) for p in sorted(out.glob("train_*.bin"))]).tolist()
    docs, current = [], None
    for t in tokens:  # eot, doc, eot, doc, ...
        if t == tok.eot_token:
            if current is not None:
                docs.append(current)
            current = []
        else:
            current.append(t)
    docs.append(current)
    return [tok.decode(d) for d in docs]


def _completions_see(path: Path, delimiter: str | None) -> list[str]:
    pairs = load_completion_pairs(path, delimiter=delimiter, min_chars=1)
    return [p.prompt + p.reference for p in pairs]


@pytest.mark.parametrize(("name", "delimiter"), list(EXPECTED))
def test_every_verb_reads_the_same_documents(name: str, delimiter: str | None, files: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = files / name
    expected = EXPECTED[name, delimiter]
    assert list(read_documents(path, delimiter=delimiter)) == expected
    assert _tokenizer_sees(path, delimiter, monkeypatch) == expected
    assert _prepare_sees(path, delimiter, tmp_path / "shards") == expected
    assert _completions_see(path, delimiter) == expected


def test_a_missing_column_is_the_same_error_everywhere(files: Path, tmp_path: Path) -> None:
    message = r"no column 'review'; columns: label, text"
    tok = train_bpe(["any text"], vocab_size=257)
    with pytest.raises(ValueError, match=message):
        train_bpe(files=files / "data.csv", field="review", vocab_size=300)
    with pytest.raises(ValueError, match=message):
        prepare(files / "data.csv", out=tmp_path / "o", tokenizer=tok, workers=1, field="review")
    with pytest.raises(ValueError, match=message):
        load_completion_pairs(files / "data.csv", field="review")
