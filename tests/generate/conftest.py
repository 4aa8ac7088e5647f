"""Fixtures for the generation tests: a tiny trained tokenizer, a tiny model with sharpened random weights,
and both saved as a checkpoint directory for the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gpt2 import GPT2Config, GPT2LMHeadModel

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 8,
    "Once upon a time there was a little model that wanted to write stories. " * 6,
    "héllo wörld, naïve café, 日本語のテキスト, emoji 🙂 and more text. " * 4,
]


@pytest.fixture(scope="session")
def tok():
    from gpt2.tokenizer import train_bpe

    return train_bpe(CORPUS, vocab_size=320, special_tokens=["<|endoftext|>"], progress=False)


def sharp_model(vocab_size: int, *, seed: int = 0, **overrides) -> GPT2LMHeadModel:
    """Random weights scaled up ×4, so the next-token distributions are peaked and greedy text varies.

    At GPT-2's init (std 0.02) the logits of a random model are nearly flat, so greedy decoding repeats
    one token and near-ties make token-for-token comparisons brittle; sharper weights avoid both.
    """
    torch.manual_seed(seed)
    eot = vocab_size - 1
    config = GPT2Config.from_preset("tiny", vocab_size=vocab_size, bos_token_id=eot, eos_token_id=eot, **overrides)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    return model


@pytest.fixture(scope="session")
def model(tok) -> GPT2LMHeadModel:
    return sharp_model(tok.n_vocab)


@pytest.fixture(scope="session")
def ckpt(tok, model, tmp_path_factory) -> Path:
    """A checkpoint directory: config.json + model.safetensors + the tokenizer's files."""
    d = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(d)
    tok.save(d)
    return d
