"""Token shards in llm.c's `.bin` format: write, read the header, memory-map the tokens.

    python -c "from gpt2.data.shards import read_header; print(read_header('path/to/train_000000.bin'))"

Layout (llm.c `dev/data/data_common.py`, also read by modded-nanogpt): a header of 256 little-endian
int32 — `[0]` magic 20240520, `[1]` version, `[2]` token count, the rest zero — then the tokens.

- version 1: uint16 tokens (llm.c's GPT-2 shards; any vocabulary of at most 65,536 ids);
- version 2: uint32 tokens, our choice for larger vocabularies. llm.c itself marks its Llama-3 shards
  with a different magic (20240801, version 7); we read those too, but write version 2 under the GPT-2
  magic so a reader that only checks the magic still finds a header it can size, and a reader that
  checks `version == 1` (llm.c, modded-nanogpt) refuses a uint32 file instead of misreading it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpt2.common import atomic_write_bytes
from gpt2.errors import UserError

MAGIC = 20240520
LLAMA3_MAGIC = 20240801  # llm.c's Llama-3 shards: uint32 tokens, version 7 (read-only support)
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
VERSION_U16 = 1
VERSION_U32 = 2

# (magic, version) → token dtype, for every header we accept on read.
_DTYPES: dict[tuple[int, int], np.dtype] = {
    (MAGIC, VERSION_U16): np.dtype("<u2"),
    (MAGIC, VERSION_U32): np.dtype("<u4"),
    (LLAMA3_MAGIC, 7): np.dtype("<u4"),
}


@dataclass(frozen=True)
class ShardHeader:
    """What a shard's header says: format version, token dtype and token count."""

    magic: int
    version: int
    n_tokens: int
    dtype: np.dtype


def token_dtype(n_vocab: int) -> np.dtype:
    """The narrowest token dtype llm.c's format allows for a vocabulary of `n_vocab` ids."""
    if n_vocab <= 0:
        raise UserError(f"n_vocab={n_vocab} must be positive")
    if n_vocab <= 2**16:
        return np.dtype("<u2")
    if n_vocab <= 2**32:
        return np.dtype("<u4")
    raise UserError(f"n_vocab={n_vocab} does not fit in uint32 tokens")


def make_header(n_tokens: int, *, dtype: np.dtype) -> np.ndarray:
    """The 256 × int32 header for `n_tokens` tokens of `dtype` (uint16 → version 1, uint32 → version 2)."""
    dtype = np.dtype(dtype)
    if dtype.itemsize not in (2, 4) or dtype.kind != "u":
        raise UserError(f"dtype={dtype} is not a shard token dtype (uint16 or uint32)")
    if not 0 <= n_tokens < 2**31:
        # header[2] is an int32; llm.c's own shards stay at 100M tokens.
        raise UserError(f"n_tokens={n_tokens} does not fit in the int32 header; use smaller shards")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0] = MAGIC
    header[1] = VERSION_U16 if dtype.itemsize == 2 else VERSION_U32
    header[2] = n_tokens
    return header


def shard_bytes(tokens: np.ndarray, *, dtype: np.dtype) -> bytes:
    """The complete file contents of a shard holding `tokens` (cast to `dtype`, little-endian)."""
    dtype = np.dtype(dtype).newbyteorder("<")
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise UserError(f"tokens must be 1-D, got shape {tokens.shape}")
    if tokens.size and tokens.dtype != dtype and int(tokens.max()) > np.iinfo(dtype).max:
        raise UserError(f"token id {int(tokens.max())} does not fit in {dtype}")
    return make_header(tokens.size, dtype=dtype).tobytes() + tokens.astype(dtype, copy=False).tobytes()


def write_shard(path: str | Path, tokens: np.ndarray, *, dtype: np.dtype) -> None:
    """Write a shard atomically: a crash leaves the old file or none, never a partial `.bin`."""
    atomic_write_bytes(path, shard_bytes(tokens, dtype=dtype))


def read_header(path: str | Path) -> ShardHeader:
    """Read and check a shard's header: magic, version, and that the file holds exactly that many tokens."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(HEADER_BYTES)
    if len(raw) < HEADER_BYTES:
        raise UserError(f"{path}: {len(raw)} bytes is too short for a shard header ({HEADER_BYTES} bytes)")
    header = np.frombuffer(raw, dtype="<i4")
    magic, version, n_tokens = (int(v) for v in header[:3])
    dtype = _DTYPES.get((magic, version))
    if dtype is None:
        if magic not in (MAGIC, LLAMA3_MAGIC):
            raise UserError(f"{path}: magic {magic} is not a token shard's ({MAGIC})")
        raise UserError(f"{path}: unsupported shard version {version} for magic {magic}")
    expected = HEADER_BYTES + n_tokens * dtype.itemsize
    size = path.stat().st_size
    if size != expected:
        raise UserError(f"{path}: header says {n_tokens} tokens ({expected} bytes) but the file has {size} bytes")
    return ShardHeader(magic=magic, version=version, n_tokens=n_tokens, dtype=dtype)


def read_shard(path: str | Path, *, mmap: bool = True) -> np.ndarray:
    """The tokens of a shard: a read-only memory map (default) or an in-memory copy."""
    header = read_header(path)
    if header.n_tokens == 0:
        return np.zeros(0, dtype=header.dtype)
    if mmap:
        return np.memmap(path, dtype=header.dtype, mode="r", offset=HEADER_BYTES, shape=(header.n_tokens,))
    with open(path, "rb") as f:
        f.seek(HEADER_BYTES)
        return np.frombuffer(f.read(), dtype=header.dtype)
