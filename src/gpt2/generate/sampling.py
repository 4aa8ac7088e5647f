"""Sampling controls: small pure functions over a (B, V) batch of next-token logits.

    python -c "import torch; from gpt2.generate.sampling import top_p_filter; print(top_p_filter(torch.tensor([[2., 1., 0.]]), 0.7))"

Each function takes logits and returns new logits (filtered entries set to -inf), never touching its
input, so each is tested on its own against a hand-computed case. `process_logits` chains them in
the order `transformers` does (logits processors, then warpers): repetition penalty, no-repeat n-grams,
temperature, top-k, top-p, min-p. `pick_tokens` then takes the argmax (greedy) or samples. Classifier-free
guidance (`apply_guidance`) comes before all of them, as in `transformers`.

Choices made where implementations differ, documented once here:
- **Ties are kept.** top-k keeps every token tied with the k-th largest logit (as HF does); top-p keeps
  every token tied with the last one needed to reach p (HF's sort may split a tie arbitrarily).
- **top-p** keeps the smallest set of most likely tokens whose probability mass reaches p: a token
  is kept when the mass of the tokens strictly more likely than it (before it in sorted order) is
  below p. p = 1 keeps everything.
- **min-p** keeps tokens whose probability is at least min_p × the top token's probability
  (Nguyen et al. 2024, "Min P Sampling"; HF's MinPLogitsWarper), computed after temperature.
- **Repetition penalty** (Keskar et al. 2019, CTRL §4.1, as HF applies it): a logit of a token that
  already occurs in the prompt or the output is divided by the penalty when positive and multiplied
  by it when negative, so the penalty always lowers the token's probability.
- **No-repeat n-gram** (HF's NoRepeatNGramLogitsProcessor): a token that would complete an n-gram
  already present in the row's tokens (prompt included) is banned.
- **Classifier-free guidance** (Ho & Salimans 2022; for language models Sanchez et al. 2023, "Stay on
  topic with Classifier-Free Guidance"; HF's UnbatchedClassifierFreeGuidanceLogitsProcessor): with the
  log-probabilities c of the prompt's context and u of a second, "negative" context fed the same new tokens,
  the scores are u + scale × (c − u). scale 1 is c itself; above 1 every token moves toward what the prompt
  makes likelier than the negative context does (e.g. a 1-star control token against a 5-star one).
- **Sampling** draws with the Gumbel-max trick, argmax(logits + Gumbel noise), which is an exact
  draw from softmax(logits) (Gumbel 1954; Maddison et al. 2014). The noise of each row comes from
  that row's own torch.Generator, so a row's samples never depend on which other rows share its batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gpt2.errors import UserError

NEG_INF = float("-inf")


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / temperature; temperature must be > 0 (greedy decoding is the temperature → 0 limit)."""
    if temperature <= 0:
        raise UserError(f"temperature must be > 0 to scale logits, got {temperature} (use greedy for 0)")
    return logits if temperature == 1.0 else logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row (and any tied with the k-th); the rest become -inf."""
    if k <= 0:
        raise UserError(f"top_k must be a positive integer, got {k}")
    if k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability mass reaches p, ties included."""
    if not 0.0 < p <= 1.0:
        raise UserError(f"top_p must be in (0, 1], got {p}")
    if p >= 1.0:
        return logits
    sorted_logits, _ = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # (B, V): mass of the tokens ranked above
    # (B, 1); at least the most likely token: a p below float32's smallest number compares as 0 < 0
    keep = (mass_before < p).sum(dim=-1, keepdim=True).clamp(min=1)
    threshold = sorted_logits.gather(-1, keep - 1)  # (B, 1): the least likely kept logit
    return logits.masked_fill(logits < threshold, NEG_INF)


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Keep tokens whose probability is at least min_p times the most likely token's."""
    if not 0.0 <= min_p <= 1.0:
        raise UserError(f"min_p must be in [0, 1], got {min_p}")
    if min_p == 0.0:
        return logits
    probs = torch.softmax(logits.float(), dim=-1)
    floor = probs.amax(dim=-1, keepdim=True) * min_p  # (B, 1)
    return logits.masked_fill(probs < floor, NEG_INF)


