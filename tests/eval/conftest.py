"""Fixtures for the evaluation tests: GPT-2's tokenizer (from ../shared/data) and small random-weights models."""

from __future__ import annotations

from pathlib import Path

import pytest
from eval_helpers import random_model


@pytest.fixture(scope="session")
def gpt2_tok(shared_data: Path):
    from gpt2.tokenizer import load_tokenizer

    return load_tokenizer(shared_data / "gpt2")


@pytest.fixture
def checkpoint(tmp_path: Path, gpt2_tok) -> Path:
    """A saved random-weights checkpoint directory with GPT-2's tokenizer files."""
    from gpt2.model.hf import save_pretrained
    from gpt2.tokenizer.io import save_tokenizer

    d = tmp_path / "ckpt"
    save_pretrained(random_model(), d)
    save_tokenizer(gpt2_tok, d)
    return d
