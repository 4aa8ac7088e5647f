"""Fixtures for the export tests: a checkpoint trained here with its own BPE (the tiny recipe), GPT-2's
vocabulary in the test cache, and llama.cpp (llama-cpp-python) when it is installed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Text the tiny BPE is trained on: Shakespeare plus the scripts the tokenization test throws at it.
EXTRA = ("中文的文本，汉字和标点。日本語のテキスト。 Emoji 🙂🎉 and naïve café. <|endoftext|> is text here.\n\n") * 20


@pytest.fixture(scope="session")
def trained_ckpt(tmp_path_factory, shared_data) -> Path:
    """`gpt2 train tiny-test` on a slice of Tiny Shakespeare (+ a little Chinese and emoji): its own 300-token BPE."""
    from gpt2.config import load_config
    from gpt2.train.loop import train

    root = tmp_path_factory.mktemp("trained")
    corpus = root / "corpus.txt"
    corpus.write_text((shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:60_000] + EXTRA,
                      encoding="utf-8")
    cfg = load_config("tiny-test", [f"train.out_dir={root / 'run'}", f"data.source={corpus}", "data.delimiter=blank",
                                    "data.val_fraction=0.1", "data.workers=1",
                                    "train.threads=1", "train.max_steps=12", "checkpoint.interval=12",
                                    "eval.interval=12"])
    result = train(cfg, progress=False)
    assert result.last_checkpoint is not None
    return result.last_checkpoint


@pytest.fixture(scope="session")
def gpt2_vocab(shared_data) -> None:
    """GPT-2's encoder.json / vocab.bpe in the test cache, where load_tokenizer("gpt2") finds them offline."""
    dest = Path(os.environ["GPT2_CACHE"]) / "tokenizers" / "gpt2"
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("encoder.json", "vocab.bpe", "gpt2.tiktoken"):
        if not (dest / name).exists():
            shutil.copy(shared_data / "gpt2" / name, dest / name)


@pytest.fixture(scope="session")
def llama_cpp():
    """llama-cpp-python (built from its sdist by `pip install '.[llama]'`); skip when it is not installed."""
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install '.[llama]')")