def apply_guidance(logits: torch.Tensor, negative_logits: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, V) scores u + scale × (c − u), c and u the log-softmax of the prompt's and the negative context's logits."""
    if not scale >= 0 or scale == float("inf"):  # also catches NaN
        raise UserError(f"guidance_scale must be a finite number >= 0 (1 is off), got {scale}")
    c = torch.log_softmax(logits.float(), dim=-1)  # (B, V)
    u = torch.log_softmax(negative_logits.float(), dim=-1)  # (B, V)
    return scale * (c - u) + u  # HF's order of operations


def presence_mask(token_ids: Sequence[Sequence[int]], vocab_size: int, *, device: torch.device | str = "cpu"
                  ) -> torch.Tensor:
    """(B, V) bool, True where token v occurs in row b's ids: what apply_repetition_penalty reads."""
    mask = torch.zeros(len(token_ids), vocab_size, dtype=torch.bool, device=device)
    for b, ids in enumerate(token_ids):
        if len(ids):
            mask[b, torch.as_tensor(list(ids), device=device)] = True
    return mask


def apply_repetition_penalty(logits: torch.Tensor, present: torch.Tensor, penalty: float) -> torch.Tensor:
    """Divide positive and multiply negative logits of tokens already present (present: (B, V) bool)."""
    if penalty <= 0:
        raise UserError(f"repetition_penalty must be > 0, got {penalty}")
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(present, penalised, logits)


def banned_ngram_tokens(tokens: Sequence[int], n: int) -> list[int]:
    """Tokens that would complete an n-gram already in `tokens` (the last n - 1 tokens are the prefix)."""
    if n <= 0:
        raise UserError(f"no_repeat_ngram_size must be a positive integer, got {n}")
    if len(tokens) < n:  # no complete n-gram yet
        return []
    tokens = list(tokens)
    prefix = tokens[len(tokens) - (n - 1) :] if n > 1 else []
    banned = []
    for i in range(len(tokens) - n + 1):
        if tokens[i : i + n - 1] == prefix:
            banned.append(tokens[i + n - 1])
    return banned


def no_repeat_ngram_filter(logits: torch.Tensor, histories: Sequence[Sequence[int]], n: int) -> torch.Tensor:
    """Set to -inf, per row, every token that would repeat an n-gram of that row's history."""
    out = logits
    for b, tokens in enumerate(histories):
        banned = banned_ngram_tokens(tokens, n)
        if banned:
            if out is logits:
                out = logits.clone()
            out[b, banned] = NEG_INF
    return out


def process_logits(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    min_p: float = 0.0,
    repetition_penalty: float = 1.0,
    present: torch.Tensor | None = None,
    no_repeat_ngram_size: int = 0,
    histories: Sequence[Sequence[int]] | None = None,
) -> torch.Tensor:
    """All controls in HF's order: penalties, then (when sampling, temperature > 0) the warpers.

    With temperature 0 (greedy) only the penalties apply: the warpers never change the argmax.
    """
    if repetition_penalty != 1.0:
        assert present is not None, "repetition penalty needs the presence mask"
        logits = apply_repetition_penalty(logits, present, repetition_penalty)
    if no_repeat_ngram_size:
        assert histories is not None, "no-repeat n-grams need the token histories"
        logits = no_repeat_ngram_filter(logits, histories, no_repeat_ngram_size)
    if temperature == 0:
        return logits
    logits = apply_temperature(logits, temperature)
    if top_k:
        logits = top_k_filter(logits, top_k)
    if top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    if min_p > 0.0:
        logits = min_p_filter(logits, min_p)
    return logits


def gumbel_noise(generators: Sequence[torch.Generator], vocab_size: int, *, device: torch.device | str = "cpu"
                 ) -> torch.Tensor:
    """(B, V) standard Gumbel noise, row b drawn from generators[b]."""
    u = torch.stack([torch.rand(vocab_size, generator=g, device=device) for g in generators])  # (B, V)
    # u is in [0, 1): u = 0 gives -inf (never picked); u < 1 keeps the noise finite, so -inf logits stay -inf.
    return -torch.log(-torch.log(u))


def pick_tokens(logits: torch.Tensor, *, noise: torch.Tensor | None = None) -> torch.Tensor:
    """(B, V) processed logits → (B,) token ids: argmax without noise (greedy), a sample with Gumbel noise."""
    if noise is None:
        return logits.argmax(dim=-1)
    return (logits.float() + noise).argmax(dim=-1)
