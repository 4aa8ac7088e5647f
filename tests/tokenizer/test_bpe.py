"""The trainer: equal to a recount-everything BPE, deterministic, and strict about bad input."""

from __future__ import annotations

import json
import random
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt2.sources import read_documents
from gpt2.tokenizer.bpe import _blocks, count_chunks, learn_merges, train_bpe
from gpt2.tokenizer.core import GPT2_PATTERN, GPT4_PATTERN


def naive_merges(chunks: dict[str, int], n_merges: int, min_frequency: int = 1) -> list[tuple[bytes, bytes]]:
    """Educational BPE: recount every pair of every chunk before each merge; same tie-break rule."""
    words: dict[tuple[bytes, ...], int] = Counter()
    for chunk, n in chunks.items():
        b = chunk.encode("utf-8")
        words[tuple(b[i:i + 1] for i in range(len(b)))] += n
    merges = []
    for _ in range(n_merges):
        counts: Counter[tuple[bytes, bytes]] = Counter()
        for w, n in words.items():
            for p in pairwise(w):
                counts[p] += n
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p[0], p[1]))
        if counts[best] < min_frequency:
            break
        merges.append(best)
        new: dict[tuple[bytes, ...], int] = Counter()
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] += n
        words = new
    return merges


# Few distinct characters make long repeats ("aaaa", "abab") and many tied counts: the hard cases.
_docs = st.lists(st.text(alphabet="ab c\nd€é你", max_size=40), min_size=1, max_size=25)


@settings(max_examples=60, deadline=None)
@given(_docs, st.integers(1, 3))
def test_incremental_trainer_equals_naive_recount(docs: list[str], min_frequency: int) -> None:
    chunks = count_chunks(docs)
    assert learn_merges(chunks, n_merges=60, min_frequency=min_frequency) == naive_merges(chunks, 60, min_frequency)


def test_trainer_equals_naive_on_real_text(shared_data: Path) -> None:
    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    zh = [json.loads(line)["text"] for line in (shared_data / "douban_movie_reviews_zh.jsonl").read_text(encoding="utf-8").splitlines()][:150]
    chunks = count_chunks([text, *zh])
    assert learn_merges(chunks, n_merges=150) == naive_merges(chunks, 150, 2)


def test_training_ignores_document_order_and_is_repeatable() -> None:
    docs = ["the cat sat on the mat", "a bat and a cat", "that hat", "mat mat mat"] * 3
    shuffled = docs[:]
    random.Random(0).shuffle(shuffled)
    a = train_bpe(docs, vocab_size=270, min_frequency=1)
    b = train_bpe(shuffled, vocab_size=270, min_frequency=1)
    assert a.mergeable_ranks == b.mergeable_ranks and a.hash == b.hash


def test_ties_go_to_the_lexicographically_smallest_pair() -> None:
    # "ab", "cd" and "xy" all occur twice: the documented rule takes (a, b) first, then (c, d), then (x, y).
    merges = learn_merges({"xy": 2, "cd": 2, "ab": 2}, n_merges=3)
    assert merges == [(b"a", b"b"), (b"c", b"d"), (b"x", b"y")]


def test_vocab_layout_bytes_then_merges_then_specials() -> None:
    tok = train_bpe(["hello hello hello world world"], vocab_size=262, special_tokens=["<|endoftext|>", "<|x|>"],
                    min_frequency=1)
    assert all(tok.mergeable_ranks[bytes([b])] == b for b in range(256))
    assert sorted(tok.mergeable_ranks.values()) == list(range(256 + 4))
    assert tok.special_tokens == {"<|endoftext|>": 260, "<|x|>": 261}
    assert tok.n_vocab == 262 and tok.eot_token == 260


def test_min_frequency_stops_early_and_says_so_in_n_vocab() -> None:
    tok = train_bpe(["abc abc xyz"], vocab_size=1000, min_frequency=2)
    # only the pairs of " abc"/"abc" occur twice or more
    assert tok.n_vocab < 1000
    assert all(tok.mergeable_ranks[t] < 256 or t in (b"ab", b"abc", b"bc") for t in tok.mergeable_ranks)


def test_special_tokens_in_training_text_are_not_learned() -> None:
    docs = ["<|endoftext|>" * 50 + "hi"]
    tok = train_bpe(docs, vocab_size=300, min_frequency=1)
    assert not any(b"endoftext" in t or b"<|" in t for t in tok.mergeable_ranks)


