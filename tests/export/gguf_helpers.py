"""Helpers for the GGUF tests: llama.cpp opened the same way everywhere."""

from __future__ import annotations

from pathlib import Path


def llama(path: Path, *, n_ctx: int = 0, logits_all: bool = False):
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=n_ctx, n_threads=2, logits_all=logits_all, verbose=False, seed=0)
