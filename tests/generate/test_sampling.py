"""Each sampling control on its own, against hand-computed cases and against transformers' processors."""

from __future__ import annotations

import math

import pytest
import torch
import transformers.generation.logits_process as lp  # a dev dependency: fail, never skip

from gpt2.generate import sampling

INF = float("-inf")


def logits_of(*probs: float) -> torch.Tensor:
    """A (1, V) row of logits whose softmax is `probs`."""
    return torch.tensor([[math.log(p) for p in probs]])


def kept(logits: torch.Tensor) -> list[int]:
    return torch.isfinite(logits[0]).nonzero().flatten().tolist()


def test_temperature_divides() -> None:
    assert torch.equal(sampling.apply_temperature(torch.tensor([[2.0, 4.0]]), 2.0), torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        sampling.apply_temperature(torch.zeros(1, 2), 0.0)


def test_top_k_keeps_k_largest_and_ties() -> None:
    x = torch.tensor([[3.0, 2.0, 2.0, 1.0, 0.0]])
    assert torch.equal(sampling.top_k_filter(x, 1), torch.tensor([[3.0, INF, INF, INF, INF]]))
    assert torch.equal(sampling.top_k_filter(x, 2), torch.tensor([[3.0, 2.0, 2.0, INF, INF]]))  # tie kept
    assert torch.equal(sampling.top_k_filter(x, 4), torch.tensor([[3.0, 2.0, 2.0, 1.0, INF]]))
    assert torch.equal(sampling.top_k_filter(x, 99), x)
    with pytest.raises(ValueError, match="top_k"):
        sampling.top_k_filter(x, 0)


def test_top_p_keeps_smallest_set_reaching_p_with_ties() -> None:
    # probabilities 1/8, 1/2, 1/8, 1/4: sorted 1/2, 1/4, 1/8, 1/8 (the last two tied)
    x = logits_of(0.125, 0.5, 0.125, 0.25)
    assert kept(sampling.top_p_filter(x, 0.3)) == [1]  # {1/2} already reaches 0.3
    assert kept(sampling.top_p_filter(x, 0.6)) == [1, 3]  # 1/2 < 0.6, 1/2 + 1/4 >= 0.6
    # 3/4 < 0.8, so one 1/8 is needed; its tie comes along: all four (a plain sort would keep 3)
    assert kept(sampling.top_p_filter(x, 0.8)) == [0, 1, 2, 3]
    assert kept(sampling.top_p_filter(x, 1.0)) == [0, 1, 2, 3]
    # a second row is filtered on its own
    two = torch.cat([x, logits_of(0.7, 0.1, 0.1, 0.1)])
    out = sampling.top_p_filter(two, 0.6)
    assert torch.isfinite(out).tolist() == [[False, True, False, True], [True, False, False, False]]
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="top_p must be in"):
            sampling.top_p_filter(x, bad)


@pytest.mark.parametrize("p", [5e-324, 1e-300, 1e-46, 1e-8])
def test_top_p_below_float32_keeps_the_most_likely(p: float) -> None:
    """A p that float32 rounds to 0 (Schemathesis sent 5e-324 to the server, which crashed) keeps the top
    token, as any p does, and its ties."""
    x = logits_of(0.125, 0.5, 0.125, 0.25)
    assert kept(sampling.top_p_filter(x, p)) == [1]
    tied = torch.tensor([[1.0, 3.0, 3.0, 0.0], [2.0, 1.0, 0.0, 0.0]])
    assert torch.isfinite(sampling.top_p_filter(tied, p)).tolist() == [[False, True, True, False],
                                                                      [True, False, False, False]]


def test_min_p_keeps_tokens_above_fraction_of_top() -> None:
    x = logits_of(0.125, 0.5, 0.125, 0.25)
    assert kept(sampling.min_p_filter(x, 0.6)) == [1]  # floor 0.3
    assert kept(sampling.min_p_filter(x, 0.3)) == [1, 3]  # floor 0.15
    assert kept(sampling.min_p_filter(x, 0.2)) == [0, 1, 2, 3]  # floor 0.1
    assert torch.equal(sampling.min_p_filter(x, 0.0), x)


def test_repetition_penalty_divides_positive_multiplies_negative() -> None:
    x = torch.tensor([[2.0, -1.0, 0.5, -0.5]])
    present = torch.tensor([[True, True, False, False]])
    out = sampling.apply_repetition_penalty(x, present, 2.0)
    assert torch.equal(out, torch.tensor([[1.0, -2.0, 0.5, -0.5]]))
    assert torch.equal(x, torch.tensor([[2.0, -1.0, 0.5, -0.5]]))  # input untouched
    mask = sampling.presence_mask([[0, 1, 1], []], 4)
    assert mask.tolist() == [[True, True, False, False], [False] * 4]


