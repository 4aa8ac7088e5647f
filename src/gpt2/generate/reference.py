"""The plain generator the engine is tested against: one prompt, no cache, the whole sequence every step.

    python -c "from gpt2 import GPT2Config, GPT2LMHeadModel; from gpt2.generate.reference import reference_generate; print(reference_generate(GPT2LMHeadModel(GPT2Config.from_preset('tiny')).eval(), [1, 2, 3], max_new_tokens=5, temperature=0))"

Nothing here is fast or clever: no KV cache, no padding, no batching, no packed weights. It shares
only the sampling functions and the per-sequence noise generator with the engine, so with the same
seed both must pick the same tokens; tests/generate holds them equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from gpt2.errors import UserError
from gpt2.generate import sampling
from gpt2.generate.engine import SampleConfig, row_generator
from gpt2.model.gpt2 import GPT2LMHeadModel


@torch.inference_mode()
def reference_generate(
    model: GPT2LMHeadModel,
    prompt_ids: Sequence[int],
    config: SampleConfig | None = None,
    *,
    sample_index: int = 0,
    eos_token_id: int | None = None,
    **overrides: Any,
) -> list[int]:
    """Generated token ids for one prompt (end-of-text included when it stops there).

    Honours max_new_tokens, stop_at_eot and every sampling control; not stop strings (no tokenizer).
    Sampling needs config.seed: the noise is drawn from the same per-sequence generator as the engine's.
    Guidance reads a negative prompt of token ids (or the prompt's last token), run again whole each step.
    """
    config = (config or SampleConfig()).replace(**overrides)
    if not config.greedy and config.seed is None:
        raise UserError("reference sampling needs a seed (to match the engine's noise)")
    eos = model.config.eos_token_id if eos_token_id is None else eos_token_id
    device = model.transformer.wte.weight.device
    generator = None if config.greedy else row_generator(config.seed, prompt_ids, sample_index, device=device)
    if isinstance(config.negative_prompt, str):
        raise UserError("the reference takes a negative prompt as token ids")
    negative = list(prompt_ids[-1:] if config.negative_prompt is None else config.negative_prompt)
    seq = list(prompt_ids)
    out: list[int] = []
    for _ in range(config.max_new_tokens):
        logits = model(torch.tensor([seq], device=device)).logits[:, -1].float()  # (1, V)
        present = sampling.presence_mask([seq], logits.shape[-1], device=device)
        if config.guidance_scale != 1.0:
            negative_logits = model(torch.tensor([negative + out], device=device)).logits[:, -1].float()  # (1, V)
            logits = sampling.apply_guidance(logits, negative_logits, config.guidance_scale)
        logits = sampling.process_logits(
            logits,
            temperature=config.temperature,
            top_k=config.top_k,
            top_p=config.top_p,
            min_p=config.min_p,
            repetition_penalty=config.repetition_penalty,
            present=present,
            no_repeat_ngram_size=config.no_repeat_ngram_size,
            histories=[seq],
        )
        noise = None if generator is None else sampling.gumbel_noise([generator], logits.shape[-1], device=device)
        tok = int(sampling.pick_tokens(logits, noise=noise)[0])
        out.append(tok)
        seq.append(tok)
        if config.stop_at_eot and tok == eos:
            break
    return out
