"""Fixtures for the data tests: GPT-2's tokenizer from ../shared/data behind a private GPT2_CACHE."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def gpt2_cache(shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh $GPT2_CACHE holding GPT-2's vocabulary files (so load_tokenizer("gpt2") never downloads)."""
    cache = tmp_path / "cache"
    tok_dir = cache / "tokenizers" / "gpt2"
    tok_dir.mkdir(parents=True)
    for name in ("encoder.json", "vocab.bpe", "gpt2.tiktoken"):
        (tok_dir / name).symlink_to(shared_data / "gpt2" / name)
    monkeypatch.setenv("GPT2_CACHE", str(cache))
    return cache


@pytest.fixture
def gpt2_tok(gpt2_cache: Path):
    from gpt2.tokenizer import load_tokenizer

    return load_tokenizer("gpt2")


@pytest.fixture(scope="session")
def tiktoken_gpt2(shared_data: Path):
    """Plain tiktoken with GPT-2's ranks: the reference the shards are checked against."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(shared_data / "gpt2" / "gpt2.tiktoken"))
    pat = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    return tiktoken.Encoding("gpt2-ref", pat_str=pat, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257)


@pytest.fixture
def cli_env(gpt2_cache: Path) -> dict[str, str]:
    """Environment for `python -m gpt2 ...` subprocesses: this checkout's src first, the test's cache."""
    env = dict(os.environ)
    env["GPT2_CACHE"] = str(gpt2_cache)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    env.pop("GPT2_DEBUG", None)
    return env
