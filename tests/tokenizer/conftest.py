"""Fixtures for the tokenizer tests: GPT-2's vocabulary from ../shared/data, plain tiktoken as the reference,
and a small tokenizer trained in-process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# GPT-2's split pattern exactly as tiktoken_ext/openai_public.py writes it (r50k_pat_str), copied here
# rather than imported from our code, so the reference does not lean on what it checks.
TIKTOKEN_GPT2_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

SMALL_CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs!\n",
    "Tokenizers split text into tokens, and tokens into ids: 12345 67890.\r\n",
    "café naïve résumé — “quotes” and emoji 👍🏽🎉 and CJK 你好，世界！我们的世界很大。\n",
    "  indented\tline with tabs and    spaces   \n\n\nand trailing blank lines \n",
    "aaaaaaaa bbbbbbbb abababab aaaa aa a",
] * 5


@pytest.fixture(scope="session")
def gpt2_dir(shared_data: Path) -> Path:
    return shared_data / "gpt2"


@pytest.fixture(scope="session")
def gpt2_tok(gpt2_dir: Path):
    from gpt2.tokenizer import load_tokenizer

    return load_tokenizer(gpt2_dir / "gpt2.tiktoken")


@pytest.fixture(scope="session")
def tiktoken_gpt2(gpt2_dir: Path):
    """Plain tiktoken with GPT-2's ranks: the encoding tiktoken.get_encoding("gpt2") builds."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(gpt2_dir / "gpt2.tiktoken"))
    return tiktoken.Encoding("gpt2-ref", pat_str=TIKTOKEN_GPT2_PAT, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257)


@pytest.fixture(scope="session")
def small_tok():
    """A 400-id tokenizer trained on SMALL_CORPUS, with one extra special token."""
    from gpt2.tokenizer import train_bpe

    return train_bpe(SMALL_CORPUS, vocab_size=400, special_tokens=["<|endoftext|>", "<|pad|>"], min_frequency=2,
                     name="small")


@pytest.fixture
def gpt2_cache(gpt2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private $GPT2_CACHE holding GPT-2's files, so from_pretrained("gpt2") never downloads."""
    cache = tmp_path / "cache"
    tok_dir = cache / "tokenizers" / "gpt2"
    tok_dir.mkdir(parents=True)
    for name in ("encoder.json", "vocab.bpe", "gpt2.tiktoken"):
        (tok_dir / name).symlink_to(gpt2_dir / name)
    monkeypatch.setenv("GPT2_CACHE", str(cache))
    return cache


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment for `python -m gpt2 ...` subprocesses: this checkout's src first, an empty private cache."""
    env = dict(os.environ)
    env["GPT2_CACHE"] = str(tmp_path / "cli-cache")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    env["HF_HUB_OFFLINE"] = "1"  # and pip finds no index: nothing here may reach the network
    env["PIP_NO_INDEX"] = "1"
    env.pop("GPT2_DEBUG", None)
    return env
