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
