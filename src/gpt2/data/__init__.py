"""Training data: any corpus into llm.c token shards, and a distributed, resumable loader over them.

    gpt2 data prepare --source ../shared/data/imdb_train.jsonl --field text --tokenizer gpt2 --out data/imdb
    python -c "from gpt2.data import TokenLoader; print(next(iter(TokenLoader('data/imdb', batch_size=2, seq_len=8))))"

gpt2.sources finds documents (files, globs, hf: datasets, named corpora; it sits below the tokenizer,
whose trainer reads it too); prepare.py tokenizes them on
worker processes into shards (resumable, deterministic); shards.py is the .bin format; loader.py reads
the shards back as (B, T) batches for one rank of many. Names are imported lazily: `import gpt2.data`
loads nothing heavy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "prepare": "gpt2.data.prepare",
    "PrepareResult": "gpt2.data.prepare",
    "data_info": "gpt2.data.prepare",
    "Source": "gpt2.sources",
    "resolve_source": "gpt2.sources",
    "CORPORA": "gpt2.sources",
    "read_header": "gpt2.data.shards",
    "read_shard": "gpt2.data.shards",
    "write_shard": "gpt2.data.shards",
    "TokenLoader": "gpt2.data.loader",
    "TokenStream": "gpt2.data.loader",
}

__all__ = ["CORPORA", "PrepareResult", "Source", "TokenLoader", "TokenStream", "data_info", "prepare", "read_header",
           "read_shard", "resolve_source", "write_shard"]

if TYPE_CHECKING:  # pragma: no cover
    from gpt2.data.loader import TokenLoader, TokenStream
    from gpt2.data.prepare import PrepareResult, data_info, prepare
    from gpt2.data.shards import read_header, read_shard, write_shard
    from gpt2.sources import CORPORA, Source, resolve_source


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gpt2.data' has no attribute {name!r}")
