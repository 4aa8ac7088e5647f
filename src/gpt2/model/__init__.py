"""The GPT-2 model: config, modules, HF weight conversion, size summaries.

    python -c "from gpt2.model import GPT2Config; print(GPT2Config.from_preset('gpt2-xl'))"
"""

from gpt2.model.classify import ClassifierOutput, GPT2ForSequenceClassification
from gpt2.model.config import PRESETS, GPT2Config
from gpt2.model.gpt2 import GPT2MLP, GPT2Attention, GPT2Block, GPT2LMHeadModel, GPT2Model, KVCache, LMOutput

__all__ = [
    "GPT2MLP",
    "PRESETS",
    "ClassifierOutput",
    "GPT2Attention",
    "GPT2Block",
    "GPT2Config",
    "GPT2ForSequenceClassification",
    "GPT2LMHeadModel",
    "GPT2Model",
    "KVCache",
    "LMOutput",
]
