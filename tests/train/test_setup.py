"""The default run's setup: the BPE it trains never sees validation text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import gpt2.tokenizer
from gpt2.config import DataConfig, TokenizerConfig
from gpt2.data.prepare import is_val_document
from gpt2.train.setup import ensure_tokenizer

FRACTION = 0.3


def _split_corpus(n: int = 60) -> tuple[list[str], list[str]]:
    """Documents that the val_fraction rule sends to train, and ones it sends to val; only val ones say 'zqxv'."""
    train, val = [], []
    i = 0
    while len(train) < n or len(val) < n // 3:
        plain = f"the cat sat on the mat number {i} and then ran home"
        marked = f"zqxv zqxv zqxv zqxv document {i}"
        if not is_val_document(plain, FRACTION) and len(train) < n:
            train.append(plain)
        if is_val_document(marked, FRACTION) and len(val) < n // 3:
            val.append(marked)
        i += 1
    return train, val


def test_ensure_tokenizer_trains_on_the_training_split_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPT2_CACHE", str(tmp_path / "cache"))
    train, val = _split_corpus()
    docs = [d for pair in zip(train, val + [""] * len(train)) for d in pair if d]  # interleaved
    source = tmp_path / "corpus.jsonl"
    source.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    seen: list[str] = []
    real = gpt2.tokenizer.train_bpe

    def spy(documents, **kwargs):
        documents = list(documents)
        seen.extend(documents)
        return real(documents, **kwargs)

    monkeypatch.setattr(gpt2.tokenizer, "train_bpe", spy)
    cfg = DataConfig(source=str(source), val_fraction=FRACTION,
                     tokenizer=TokenizerConfig(vocab_size=400, min_frequency=2))
    tok = ensure_tokenizer(cfg, progress=False)
    assert seen == train  # exactly the training documents, in order
    # And the vocabulary shows it: 'zqxv' occurs 4× in every val document, so training on val text
    # would merge its bytes; unseen, it stays four single bytes (ids 0-255 are the bytes themselves).
    assert tok.encode_ordinary(" zqxv") == list(b" zqxv")
    assert len(tok.encode_ordinary(train[0])) < len(train[0]) / 2  # while the training text did get merges


def test_a_shard_directory_without_meta_json_is_used_as_it_is(tmp_path: Path) -> None:
    import numpy as np

    from gpt2.data.shards import write_shard
    from gpt2.train.setup import ensure_shards

    d = tmp_path / "llmc"
    d.mkdir()
    write_shard(d / "train_000000.bin", np.arange(100, dtype=np.uint16), dtype=np.dtype(np.uint16))
    cfg = DataConfig(source=str(tmp_path / "no-such-corpus"), dir=str(d))  # the source is never read
    assert ensure_shards(cfg, object(), progress=False) == d
    assert sorted(p.name for p in d.iterdir()) == ["train_000000.bin"]  # nothing prepared or written


def test_a_changed_source_prepares_the_cached_shards_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """`gpt2 train` caches the shards under the source's path; when the file changes (or is merely written
    again: a new mtime), the cache is stale. It is prepared again, with a line saying so, instead of the
    `--overwrite` error meant for a user's own output directory; and bits/byte follows the new shards."""
    import os

    from gpt2.data.loader import shard_files
    from gpt2.data.shards import read_shard
    from gpt2.train.setup import bytes_per_token, ensure_shards

    monkeypatch.setenv("GPT2_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "corpus.jsonl"
    short = [f"a short one {i}" for i in range(40)]
    source.write_text("".join(json.dumps({"text": d}) + "\n" for d in short), encoding="utf-8")
    cfg = DataConfig(source=str(source), val_fraction=0.5, tokenizer=TokenizerConfig(vocab_size=300, min_frequency=2))
    tok = ensure_tokenizer(cfg, progress=False)
    out = ensure_shards(cfg, tok, progress=False)
    first = sum(len(read_shard(p)) for p in shard_files(out, split="train"))
    bpt_first = bytes_per_token(out, tok)

    long = [f"a much, much longer document than any before it, number {i}" * 3 for i in range(40)]
    source.write_text("".join(json.dumps({"text": d}) + "\n" for d in long), encoding="utf-8")
    os.utime(source, ns=(os.stat(source).st_atime_ns, os.stat(source).st_mtime_ns + 10**9))  # a later mtime
    capsys.readouterr()
    assert ensure_shards(cfg, tok, progress=False) == out  # same cache directory (keyed on the path)
    assert "prepared with another configuration (differs in: sources); preparing it again" in capsys.readouterr().err
    assert sum(len(read_shard(p)) for p in shard_files(out, split="train")) > 2 * first
    bpt_second = bytes_per_token(out, tok)
    assert bpt_second != bpt_first
    assert bpt_second == bytes_per_token(out, tok)  # and cached again


def test_the_cached_bpe_is_trained_again_only_when_its_source_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The BPE cache is named by the source's path; a changed file (size or mtime) trains it again, so a run
    never depends on which version of the file the cache happened to see first."""
    import os

    monkeypatch.setenv("GPT2_CACHE", str(tmp_path / "cache"))
    calls: list[int] = []
    real = gpt2.tokenizer.train_bpe

    def counting(documents, **kwargs):
        calls.append(1)
        return real(documents, **kwargs)

    monkeypatch.setattr(gpt2.tokenizer, "train_bpe", counting)
    source = tmp_path / "corpus.jsonl"
    source.write_text("".join(json.dumps({"text": f"the cat sat on the mat {i}"}) + "\n" for i in range(60)))
    cfg = DataConfig(source=str(source), val_fraction=0.1, tokenizer=TokenizerConfig(vocab_size=300, min_frequency=2))
    first = ensure_tokenizer(cfg, progress=False)
    assert ensure_tokenizer(cfg, progress=False).hash == first.hash and len(calls) == 1  # cached

    source.write_text("".join(json.dumps({"text": f"zebras quietly graze zebras {i}"}) + "\n" for i in range(60)))
    os.utime(source, ns=(os.stat(source).st_atime_ns, os.stat(source).st_mtime_ns + 10**9))
    capsys.readouterr()
    second = ensure_tokenizer(cfg, progress=False)
    assert len(calls) == 2 and "the source changed since it was trained" in capsys.readouterr().err
    assert second.hash != first.hash
    assert len(second.encode_ordinary(" zebras")) < len(first.encode_ordinary(" zebras"))  # learnt from the new text
    assert ensure_tokenizer(cfg, progress=False).hash == second.hash and len(calls) == 2  # and cached again
