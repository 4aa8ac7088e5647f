"""Fixtures for the fine-tuning tests: a tiny tokenizer, and a tiny random sequence classifier and a tiny
language model saved as checkpoint directories (config.json + model.safetensors + the tokenizer's files)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from finetune_helpers import save_model_dir

from gpt2 import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

CORPUS = [
    "Free entry! Win a prize now, call 0800 to claim your cash reward. " * 6,
    "Are we still meeting at six? I will bring the books and some tea. " * 6,
    "héllo wörld, naïve café, 日本語のテキスト, emoji 🙂 and more text. " * 3,
]
LABELS = {0: "ham", 1: "spam"}


@pytest.fixture(scope="session")
def tok():
    from gpt2.tokenizer import train_bpe

    return train_bpe(CORPUS, vocab_size=320, special_tokens=["<|endoftext|>"], progress=False)


@pytest.fixture(scope="session")
def classifier(tok) -> GPT2ForSequenceClassification:
    """Random weights ×4, so the probabilities differ clearly from text to text (at init they sit near 0.5)."""
    torch.manual_seed(0)
    eot = tok.eot_token
    config = GPT2Config.from_preset("tiny", vocab_size=tok.n_vocab, bos_token_id=eot, eos_token_id=eot,
                                    id2label=LABELS, pad_token_id=eot, max_length=48)
    model = GPT2ForSequenceClassification(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    return model


@pytest.fixture(scope="session")
def clf_ckpt(tok, classifier, tmp_path_factory) -> Path:
    return save_model_dir(tmp_path_factory, "clf", classifier, tok)


@pytest.fixture(scope="session")
def lm_ckpt(tok, tmp_path_factory) -> Path:
    eot = tok.eot_token
    lm = GPT2LMHeadModel(GPT2Config.from_preset("tiny", vocab_size=tok.n_vocab, bos_token_id=eot, eos_token_id=eot))
    return save_model_dir(tmp_path_factory, "lm", lm, tok)
