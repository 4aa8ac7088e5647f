"""The llm.c .bin shard format: header fields, dtypes, and refusal of damaged files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gpt2.data.shards import (
    HEADER_BYTES,
    LLAMA3_MAGIC,
    MAGIC,
    read_header,
    read_shard,
    token_dtype,
    write_shard,
)


def test_uint16_shard_is_llm_c_version_1(tmp_path: Path) -> None:
    tokens = np.array([0, 1, 50256, 65535], dtype=np.int64)
    path = tmp_path / "train_000000.bin"
    write_shard(path, tokens, dtype=token_dtype(50257))
    raw = path.read_bytes()
    header = np.frombuffer(raw[:HEADER_BYTES], dtype="<i4")
    assert header[0] == MAGIC == 20240520 and header[1] == 1 and header[2] == 4
    assert not header[3:].any()
    assert len(raw) == HEADER_BYTES + 4 * 2
    assert np.frombuffer(raw[HEADER_BYTES:], dtype="<u2").tolist() == tokens.tolist()
    assert read_shard(path).tolist() == tokens.tolist()
    assert read_shard(path, mmap=False).tolist() == tokens.tolist()


def test_uint32_shard_is_version_2(tmp_path: Path) -> None:
    tokens = np.array([0, 65536, 100_000], dtype=np.int64)
    path = tmp_path / "s.bin"
    write_shard(path, tokens, dtype=token_dtype(100_001))
    h = read_header(path)
    assert (h.magic, h.version, h.n_tokens, h.dtype) == (MAGIC, 2, 3, np.dtype("<u4"))
    assert read_shard(path).tolist() == tokens.tolist()


def test_token_dtype_boundaries() -> None:
    assert token_dtype(2**16) == np.uint16
    assert token_dtype(2**16 + 1) == np.uint32
    with pytest.raises(ValueError, match="n_vocab=0"):
        token_dtype(0)


def test_token_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="65536 does not fit"):
        write_shard(tmp_path / "s.bin", np.array([65536]), dtype=np.uint16)
    assert not list(tmp_path.iterdir())


def test_reads_llm_c_llama3_shards(tmp_path: Path) -> None:
    header = np.zeros(256, dtype="<i4")
    header[:3] = [LLAMA3_MAGIC, 7, 2]
    path = tmp_path / "llama.bin"
    path.write_bytes(header.tobytes() + np.array([128000, 5], dtype="<u4").tobytes())
    assert read_shard(path).tolist() == [128000, 5]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:100], "too short"),
        (lambda b: np.int32(123).tobytes() + b[4:], "magic 123"),
        (lambda b: b[:4] + np.int32(9).tobytes() + b[8:], "unsupported shard version 9"),
        (lambda b: b[:-2], "header says 3 tokens"),
    ],
)
def test_damaged_shards_are_refused(tmp_path: Path, mutate, message: str) -> None:
    good = tmp_path / "good.bin"
    write_shard(good, np.array([1, 2, 3]), dtype=np.uint16)
    bad = tmp_path / "bad.bin"
    bad.write_bytes(mutate(good.read_bytes()))
    with pytest.raises(ValueError, match=message):
        read_header(bad)


def test_empty_shard(tmp_path: Path) -> None:
    path = tmp_path / "e.bin"
    write_shard(path, np.zeros(0, dtype=np.uint16), dtype=np.uint16)
    assert read_header(path).n_tokens == 0 and read_shard(path).size == 0
