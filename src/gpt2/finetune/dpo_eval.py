"""Scoring a model on preference pairs: DPO's reward accuracy and margin against a reference, and its own ranking.

    gpt2 eval runs/dpo-polite --preference runs/dpo-polite/heldout.jsonl
    gpt2 eval runs/sft-alpaca --preference pairs.jsonl --reference runs/imdb-lm --json

For each pair (any form gpt2.finetune.preference_data reads, in the model's prompt format) the model and
the reference score the chosen and the rejected response (log-probs summed over the response tokens and
the <|endoftext|> closing them, or averaged with --average-logps). Reported, as means over the pairs:
- **reward accuracy**: how often β·(log π(y_c) - log π_ref(y_c)) > β·(log π(y_r) - log π_ref(y_r)), TRL's
  `rewards/accuracies` (β does not change it);
- **mean margin**: the mean of that difference, TRL's `rewards/margins` (it scales with β);
- **policy accuracy**: how often the model alone gives the chosen response the higher log-prob;
- the DPO loss, and TRL's `rewards/chosen`, `rewards/rejected`, `logps/chosen`, `logps/rejected`.
The reference is --reference; else, for a DPO run's checkpoint, the run's own (finetune.dpo.reference, or
model.init_from), and β and the averaging are the run's; for a LoRA adapter, its base (the adapters off).
A DPO run's RUN/heldout.jsonl holds its held-out pairs, so this scores exactly what training held out.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import torch

from gpt2.common import print_result
from gpt2.errors import UserError


def _dpo_run_config(directory: Path | None) -> Any:
    """The RunConfig of the DPO run a checkpoint belongs to, else None."""
    if directory is None:
        return None
    from gpt2.config import load_run_config
    from gpt2.eval.commands import run_dir_of
    from gpt2.train.metrics import read_metrics

    run_dir = run_dir_of(directory)
    if run_dir is None or not any(r.get("kind") == "start" and r.get("task") == "dpo" for r in read_metrics(run_dir)):
        return None
    return load_run_config(directory)


def evaluate_preference(model: torch.nn.Module, reference: torch.nn.Module | None, tokenizer: Any, fmt: Any,
                        preferences: list[Any], *, beta: float = 0.1, average_logps: bool = False,
                        batch_size: int = 16) -> dict[str, Any]:
    """The metrics of the module docstring; `reference` None means `model` with its LoRA adapters off."""
    from gpt2.finetune.dpo import pair_logps, preference_stats, score_pairs, stats_to_metrics
    from gpt2.finetune.preference_data import encode_pairs
    from gpt2.model.lora import adapters_disabled

    device = next(model.parameters()).device
    pairs, _, truncated = encode_pairs(preferences, tokenizer, fmt, max_tokens=model.config.n_positions)
    if not pairs:
        raise UserError("no pair has a response token left within the model's context window")
    kw = dict(batch_size=batch_size, pad_id=tokenizer.eot_token, device=device)
    sums, counts = score_pairs(model, pairs, **kw)
    with adapters_disabled(model) if reference is None else contextlib.nullcontext():
        ref_sums, _ = score_pairs(model if reference is None else reference.to(device), pairs, **kw)
    stats = preference_stats(pair_logps(sums, counts, average=average_logps),
                             pair_logps(ref_sums, counts, average=average_logps), beta=beta)
    m = stats_to_metrics(stats)
    return {"pairs": len(pairs), "dropped": len(preferences) - len(pairs), "truncated": truncated,
            "reward_accuracy": m["rewards/accuracies"], "mean_margin": m["rewards/margins"],
            "policy_accuracy": m["policy_accuracy"], "loss": m["loss"], "beta": beta, "average_logps": average_logps,
            **{k: v for k, v in m.items() if "/" in k}}


def render(r: dict[str, Any]) -> str:
    return "\n".join([
        f"pairs              {r['pairs']} ({r['dropped']} dropped, {r['truncated']} side(s) cut to the context)",
        f"reference          {r['reference']}",
        f"reward accuracy    {r['reward_accuracy']:.4f}   (β·log-ratio of chosen > of rejected)",
        f"mean margin        {r['mean_margin']:.4f}   (β = {r['beta']:g}, log-probs "
        f"{'averaged' if r['average_logps'] else 'summed'} over the response)",
        f"policy accuracy    {r['policy_accuracy']:.4f}   (the model alone: log π(chosen) > log π(rejected))",
        f"DPO loss           {r['loss']:.4f}   (ln 2 = 0.6931 when the model is its reference)",
        f"rewards            chosen {r['rewards/chosen']:.4f}, rejected {r['rewards/rejected']:.4f}; log-probs "
        f"chosen {r['logps/chosen']:.2f}, rejected {r['logps/rejected']:.2f}",
    ])


def run_eval_preference(source: str | Path, file: str, *, reference: str | None = None, format: str | None = None,
                        beta: float | None = None, average_logps: bool | None = None, batch_size: int = 16,
                        limit: int | None = None, tokenizer: str | None = None, dtype: str = "fp32",
                        device: str = "auto", as_json: bool = False) -> dict[str, Any]:
    """`gpt2 eval SOURCE --preference FILE`: load the model and its reference, score, print."""
    from gpt2.finetune.dpo import load_reference
    from gpt2.finetune.instruct import chat_format
    from gpt2.finetune.preference_data import read_preference
    from gpt2.load import load
    from gpt2.model.lora import lora_layers

    if beta is not None and beta <= 0:
        raise UserError(f"--beta {beta} must be positive")
    preferences = read_preference(file)[:limit]
    loaded = load(source, tokenizer=tokenizer, dtype=dtype, device=device)  # type: ignore[arg-type]
    fmt = chat_format(format) if format is not None else loaded.chat_format
    if fmt is None:
        raise UserError(f"{source} has no chat.json, so its prompt format is unknown: name one with --format")
    run = _dpo_run_config(loaded.directory)
    ref_name = reference or (run and (run.finetune.dpo.reference or run.model.init_from))
    ref_model = None
    if ref_name:
        ref_model = load_reference(ref_name, loaded.tokenizer, policy_name=str(source))
        ref_model.to(dtype=next(loaded.model.parameters()).dtype)
    elif lora_layers(loaded.model):
        ref_name = f"{source} with its adapters off"
    else:
        raise UserError(f"{source} is not a DPO run's checkpoint or a LoRA adapter, so its reference is unknown: "
                        "name one with --reference (e.g. the model it was tuned from)")
    if beta is None:
        beta = run.finetune.dpo.beta if run else 0.1
    if average_logps is None:
        average_logps = run.finetune.dpo.average_logps if run else False
    t0 = time.perf_counter()
    result = evaluate_preference(loaded.model, ref_model, loaded.tokenizer, fmt, preferences, beta=beta,
                                 average_logps=average_logps, batch_size=batch_size)
    result.update({"source": str(source), "file": str(file), "reference": str(ref_name), "format": fmt.name,
                   "seconds": round(time.perf_counter() - t0, 2)})
    print_result(result, as_json=as_json, render=render, one_line=True)
    return result
