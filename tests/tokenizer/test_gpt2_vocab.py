"""GPT-2's vocabulary on real corpora: our fast path equals plain tiktoken on every document, and the
plain-Python reference encoder equals both on the first 200 KB of each corpus."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from gpt2.tokenizer import Tokenizer, reference_encode

# Token counts with GPT-2's vocabulary as ../shared/data/README.md gives them (tiktoken, no specials).
CORPORA = {
    "the-verdict.txt": 5_145,
    "tinyshakespeare.txt": 338_025,
    "wikitext2_raw_test.txt": 283_287,
    "douban_movie_reviews_zh.jsonl": 98_873,
    "chnsenticorp_hotel_reviews_zh.csv": 2_057_292,
    "imdb_test.jsonl": 7_320_543,
}


def documents(path: Path, *, exact: bool = False) -> list[str]:
    """A .txt file is one document (read in text mode as the README's counts are, or with `exact`
    byte for byte, CRLF kept); .jsonl a document per line; .csv one per row."""
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            return [json.loads(line)["text"] for line in f if line.strip()]
    if path.suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            return [row["review"] for row in csv.DictReader(f)]
    return [path.read_bytes().decode("utf-8") if exact else path.read_text(encoding="utf-8")]


def first_bytes(docs: list[str], n: int = 200_000) -> list[str]:
    """Whole documents until `n` UTF-8 bytes are covered; a single long document is cut at `n` bytes."""
    out, size = [], 0
    for d in docs:
        b = len(d.encode("utf-8"))
        if size + b > n and len(docs) == 1:
            out.append(d.encode("utf-8")[:n].decode("utf-8", errors="ignore"))
            break
        out.append(d)
        size += b
        if size >= n:
            break
    return out


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "imdb_test.jsonl" else n
                                  for n in CORPORA])
def test_fast_path_equals_tiktoken_on_every_document(name: str, shared_data: Path, gpt2_tok: Tokenizer,
                                                     tiktoken_gpt2) -> None:
    for exact in ([False, True] if name.endswith(".txt") else [False]):
        docs = documents(shared_data / name, exact=exact)
        ours = gpt2_tok.encode_ordinary_batch(docs, num_threads=2)
        ref = tiktoken_gpt2.encode_ordinary_batch(docs, num_threads=2)
        assert len(ours) == len(ref)
        for k, (a, b) in enumerate(zip(ours, ref)):
            assert a == b, f"{name}: document {k} differs"
        if not exact:
            assert sum(map(len, ours)) == CORPORA[name]
    # encode (with its special-token check) agrees too: these corpora hold no <|endoftext|>.
    assert gpt2_tok.encode_batch(docs[:500]) == ref[:500]


@pytest.mark.parametrize("name", list(CORPORA))
def test_reference_encoder_equals_fast_path_on_first_200kb(name: str, shared_data: Path, gpt2_tok: Tokenizer) -> None:
    all_docs = documents(shared_data / name, exact=True)
    docs = first_bytes(all_docs)
    covered = sum(len(d.encode("utf-8")) for d in docs)
    assert covered >= min(200_000, sum(len(d.encode("utf-8")) for d in all_docs)) - 4  # 4: a cut character
    ranks, pat = gpt2_tok.mergeable_ranks, gpt2_tok.pattern
    for k, d in enumerate(docs):
        assert reference_encode(d, ranks, pattern=pat) == gpt2_tok.encode_ordinary(d), f"{name}: document {k}"


def test_the_verdict_is_5145_tokens(shared_data: Path, gpt2_tok: Tokenizer) -> None:
    assert len(gpt2_tok.encode((shared_data / "the-verdict.txt").read_text(encoding="utf-8"))) == 5145