def test_gpt4_pattern_option() -> None:
    tok = train_bpe(["123456789 123456789 HELLO'S"], vocab_size=300, pattern="gpt4", min_frequency=1)
    assert tok.pattern == GPT4_PATTERN
    assert b"123" in tok.mergeable_ranks and b"1234" not in tok.mergeable_ranks  # digits split in threes


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"vocab_size": 200}, "vocab_size=200 is too small"),
    ({"vocab_size": 257, "special_tokens": ["<|a|>", "<|b|>"]}, "at least 256"),
    ({"vocab_size": 300, "pattern": "(unclosed"}, "not a valid regex"),
    ({"vocab_size": 300, "special_tokens": [""]}, "non-empty"),
])
def test_bad_arguments_are_one_line_value_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=regex.escape(message)) as e:
        train_bpe(["some text"], **kwargs)
    assert "\n" not in str(e.value)


def test_empty_corpus_is_refused() -> None:
    with pytest.raises(ValueError, match="corpus is empty"):
        train_bpe([], vocab_size=300)
    with pytest.raises(ValueError, match="corpus is empty"):
        train_bpe(["<|endoftext|>"], vocab_size=300)


def test_documents_must_be_strings_not_one_string() -> None:
    with pytest.raises(ValueError, match="not a single string"):
        train_bpe("a document", vocab_size=300)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="either documents"):
        train_bpe(vocab_size=300)


def test_files_globs_jsonl_csv(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("alpha beta gamma\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("delta epsilon\n", encoding="utf-8")
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "zeta"}) + "\n\n" + json.dumps({"text": "eta"}) + "\n",
                                      encoding="utf-8")
    (tmp_path / "d.csv").write_text('label,review\n1,"theta, iota"\n0,kappa\n', encoding="utf-8")
    assert list(read_documents(str(tmp_path / "*.txt"))) == ["alpha beta gamma\n", "delta epsilon\n"]
    assert list(read_documents(tmp_path / "c.jsonl")) == ["zeta", "eta"]
    assert list(read_documents(tmp_path / "d.csv", field="review")) == ["theta, iota", "kappa"]
    (tmp_path / "crlf.txt").write_bytes(b"line one\r\nline two\r\n")
    assert list(read_documents(tmp_path / "crlf.txt")) == ["line one\r\nline two\r\n"]  # bytes kept as stored
    tok = train_bpe(files=[tmp_path / "a.txt", str(tmp_path / "c.jsonl")], vocab_size=300, min_frequency=1)
    assert tok.decode(tok.encode("alpha zeta")) == "alpha zeta"
    assert len(tok.encode("alpha")) == 1  # learned from a.txt: the files really were read


def test_bad_input_files(tmp_path: Path) -> None:
    # The reader is gpt2.sources' (the one `gpt2 data prepare` uses), so are its messages.
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        train_bpe(files=tmp_path / "missing.txt", vocab_size=300)
    with pytest.raises(FileNotFoundError, match="matches nothing"):
        train_bpe(files=str(tmp_path / "*.nothing"), vocab_size=300)
    (tmp_path / "x.jsonl").write_text('{"body": "hi"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"x.jsonl:1: no field 'text'; fields: body"):
        train_bpe(files=tmp_path / "x.jsonl", vocab_size=300)
    (tmp_path / "y.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no column 'text'; columns: a, b"):
        train_bpe(files=tmp_path / "y.csv", vocab_size=300)
    # Undecodable bytes become U+FFFD, as in prepared shards, rather than stopping the run.
    (tmp_path / "z.txt").write_bytes(b"ok \xff\xfe not utf-8")
    assert list(read_documents(tmp_path / "z.txt")) == ["ok \ufffd\ufffd not utf-8"]


@pytest.mark.parametrize("pattern", [GPT2_PATTERN, GPT4_PATTERN])
def test_large_files_are_cut_only_where_splitting_is_unchanged(pattern: str) -> None:
    rng = random.Random(1)
    pieces = ["word", " ", "  ", "\n", "\n\n", " \n", "\t", "42", "!?", "x.\n", "é", "你好"]
    text = "".join(rng.choice(pieces) for _ in range(20000))
    blocks = list(_blocks(text, block_chars=500))
    assert len(blocks) > 10 and "".join(blocks) == text
    pat = regex.compile(pattern)
    assert Counter(c for b in blocks for c in pat.findall(b)) == Counter(pat.findall(text))
