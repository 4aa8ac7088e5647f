"""Fixtures for training tests: a small corpus file and a private cache (tokenizer and shards reused)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, shared_data) -> Path:
    """The first ~60 KB of Tiny Shakespeare, split into documents on blank lines."""
    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:60_000]
    path = tmp_path_factory.mktemp("corpus") / "shakespeare-60k.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def train_cache(tmp_path_factory) -> Path:
    """One GPT2_CACHE for the whole session, so the tokenizer and shards are built once."""
    return tmp_path_factory.mktemp("gpt2-cache")


@pytest.fixture
def env(train_cache) -> dict[str, str]:
    e = dict(os.environ)
    e.update(GPT2_CACHE=str(train_cache), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return e