def test_banned_ngrams() -> None:
    assert sampling.banned_ngram_tokens([1, 2, 3, 1, 2], 3) == [3]  # (1, 2, 3) would repeat
    assert sampling.banned_ngram_tokens([1, 2, 3, 1, 2], 2) == [3]  # (2, 3) would repeat
    assert sorted(sampling.banned_ngram_tokens([1, 2, 3, 1, 2], 1)) == [1, 1, 2, 2, 3]  # every seen token
    assert sampling.banned_ngram_tokens([5], 2) == []
    assert sampling.banned_ngram_tokens([1, 1, 1], 2) == [1, 1]
    assert sampling.banned_ngram_tokens([4, 5, 4], 2) == [5]
    out = sampling.no_repeat_ngram_filter(torch.zeros(2, 6), [[1, 2, 3, 1, 2], [5]], 3)
    assert kept(out[:1]) == [0, 1, 2, 4, 5] and kept(out[1:]) == list(range(6))


def test_process_logits_order_temperature_before_top_p() -> None:
    x = torch.tensor([[2.0, 1.0, 0.0]])
    # softmax([2, 1, 0]) = .665, .245, .090: top-p 0.8 keeps two; at T=0.5, softmax([4, 2, 0]) = .867, ... keeps one
    assert kept(sampling.process_logits(x, top_p=0.8)) == [0, 1]
    assert kept(sampling.process_logits(x, temperature=0.5, top_p=0.8)) == [0]
    # greedy (temperature 0) applies only the penalties: the filters never change the argmax
    assert torch.equal(sampling.process_logits(x, temperature=0, top_k=1, top_p=0.1), x)


def test_pick_tokens_greedy_and_gumbel_distribution() -> None:
    x = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    assert sampling.pick_tokens(x).tolist() == [0]
    g = torch.Generator().manual_seed(0)
    n = 20000
    noise = sampling.gumbel_noise([g] * n, 3)  # (n, 3)
    picks = sampling.pick_tokens(x.expand(n, 3), noise=noise)
    freq = torch.bincount(picks, minlength=3).float() / n
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.2]), atol=0.015), freq
    # filtered tokens are never drawn
    filtered = torch.tensor([[0.0, INF, 0.0]]).expand(n, 3)
    assert (sampling.pick_tokens(filtered, noise=noise) != 1).all()


def test_same_generator_seed_same_noise() -> None:
    a = sampling.gumbel_noise([torch.Generator().manual_seed(7)], 50)
    b = sampling.gumbel_noise([torch.Generator().manual_seed(7)], 50)
    c = sampling.gumbel_noise([torch.Generator().manual_seed(8)], 50)
    assert torch.equal(a, b) and not torch.equal(a, c)


# --------------------------------------------------------------------- against transformers' processors


def random_rows(seed: int = 0, B: int = 4, V: int = 50) -> torch.Tensor:
    return torch.randn(B, V, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.99])
def test_top_p_matches_hf_without_ties(p: float) -> None:
    x = random_rows()
    ref = lp.TopPLogitsWarper(p)(None, x.clone())
    assert torch.equal(torch.isfinite(sampling.top_p_filter(x, p)), torch.isfinite(ref))


@pytest.mark.parametrize("k", [1, 5, 49])
def test_top_k_matches_hf(k: int) -> None:
    x = random_rows(1)
    assert torch.equal(sampling.top_k_filter(x, k), lp.TopKLogitsWarper(k)(None, x.clone()))


@pytest.mark.parametrize("m", [0.05, 0.3])
def test_min_p_matches_hf(m: float) -> None:
    x = random_rows(2)
    ref = lp.MinPLogitsWarper(m)(None, x.clone())
    assert torch.equal(torch.isfinite(sampling.min_p_filter(x, m)), torch.isfinite(ref))


def test_repetition_penalty_and_ngrams_match_hf() -> None:
    x = random_rows(3, B=2, V=20)
    ids = torch.tensor([[1, 2, 3, 1, 2, 7, 1, 2], [4, 4, 5, 4, 9, 9, 4, 4]])
    ours = sampling.apply_repetition_penalty(x, sampling.presence_mask(ids.tolist(), 20), 1.3)
    torch.testing.assert_close(ours, lp.RepetitionPenaltyLogitsProcessor(1.3)(ids, x.clone()))
    for n in (1, 2, 3):
        ours = sampling.no_repeat_ngram_filter(x, ids.tolist(), n)
        assert torch.equal(ours, lp.NoRepeatNGramLogitsProcessor(n)(ids, x.clone())), n
