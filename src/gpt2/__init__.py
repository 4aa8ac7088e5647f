"""gpt2-scratch: GPT-2 from scratch in plain PyTorch.

    from gpt2 import GPT2Config, GPT2LMHeadModel, Tokenizer
    model = GPT2LMHeadModel.from_pretrained("path/to/hf-dir")

The public API is the handful of names below; everything else is reachable through the sub-packages.
Names are imported lazily so `import gpt2` stays cheap and has no side effects.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "GPT2Config": "gpt2.model.config",
    "GPT2ForSequenceClassification": "gpt2.model.classify",
    "GPT2LMHeadModel": "gpt2.model.gpt2",
    "GPT2Model": "gpt2.model.gpt2",
    "KVCache": "gpt2.model.gpt2",
    "Tokenizer": "gpt2.tokenizer",
    "generate": "gpt2.generate",
}

__all__ = [*_LAZY, "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from gpt2 import generate
    from gpt2.model.classify import GPT2ForSequenceClassification
    from gpt2.model.config import GPT2Config
    from gpt2.model.gpt2 import GPT2LMHeadModel, GPT2Model, KVCache
    from gpt2.tokenizer import Tokenizer


def __getattr__(name: str) -> Any:
    if name == "generate":
        # The sub-package itself, which is callable: importing it binds gpt2.generate to the module, so
        # returning its function here would make the first access differ from every later one.
        return importlib.import_module("gpt2.generate")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gpt2' has no attribute {name!r}")
