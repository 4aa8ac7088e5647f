"""Size a from-scratch GPT-2 to the machine it trains on: `model.preset: auto`.

A run with a time budget (train.max_minutes) on a CPU reads as many tokens as the CPU is fast: the default
run reads ~2M tokens on a 2-core AVX2 CPU in fp32 and ~9M on one with native bf16. The model that learns
most from 2M tokens is not the one that learns most from 9M, and past a few passes over a small corpus a
model stops learning unless it is regularised. So with `model.preset: auto` the run, before it starts:

1. times a few training steps (forward, backward, the run's optimizer) of each candidate shape in LADDER,
   here, in the run's dtype and threads;
2. plans how many tokens each would read in the budget, and how many passes over the training split that is;
3. takes the first rung (largest first) whose planned passes reach its `min_passes`: the sweeps in
   bench/results/sizing-sweep-*.json are the evidence for each threshold (docs/train.md, "Sized to the machine").

Anything given explicitly keeps its value (model.n_layer, n_head, n_embd, dropout; optim.weight_decay). Without a time
budget the plan is train.max_steps × the step's tokens, so nothing is timed and the pick is the same on
every machine. The pick is printed and kept in the run's start record (`sizing`).

    from gpt2.train.sizing import pick
    pick({rung: 18_000.0 for rung in LADDER}, seconds=525, train_tokens=1_570_000).reason
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from gpt2.config import ModelConfig, OptimConfig, RunConfig
from gpt2.errors import UserError

Shape = tuple[int, int, int]  # (n_layer, n_head, n_embd)


@dataclass(frozen=True)
class Rung:
    """One row of the table: a shape, the dropout and weight decay it trains with, and from how many planned
    passes over the training tokens (at this rung's own measured speed) it beats the rungs below it."""

    shape: Shape
    dropout: float
    weight_decay: float
    min_passes: float


# Largest first; the last rung takes every plan. From the sweeps (bench/results/sizing-sweep-*.json), the default
# run's 510 s of steps over its 1.57M training tokens, validation bits/byte on the two held-out plays:
# - 1.4 passes (a 2-core AVX2 CPU in fp32; fp32 on a Zen 5 standing in): weight decay 0.1 2.036, 0.5 2.036,
#   1.0 2.048; 256 wide loses (2.145 at its fewer tokens, bench/results/recipe-sweep.json);
# - 5.7 passes (a 2-core Zen 5 in bf16): weight decay 0.1 1.863, 0.5 1.785, 1.0 1.791, 2.0 1.847; residual
#   dropout 0.1 1.895 (and dropout on the attention weights costs 38% of the speed); 256 wide with weight
#   decay 0.5 or 1.0 1.811, with dropout 1.931;
# - the same Zen 5, weight decay 0.5 (bench/results/sizing-sweep-depth-zen5.json): 4 x 4 x 192 1.793; 6 layers
#   x 5 heads x 160 wide, as fast at about the same parameters, 1.769; 6 x 6 x 192 1.789 and 8 x 5 x 160 1.800 (each
#   a fifth slower); context 512 1.803; lr 4e-3 1.816.
# So no CPU measured wants a larger model in this budget, but a fast one wants the same parameters deeper; past a
# few passes a stronger weight decay holds the validation loss down at no cost in speed. The threshold sits between
# the two measured points (at 1.4 passes the two decays tie, so a slow CPU trains exactly the recipe it was tuned
# with).
LADDER: tuple[Rung, ...] = (
    Rung(shape=(6, 5, 160), dropout=0.0, weight_decay=0.5, min_passes=3.0),
    Rung(shape=(4, 4, 192), dropout=0.0, weight_decay=0.1, min_passes=0.0),
)

STEPS_TIMED = 3  # after one warm-up step; a step of the largest rung takes well under a second


@dataclass(frozen=True)
class Plan:
    """What the rule picked and why (the run's header prints `reason`)."""

    rung: Rung
    planned_tokens: float
    passes: float
    tok_per_s: dict[str, float]  # each timed rung's rate, by rung_name ({} when planned on steps)
    reason: str

    def record(self) -> dict[str, Any]:
        """The start record's `sizing` entry."""
        n_layer, n_head, n_embd = self.rung.shape
        return {"n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "dropout": self.rung.dropout,
                "weight_decay": self.rung.weight_decay,
                "planned_tokens": round(self.planned_tokens), "passes": round(self.passes, 2),
                "tok_per_s": {k: round(v) for k, v in self.tok_per_s.items()}, "reason": self.reason}


def rung_name(rung: Rung) -> str:
    """'4x4x192 dropout 0.1': layers × heads × width, and the dropout."""
    return f"{'x'.join(map(str, rung.shape))} dropout {rung.dropout:g} wd {rung.weight_decay:g}"


def pick(speeds: Mapping[Rung, float] | None, *, seconds: float | None, train_tokens: int,
         planned_tokens: float | None = None, ladder: tuple[Rung, ...] | None = None) -> Plan:
    """The rung for a budget: `speeds` (tokens/s of each rung) × `seconds`, or `planned_tokens` when
    the run is planned on steps. The first rung whose planned passes over `train_tokens` reach its
    min_passes wins; the last rung always qualifies."""
    ladder = ladder or LADDER
    if train_tokens <= 0:
        raise UserError("model.preset=auto needs training tokens to plan passes over; the train split is empty")
    for rung in ladder:
        if planned_tokens is None:
            if speeds is None or seconds is None:
                raise ValueError("pick() needs speeds and seconds, or planned_tokens")
            tokens = speeds[rung] * seconds
            how = f"{speeds[rung]:,.0f} tokens/s × {seconds:.0f} s"
        else:
            tokens, how = planned_tokens, "train.max_steps × tokens per step"
        passes = tokens / train_tokens
        if passes >= rung.min_passes or rung is ladder[-1]:
            reason = (f"{rung_name(rung)} (layers × heads × width): "
                      f"{how} = {tokens / 1e6:.1f}M tokens, {passes:.1f} passes over {train_tokens / 1e6:.2f}M "
                      f"training tokens (this rung from {rung.min_passes:g} passes)")
            named = {rung_name(r): v for r, v in (speeds or {}).items()} if planned_tokens is None else {}
            return Plan(rung=rung, planned_tokens=tokens, passes=passes, tok_per_s=named, reason=reason)
    raise AssertionError("unreachable: the last rung always qualifies")


def apply(model: ModelConfig, optim: OptimConfig, rung: Rung) -> tuple[ModelConfig, OptimConfig]:
    """model.* and optim.weight_decay with the rung's values where they were not given; preset 'auto' becomes
    the 'mini' preset those fields override."""
    n_layer, n_head, n_embd = rung.shape
    weight_decay = optim.weight_decay if optim.weight_decay is not None else rung.weight_decay
    return dataclasses.replace(
        model, preset="mini",
        n_layer=model.n_layer if model.n_layer is not None else n_layer,
        n_head=model.n_head if model.n_head is not None else n_head,
        n_embd=model.n_embd if model.n_embd is not None else n_embd,
        dropout=model.dropout if model.dropout is not None else rung.dropout,
    ), dataclasses.replace(optim, weight_decay=weight_decay)


def time_shape(build: Callable[[], torch.nn.Module], cfg: RunConfig, *, vocab_size: int, device: torch.device,
               dtype: torch.dtype, steps: int = STEPS_TIMED) -> float:
    """Tokens/s of training steps of the model `build` makes: forward and backward at the run's micro-batch
    and seq_len under its autocast, and its optimizer's step, on random tokens (the ids don't change the cost)."""
    from gpt2.train.optim import build_optimizer

    model = build().to(device).train()
    optimizer = build_optimizer(model, cfg.optim, device=device)
    B, T = cfg.train.micro_batch_size, cfg.train.seq_len
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab_size, (B, T + 1), generator=g).to(device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def step() -> None:
        with autocast:
            loss = model(x[:, :-1], targets=x[:, 1:], return_logits=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()  # warm-up: allocator, oneDNN primitives
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return B * T * steps / (time.perf_counter() - t0)


def size_model(cfg: RunConfig, *, train_tokens: int, time_rung: Callable[[Rung], float],
               ladder: tuple[Rung, ...] | None = None) -> tuple[ModelConfig, OptimConfig, Plan]:
    """model.* and optim.* for a `preset: auto` run, and the plan behind it. `time_rung(rung)` gives a rung's tokens/s
    (time_shape in a run; a table in tests); it is called only when the run has a time budget."""
    if cfg.model.init_from:
        raise UserError("model.preset=auto sizes a model trained from scratch; model.init_from already fixes "
                        "the shape: drop one of the two")
    ladder = ladder or LADDER
    t = cfg.train
    if t.max_minutes:
        timed: dict[tuple[Shape, float], float] = {}  # rungs that differ only in weight decay run alike
        for rung in ladder:
            if (rung.shape, rung.dropout) not in timed:
                timed[rung.shape, rung.dropout] = time_rung(rung)
        speeds = {rung: timed[rung.shape, rung.dropout] for rung in ladder}
        # The loop's budget includes its evaluation passes; the steps get most of it.
        plan = pick(speeds, seconds=60 * t.max_minutes, train_tokens=train_tokens, ladder=ladder)
    else:
        per_step = t.global_batch_tokens or t.micro_batch_size * t.seq_len
        plan = pick(None, seconds=None, train_tokens=train_tokens, planned_tokens=t.max_steps * per_step,
                    ladder=ladder)
    return (*apply(cfg.model, cfg.optim, plan.rung), plan)
