"""Helpers for the evaluation tests: small random-weights models."""

from __future__ import annotations

import torch

from gpt2 import GPT2Config, GPT2LMHeadModel


def random_model(*, n_positions: int = 256, vocab_size: int = 50257, seed: int = 0, scale: float = 4.0,
                 dtype: torch.dtype = torch.float32) -> GPT2LMHeadModel:
    """A 2-layer, 64-wide GPT-2 with random weights scaled up, so its predictions are far from uniform
    (at GPT-2's init scale every ending would score about the same)."""
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=n_positions, vocab_size=vocab_size)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model.to(dtype)
