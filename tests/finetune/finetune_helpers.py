"""Helpers for the fine-tuning tests: a model and its tokenizer saved as one checkpoint directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_model_dir(tmp_path_factory: Any, name: str, model: Any, tok: Any) -> Path:
    """config.json + model.safetensors + the tokenizer's files in a fresh temporary directory."""
    d = tmp_path_factory.mktemp(name)
    model.save_pretrained(d)
    tok.save(d)
    return d


def sms_texts(shared_data: Path) -> list[str]:
    """The messages of ../shared/data/sms_spam.tsv (label<TAB>text per line)."""
    lines = (shared_data / "sms_spam.tsv").read_text(encoding="utf-8").splitlines()
    return [line.split("\t", 1)[1] for line in lines]


def tiny_base(tmp_path_factory: Any, texts: list[str], *, vocab_size: int, n_positions: int = 64) -> Path:
    """A tiny random GPT-2 (2 layers, 32 wide) with a BPE trained on `texts`, saved as a model directory."""
    import torch

    from gpt2 import GPT2Config, GPT2LMHeadModel
    from gpt2.tokenizer import train_bpe

    tok = train_bpe(texts, vocab_size=vocab_size, special_tokens=["<|endoftext|>"], progress=False)
    torch.manual_seed(0)
    eot = tok.eot_token
    model = GPT2LMHeadModel(GPT2Config(vocab_size=tok.n_vocab, n_positions=n_positions, n_embd=32, n_layer=2,
                                       n_head=2, bos_token_id=eot, eos_token_id=eot))
    return save_model_dir(tmp_path_factory, "base", model, tok)
