"""The models and padded batches of the loss-normalisation test, built the same in every process."""

from __future__ import annotations

import torch

from gpt2 import GPT2Config, GPT2LMHeadModel
from gpt2.config import load_config
from gpt2.train.task import LanguageModelTask

N, T, VOCAB = 16, 24, 97


def lengths() -> list[int]:
    return torch.randint(3, T + 1, (N,), generator=torch.Generator().manual_seed(1)).tolist()


def lm_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """16 examples of 3..24 tokens, right-padded to 24; targets -100 on the padding and on a masked prefix
    (as a prompt is, in instruction tuning)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, VOCAB, (N, T), generator=g)
    y = torch.randint(0, VOCAB, (N, T), generator=g)
    for i, n in enumerate(lengths()):
        y[i, n:] = -100
        y[i, : n // 3] = -100
        x[i, n:] = 0
    return x, y


def classify_batch() -> tuple[torch.Tensor, ...]:
    """16 texts of 3..24 tokens right-padded to 24 (attention mask 0 on the padding), 3 classes with class
    weights, so examples also weigh differently."""
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, VOCAB - 1, (N, T), generator=g)
    mask = torch.zeros(N, T, dtype=torch.long)
    for i, n in enumerate(lengths()):
        mask[i, :n] = 1
        x[i, n:] = VOCAB - 1  # the pad id
    labels = torch.randint(0, 3, (N,), generator=g)
    weights = torch.tensor([0.5, 1.0, 2.5])[labels]
    return x, mask, labels, weights


def build(task: str) -> tuple[object, torch.nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=T, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0)
    if task == "lm":
        return LanguageModelTask(load_config(None, [])), GPT2LMHeadModel(config), lm_batch()
    if task in ("classify", "classify-every"):
        import dataclasses

        from gpt2.finetune.classify_task import ClassificationTask
        from gpt2.model.classify import GPT2ForSequenceClassification

        config = dataclasses.replace(config, id2label={0: "a", 1: "b", 2: "c"}, pad_token_id=VOCAB - 1)
        every = ["finetune.every_token_weight=0.5"] if task == "classify-every" else []  # + the per-token loss
        cfg = load_config(None, ["model.init_from=unused", "finetune.train_file=unused", *every])
        return ClassificationTask(cfg), GPT2ForSequenceClassification(config), classify_batch()
    raise ValueError(task)


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
