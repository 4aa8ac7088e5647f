"""Greedy decoding: our KV-cache engine == our no-cache reference == transformers' generate(do_sample=False).

64 new tokens (32 at 124M) for several prompts, batch 1 and a left-padded batch of 4, on random weights scaled up so
the text varies (see conftest.sharp_model) at the tiny size and at GPT-2 124M.
"""

from __future__ import annotations

import pytest
import torch
import transformers  # a dev dependency: a broken install fails here, it does not skip the suite
from conftest import sharp_model

from gpt2 import GPT2Config, GPT2LMHeadModel
from gpt2.generate import generate
from gpt2.generate.reference import reference_generate
from gpt2.model.hf import to_hf_state_dict

NEW = 64


def hf_twin(model: GPT2LMHeadModel):
    d = model.config.to_hf_dict()
    d.pop("pad_vocab_size_multiple")
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**d)).eval()
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(model), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    hf.tie_weights()
    # Run exactly NEW tokens: no end-of-text stop (ours: stop_at_eot=False); pad id for the padded batch.
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    return hf


@torch.inference_mode()
def hf_greedy(hf, prompts: list[list[int]], new: int = NEW) -> list[list[int]]:
    """Left-pad the prompts into one batch with an attention mask; HF derives positions from the mask."""
    P = max(map(len, prompts))
    ids = torch.zeros(len(prompts), P, dtype=torch.long)
    mask = torch.zeros(len(prompts), P, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, P - len(p) :] = torch.tensor(p)
        mask[i, P - len(p) :] = 1
    out = hf.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False)
    return out[:, P:].tolist()


def check(model: GPT2LMHeadModel, lengths: list[int], *, reference_for: int, new: int = NEW) -> None:
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, model.config.vocab_size - 1, (n,), generator=g).tolist() for n in lengths]
    hf = hf_twin(model)
    ours_batch = [x.tokens for x in generate(model, None, prompts, max_new_tokens=new, temperature=0,
                                             stop_at_eot=False)]
    hf_batch = hf_greedy(hf, prompts, new)
    assert ours_batch == hf_batch
    for i, p in enumerate(prompts):
        ours_alone = generate(model, None, [p], max_new_tokens=new, temperature=0, stop_at_eot=False)[0].tokens
        assert ours_alone == hf_greedy(hf, [p], new)[0] == ours_batch[i], f"prompt {i}"
        if i < reference_for:
            assert reference_generate(model, p, max_new_tokens=new, temperature=0, stop_at_eot=False) == ours_alone
    assert all(len(set(t)) > 10 for t in ours_batch)  # varied text, not one repeated token


def test_greedy_matches_hf_tiny() -> None:
    check(sharp_model(512), [5, 17, 1, 30], reference_for=4)


@pytest.mark.slow
def test_greedy_matches_hf_124m() -> None:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config.from_preset("gpt2", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval()
    # ×2 is enough for varied text at 124M; ×4 makes 12 layers so ill-conditioned (logits ~±50) that
    # fp32 rounding alone flips a greedy pick between a padded batch and a lone prompt (measured).
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    # 32 new tokens at this size: the same code paths as 64 at half the CPU time (the tiny test runs 64).
    check(model, [5, 17, 1, 30], reference_for=1, new=32)
