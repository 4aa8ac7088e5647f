"""GPT-2 with a sequence-classification head: HF's GPT2ForSequenceClassification, in plain PyTorch.

    python -c "from gpt2.model.classify import GPT2ForSequenceClassification as C; from gpt2 import GPT2Config; \
print(C(GPT2Config.from_preset('tiny', id2label={0: 'ham', 1: 'spam'}, pad_token_id=511)))"

The body is the same GPT2Model the language model uses (`transformer.*`), and the head is HF's
`score = nn.Linear(n_embd, num_labels, bias=False)` applied to the hidden state of each row's last real
token: the only position that, under causal attention, has seen the whole text. Names and the
directory format are HF's, so `transformers.AutoModelForSequenceClassification.from_pretrained(dir)`
loads what `save_pretrained` writes, and the other way round.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from gpt2.errors import UserError
from gpt2.model.config import GPT2Config
from gpt2.model.gpt2 import GPT2LMHeadModel, GPT2Model, GPT2Sizes, init_gpt2_weights


class ClassifierOutput(NamedTuple):
    """What GPT2ForSequenceClassification.forward returns: unpack as `logits, loss = model(x, labels=y)`."""

    logits: torch.Tensor  # (B, num_labels), at each row's last non-padding token
    loss: torch.Tensor | None  # mean cross-entropy over the batch, when labels were given


def last_token_index(
    input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None, pad_token_id: int | None
) -> torch.Tensor:
    """(B,) index of each row's last real token, for right-padded rows.

    From attention_mask when given (its last 1); else, as HF does, the last position whose id is not
    pad_token_id; a row with no such position (or no pad id at all) uses the last position.
    """
    B, T = input_ids.shape
    if attention_mask is not None:
        real = attention_mask.to(torch.bool)  # (B, T)
    elif pad_token_id is not None:
        real = input_ids != pad_token_id  # (B, T)
    else:
        return torch.full((B,), T - 1, dtype=torch.long, device=input_ids.device)
    positions = torch.arange(T, device=input_ids.device)  # (T,)
    last = torch.where(real, positions, -1).amax(dim=-1)  # (B,), -1 where a row has no real token
    return torch.where(last >= 0, last, T - 1)


class GPT2ForSequenceClassification(GPT2Sizes, nn.Module):
    """GPT2Model plus a linear score head on the last real token: (B, T) ids → (B, num_labels) logits."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        if config.num_labels < 2:
            raise UserError(f"a sequence classifier needs at least 2 labels in config.id2label, got "
                            f"{config.id2label or 'none'}")
        self.config = config
        self.transformer = GPT2Model(config)
        self.score = nn.Linear(config.n_embd, config.num_labels, bias=False)
        if self.score.weight.is_meta:
            return  # built on the meta device to be loaded into
        init_gpt2_weights(self, config)  # the score head, a bias-free nn.Linear, gets N(0, initializer_range)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        every_position: bool = False,
    ) -> ClassifierOutput:
        """input_ids (B, T), right-padded; attention_mask (B, T) 1 = real token, 0 = padding; labels (B,).

        every_position=True returns the head at every position instead, logits (B, T, num_labels) and no
        loss: what finetune.every_token_weight trains on (position t has seen tokens 0..t)."""
        B = input_ids.shape[0]
        x = self.transformer(input_ids, attention_mask=attention_mask)  # (B, T, C)
        if every_position:
            return ClassifierOutput(self.score(x), None)  # (B, T, num_labels)
        last = last_token_index(input_ids, attention_mask=attention_mask, pad_token_id=self.config.pad_token_id)
        pooled = x[torch.arange(B, device=x.device), last]  # (B, C)
        logits = self.score(pooled)  # (B, num_labels)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float(), labels.to(logits.device))
        return ClassifierOutput(logits, loss)

    # ------------------------------------------------------------------------------------------- I/O
    @classmethod
    def from_lm(
        cls, lm: GPT2LMHeadModel, *, id2label: dict[int, str], pad_token_id: int | None,
        max_length: int | None = None, truncation_side: str | None = None,
    ) -> GPT2ForSequenceClassification:
        """A classifier whose body is a copy of `lm`'s and whose score head is fresh (N(0, initializer_range)).

        The head is drawn from the global RNG (seed it for a reproducible start); `lm` is left unchanged."""
        config = dataclasses.replace(lm.config, id2label=dict(id2label), label2id={}, pad_token_id=pad_token_id,
                                     max_length=max_length, truncation_side=truncation_side,  # type: ignore[arg-type]
                                     extra=dict(lm.config.extra))
        with torch.device("meta"):
            model = cls(config)
        body = {k: v.detach().clone() for k, v in lm.transformer.state_dict().items()}
        model.transformer.load_state_dict(body, assign=True)
        model.score = nn.Linear(config.n_embd, config.num_labels, bias=False, device=lm.device,
                                dtype=lm.transformer.wte.weight.dtype)
        nn.init.normal_(model.score.weight, mean=0.0, std=config.initializer_range)
        return model.train(lm.training)

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path,
        *,
        revision: str | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        **config_overrides: Any,
    ) -> GPT2ForSequenceClassification:
        """Load a GPT2ForSequenceClassification directory (ours or HF's) or hub id; a language model is refused."""
        from gpt2.model.config import CLASSIFIER_ARCHITECTURE
        from gpt2.model.hf import (
            apply_overrides,
            load_state,
            read_config,
            resolve_source,
            wrong_kind_error,
        )

        directory = resolve_source(source, revision=revision)
        config, architecture = read_config(directory)
        if architecture != CLASSIFIER_ARCHITECTURE:
            raise wrong_kind_error(directory, architecture)
        problem = config.extra.get("problem_type")
        if problem not in (None, "single_label_classification"):
            raise UserError(f"{directory}: problem_type={problem!r} is not supported; only single-label "
                            "classification (softmax over id2label) is implemented")
        apply_overrides(config, config_overrides)
        model = load_state(directory, config, cls, head="score", device=device, dtype=dtype)
        assert isinstance(model, GPT2ForSequenceClassification)
        return model

    def save_pretrained(self, directory: str | Path, *, safe_serialization: bool = True) -> None:
        """Write config.json + model.safetensors that transformers' AutoModelForSequenceClassification loads."""
        from gpt2.model.hf import save_pretrained

        save_pretrained(self, directory, safe_serialization=safe_serialization)
