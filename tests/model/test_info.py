"""flops_per_token against an independent count: torch's FlopCounterMode on a real forward and backward."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from gpt2 import GPT2Config, GPT2LMHeadModel
from gpt2.model.info import flops_per_token

# vocab_size a multiple of pad_vocab_size_multiple: the LM head's matmul is exactly vocab_size wide, as
# the formula counts it (a padded head multiplies padded_vocab_size columns; see the padded test below).
CONFIG = GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=32, vocab_size=512, pad_vocab_size_multiple=1)


def _counted(model: GPT2LMHeadModel, ids: torch.Tensor, *, backward: bool) -> tuple[int, int]:
    """(forward FLOPs, forward + backward FLOPs) that FlopCounterMode sees: matmuls and SDPA, nothing else."""
    with FlopCounterMode(display=False) as fwd:
        model(ids)
    if not backward:
        return fwd.get_total_flops(), 0
    with FlopCounterMode(display=False) as both:
        model(ids).logits.float().sum().backward()
    return fwd.get_total_flops(), both.get_total_flops()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_flops_per_token_equals_flop_counter(attn: str) -> None:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**{**vars(CONFIG), "attn_implementation": attn}))
    B, T = 2, CONFIG.n_positions
    ids = torch.randint(0, CONFIG.vocab_size, (B, T))
    forward, training = _counted(model, ids, backward=True)
    # The formula counts attention as full T×T matmuls (4·T·C per token and layer: q·kᵀ and att·v), as
    # the counter does for SDPA and for the eager path's two matmuls: the causal mask saves no FLOPs in
    # either count. Embedding lookups, LayerNorm, GELU and softmax are not matmuls and neither counts them.
    assert forward == B * T * flops_per_token(CONFIG, T, training=False)
    # Backward is two matmuls per forward matmul (input and weight gradients; SDPA's backward is twice
    # its forward), so training is exactly 3× forward.
    assert training == B * T * flops_per_token(CONFIG, T, training=True)
    assert flops_per_token(CONFIG, T, training=True) == 3 * flops_per_token(CONFIG, T, training=False)


def test_flops_per_token_grows_with_context_as_the_counter_does() -> None:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(CONFIG)
    for T in (8, 32):
        forward, _ = _counted(model, torch.randint(0, CONFIG.vocab_size, (1, T)), backward=False)
        assert forward == T * flops_per_token(CONFIG, T, training=False), T


def test_padded_vocabulary_is_the_one_documented_difference() -> None:
    # With a padded head (GPT-2's 50257 → 50304), the model multiplies padded_vocab_size columns while
    # flops_per_token counts the useful vocab_size ones, as MFU conventions (nanoGPT, PaLM) do.
    cfg = GPT2Config(**{**vars(CONFIG), "vocab_size": 500, "pad_vocab_size_multiple": 128})
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg)
    T = 16
    forward, _ = _counted(model, torch.randint(0, 500, (1, T)), backward=False)
    extra = 2 * (cfg.padded_vocab_size - cfg.vocab_size) * cfg.n_embd * T
    assert forward == T * flops_per_token(cfg, T, training=False) + extra
