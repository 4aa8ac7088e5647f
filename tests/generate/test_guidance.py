"""Classifier-free guidance: the formula, the engine against the no-cache reference and against transformers'
generate(guidance_scale=..., negative_prompt_ids=...), finished rows dropped with their negative contexts,
and the options refused in one line."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import sharp_model
from test_engine import SAMPLING, prompts_of
from test_hf_generate import hf_twin

from gpt2.errors import UserError
from gpt2.generate import SampleConfig, generate
from gpt2.generate.reference import reference_generate
from gpt2.generate.sampling import apply_guidance


def test_apply_guidance_by_hand() -> None:
    c = torch.tensor([[2.0, 0.0, -1.0]])
    u = torch.tensor([[0.0, 2.0, -1.0]])
    lc, lu = torch.log_softmax(c, -1), torch.log_softmax(u, -1)
    assert torch.allclose(apply_guidance(c, u, 1.0), lc)  # scale 1: the prompt's own log-probabilities
    assert torch.allclose(apply_guidance(c, u, 0.0), lu)  # scale 0: the negative context's
    g = apply_guidance(c, u, 3.0)
    assert torch.allclose(g, lu + 3.0 * (lc - lu))
    # token 0, likelier after the prompt than after the negative, gains; token 1 loses; the ranking sharpens
    assert g[0, 0] - g[0, 1] > lc[0, 0] - lc[0, 1]
    with pytest.raises(UserError, match="guidance_scale"):
        apply_guidance(c, u, float("nan"))


@pytest.mark.parametrize("mode", ["greedy", "sampling"])
@pytest.mark.parametrize("negative", ["ids", "last-token"])
def test_engine_equals_reference(model, mode: str, negative: str) -> None:
    opts = dict(temperature=0) if mode == "greedy" else dict(seed=7, num_samples=2, **SAMPLING)
    neg = prompts_of([4], model.config.vocab_size, seed=9)[0] if negative == "ids" else None
    prompts = prompts_of([3, 12, 1], model.config.vocab_size, seed=2)
    out = generate(model, None, prompts, max_new_tokens=24, stop_at_eot=False, guidance_scale=2.5,
                   negative_prompt=neg, pack=False, **opts)
    plain = generate(model, None, prompts, max_new_tokens=24, stop_at_eot=False, pack=False, **opts)
    for g in out:
        ref = reference_generate(model, prompts[g.prompt_index], max_new_tokens=24, stop_at_eot=False,
                                 guidance_scale=2.5, negative_prompt=neg, sample_index=g.sample_index, **opts)
        assert g.tokens == ref, (g.prompt_index, g.sample_index)
    assert [g.tokens for g in out] != [g.tokens for g in plain]  # guidance changed the text
    # each prompt alone gives what it gave in the batch (its negative context rides in the same batch)
    alone = generate(model, None, prompts[1:2], max_new_tokens=24, stop_at_eot=False, guidance_scale=2.5,
                     negative_prompt=neg, pack=False, **opts)
    assert [g.tokens for g in alone] == [g.tokens for g in out if g.prompt_index == 1]


def test_scale_one_is_plain_generation(model) -> None:
    prompts = prompts_of([5, 9], model.config.vocab_size)
    a = generate(model, None, prompts, max_new_tokens=20, seed=3, stop_at_eot=False, **SAMPLING)
    b = generate(model, None, prompts, max_new_tokens=20, seed=3, stop_at_eot=False, guidance_scale=1.0, **SAMPLING)
    assert [g.tokens for g in a] == [g.tokens for g in b]


def test_rows_that_finish_early_leave_with_their_negative_context(model) -> None:
    """One row's 4th token is made the end-of-text id, so that row leaves the batch early: the rows left, and
    their negative contexts, must still give the reference's tokens."""
    prompts = prompts_of([2, 7, 4, 11], model.config.vocab_size, seed=5)
    kw = dict(max_new_tokens=30, temperature=0, guidance_scale=1.8, negative_prompt=[1, 2, 3])
    free = generate(model, None, prompts, stop_at_eot=False, pack=False, **kw)
    m = copy.deepcopy(model)
    m.config.eos_token_id = free[1].tokens[3]
    out = generate(m, None, prompts, pack=False, **kw)
    assert out[1].finish_reason == "eot" and out[1].completion_tokens <= 4
    assert any(g.finish_reason == "length" for g in out)  # others went on after it left
    assert [g.tokens for g in out] == [reference_generate(m, p, **kw) for p in prompts]


@torch.inference_mode()
def hf_guided(hf, prompt: list[int], negative: list[int] | None, scale: float, new: int) -> list[int]:
    neg = None if negative is None else torch.tensor([negative])
    out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                      max_new_tokens=new, do_sample=False, guidance_scale=scale, negative_prompt_ids=neg)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("negative", [[5, 9, 2], None], ids=["negative-prompt", "last-token"])
def test_greedy_guidance_matches_transformers(negative) -> None:
    model = sharp_model(512)
    hf = hf_twin(model)
    for prompt in prompts_of([6, 13], 512, seed=3):
        ours = generate(model, None, [prompt], max_new_tokens=32, temperature=0, stop_at_eot=False,
                        guidance_scale=2.0, negative_prompt=negative)[0].tokens
        assert ours == hf_guided(hf, prompt, negative, 2.0, 32)
        assert ours != generate(model, None, [prompt], max_new_tokens=32, temperature=0, stop_at_eot=False)[0].tokens


def test_bad_guidance_options(model, tok) -> None:
    with pytest.raises(UserError, match="guidance_scale must be a finite number >= 0"):
        SampleConfig(guidance_scale=-1.0)
    with pytest.raises(UserError, match="negative_prompt is read only with classifier-free guidance"):
        SampleConfig(negative_prompt="x")
    with pytest.raises(UserError, match="negative prompt: .*context"):
        generate(model, tok, ["hi"], max_new_tokens=8, guidance_scale=2.0,
                 negative_prompt=list(range(1, model.config.n_positions)), temperature=0)
