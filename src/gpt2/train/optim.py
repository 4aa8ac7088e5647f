"""The optimizers (AdamW, or Muon with AdamW) and the warm-up + decay learning-rate schedule.

    python -c "from gpt2.train.optim import LRSchedule, OptimConfig; print(LRSchedule(OptimConfig(), max_steps=1000)(500))"

AdamW (`optim.name=adamw`, the default): weight decay applies to matrices only (attention, MLP,
embeddings); biases and LayerNorm gains are left alone, as in GPT-3 and nanoGPT.

Muon (`optim.name=muon`): the hidden matrices of the transformer blocks (attn.c_attn, attn.c_proj,
mlp.c_fc, mlp.c_proj weights) take Muon's orthogonalised momentum update; everything else (token and
position embeddings, the tied LM head, biases, LayerNorm gains) stays on AdamW, as in Keller Jordan's
Muon and the modded-nanogpt speedrun records (embeddings and the head are not hidden layers: their
rows are looked up or scored one token at a time, and Muon was found to hurt there). By default the
update's scale follows Moonlight (Liu et al. 2025, "Muon is Scalable for LLM Training",
`adjust_lr_fn="match_rms_adamw"` in torch.optim.Muon): lr × 0.2·√max(A, B) gives the update the RMS of
a typical AdamW update, so AdamW's learning rate and weight decay carry over and `optim.muon_lr`
defaults to `optim.lr`. One optimizer object (MuonWithAdamW) holds both, so the loop's `set_lr`,
`scaler.step`, `zero_grad` and `state_dict` work unchanged; the schedule's LR is multiplied by each
group's `lr_scale`.

The schedule warms up linearly, then decays (cosine or linear) from lr to lr × min_lr_ratio at
max_steps, and holds there.
"""

from __future__ import annotations

import collections
import inspect
import math
import re
from collections.abc import Iterable
from typing import Any, Literal

import torch

from gpt2.config import OptimConfig
from gpt2.errors import UserError

# The blocks' hidden matrices (nn.Linear weights, (out, in)); the one set of parameters Muon takes.
# c_attn stays one (3C, C) matrix, as in modded-nanogpt's early records, rather than three (C, C) ones.
MUON_PARAM = re.compile(r"transformer\.h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight")

# Keller Jordan's quintic Newton-Schulz coefficients, the ones torch.optim.Muon uses
# (https://kellerjordan.github.io/posts/muon/).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def _decay_groups(params: Iterable[torch.nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for p in params:
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: ≥2-D parameters decayed, the rest not. Tied parameters appear once."""
    # parameters() yields a tied tensor once
    return _decay_groups((p for p in model.parameters() if p.requires_grad), weight_decay)


def split_for_muon(model: torch.nn.Module) -> tuple[list[tuple[str, torch.nn.Parameter]],
                                                   list[tuple[str, torch.nn.Parameter]]]:
    """(Muon's, AdamW's) named parameters: the blocks' hidden matrices, and everything else.

    named_parameters() yields a tied tensor once, under its first name (transformer.wte.weight for the
    tied embedding / LM head), so every parameter lands in exactly one list."""
    muon, adamw = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (muon if MUON_PARAM.fullmatch(name) else adamw).append((name, p))
    assert muon and all(p.dim() == 2 for _, p in muon), "Muon takes 2-D matrices only"
    return muon, adamw


def newton_schulz(g: torch.Tensor, *, steps: int = 5, coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                  eps: float = 1e-7, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """≈ U Vᵀ of g = U S Vᵀ, by Keller Jordan's quintic iteration, computed in `dtype`.

    The same operations as torch.optim.Muon's (which always uses bf16; held equal bit for bit by
    tests/train/test_muon.py), with the dtype left open: a CPU without native bf16 matmuls (AVX2 only)
    emulates them: for one 1024 × 256 matrix (the default recipe's mlp.c_fc) the 5 steps took 2.9 s in
    bf16 against 0.55 s in fp32 on this project's AVX2-only AMD EPYC (Zen 3), 2 threads, busy machine."""
    a, b, c = coefficients
    x = g.to(dtype)
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T  # iterate on the wide orientation: the Gram matrix is the small one
    x = x.div(x.norm().clamp(min=eps))  # spectral norm ≤ Frobenius norm ≤ 1
    for _ in range(steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b·A + c·A²
        x = torch.addmm(x, poly, x, beta=a)  # a·X + (b·A + c·A²)·X
    return x.T if tall else x


def adjusted_lr(lr: float, shape: torch.Size, how: str) -> float:
    """The step size for one (A, B) matrix: Moonlight's match_rms_adamw, or Keller Jordan's original."""
    rows, cols = shape[:2]
    if how == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr * math.sqrt(max(1.0, rows / cols))


class Muon(torch.optim.Muon):
    """torch.optim.Muon (its arguments, validation and state layout: one `momentum_buffer` per matrix),
    with the Newton-Schulz iteration in `ns_dtype` instead of always bf16."""

    def __init__(self, params: Any, *, ns_dtype: torch.dtype = torch.bfloat16, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, momentum = group["lr"], group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)  # an EMA of the gradient
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = newton_schulz(update, steps=group["ns_steps"], coefficients=group["ns_coefficients"],
                                       eps=group["eps"], dtype=self.ns_dtype)
                p.mul_(1 - lr * wd)  # decoupled weight decay, at the unadjusted lr (as torch does)
                p.add_(update, alpha=-adjusted_lr(lr, p.shape, group["adjust_lr_fn"] or "original"))
        return loss


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer over two: Muon for the blocks' matrices, AdamW for the rest.

    `param_groups` is Muon's groups followed by AdamW's (the same dicts, so `set_lr` and GradScaler's
    unscale_ reach both); `step`, `zero_grad`, `state_dict` and `load_state_dict` cover both. Each group
    carries an `lr_scale`: `set_lr` gives it schedule LR × lr_scale, so one schedule drives both."""

    def __init__(self, muon: Muon, adamw: torch.optim.Optimizer) -> None:
        # The base class sets up hooks and checks that no parameter is held twice; then the groups and the
        # state become views of the two inner optimizers'.
        super().__init__([p for o in (muon, adamw) for g in o.param_groups for p in g["params"]], {})
        self.muon, self.adamw = muon, adamw
        self._link()

    def _link(self) -> None:
        # load_state_dict gives an optimizer new group dicts: link again after every load
        self.param_groups = self.muon.param_groups + self.adamw.param_groups
        self.state = collections.ChainMap(self.muon.state, self.adamw.state)  # type: ignore[assignment]

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if hasattr(self, "adamw"):  # the base __init__ adds the first group before the inner ones are linked
            raise NotImplementedError("add groups to .muon or .adamw")
        super().add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        if set(state_dict) != {"muon", "adamw"}:
            raise UserError("the checkpoint's optimizer state is AdamW's alone (optim.name=adamw); resume with "
                            "optim.name=adamw, or start a new run from its weights with model.init_from=CKPT")
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        self._link()


def _adamw(groups: list[dict[str, Any]], cfg: OptimConfig, *, device: torch.device) -> torch.optim.AdamW:
    """AdamW over `groups`; the fused kernel on CUDA and CPU (one pass over each tensor)."""
    fused = cfg.fused
    if fused is None:
        # On a CPU too (torch >= 2.4) the fused update makes one pass over each tensor, where foreach
        # makes a temporary for every intermediate: several times faster (bench/train_step.py --optimizer).
        fused = device.type in ("cuda", "cpu") and "fused" in inspect.signature(torch.optim.AdamW).parameters
    # foreach (one multi-tensor op per update step instead of a Python loop over tensors) elsewhere
    kwargs: dict[str, Any] = {"fused": True} if fused else {"foreach": True}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, **kwargs)


def ns_dtype(name: Literal["auto", "bf16", "fp32"] | str, device: torch.device) -> torch.dtype:
    """The Newton-Schulz dtype: bf16 where the device multiplies it natively (torch's choice), else fp32."""
    from gpt2.common import cpu_has_fast_bf16

    if name == "bf16":
        return torch.bfloat16
    if name == "fp32":
        return torch.float32
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if device.type == "cpu" and cpu_has_fast_bf16() else torch.float32


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, *, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over param_groups, or (optim.name=muon) MuonWithAdamW over split_for_muon's two sets."""
    if cfg.name == "adamw":
        return _adamw(param_groups(model, cfg.decay()), cfg, device=device)
    if cfg.name != "muon":
        raise UserError(f"optim.name={cfg.name!r}: use adamw or muon")
    muon_named, adamw_named = split_for_muon(model)
    muon_lr = cfg.muon_lr if cfg.muon_lr is not None else cfg.lr
    muon_wd = cfg.muon_weight_decay if cfg.muon_weight_decay is not None else cfg.decay()
    muon = Muon([{"params": [p for _, p in muon_named], "lr_scale": muon_lr / cfg.lr}], lr=muon_lr,
                weight_decay=muon_wd, momentum=cfg.muon_momentum, nesterov=True, adjust_lr_fn=cfg.muon_adjust_lr,
                ns_dtype=ns_dtype(cfg.muon_ns_dtype, device))
    adamw = _adamw(_decay_groups((p for _, p in adamw_named), cfg.decay()), cfg, device=device)
    return MuonWithAdamW(muon, adamw)


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K" if n >= 1e3 else str(n)


def describe(optimizer: torch.optim.Optimizer) -> str:
    """Which optimizer holds how many tensors and parameters, in one line for the run's header."""
    def held(opt: torch.optim.Optimizer) -> tuple[int, int]:
        ps = [p for g in opt.param_groups for p in g["params"]]
        return len(ps), sum(p.numel() for p in ps)

    if isinstance(optimizer, MuonWithAdamW):
        (nm, pm), (na, pa) = held(optimizer.muon), held(optimizer.adamw)
        dtype = str(optimizer.muon.ns_dtype).removeprefix("torch.")
        return (f"Muon on {nm} matrices ({_count(pm)} params, Newton-Schulz in {dtype}), "
                f"AdamW on {na} tensors ({_count(pa)})")
    n, total = held(optimizer)
    return f"{type(optimizer).__name__} on {n} tensors ({_count(total)} params)"


class LRSchedule:
    """lr at each step: linear warm-up, then cosine / linear decay to lr × min_lr_ratio, or constant."""

    def __init__(self, cfg: OptimConfig, *, max_steps: int) -> None:
        self.lr, self.min_lr = cfg.lr, cfg.lr * cfg.min_lr_ratio
        self.warmup, self.max_steps, self.kind = cfg.warmup_steps, max_steps, cfg.schedule

    def __call__(self, step: int, *, time_fraction: float | None = None) -> float:
        """Learning rate for optimizer step `step` (0-based).

        With a time budget (train.max_minutes), `time_fraction` is the share of it used so far; the
        decay then follows whichever runs out first, steps or time, so a run cut short by the clock
        still ends at the floor instead of at its peak rate. The clock counts only while it is ahead of the
        steps (time_fraction > step / max_steps): a run that its steps end first follows the steps alone,
        so it is a function of its config and seed, not of how fast the machine ran its first steps (right
        after warm-up the decay's own progress is ~0, and any clock reading used to win there).
        """
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if self.kind == "constant":
            return self.lr
        span = max(self.max_steps - self.warmup, 1)
        progress = min((step - self.warmup) / span, 1.0)
        if time_fraction is not None and time_fraction > step / max(self.max_steps, 1):
            progress = min(max(progress, time_fraction), 1.0)
        if self.kind == "linear":
            coeff = 1.0 - progress
        else:
            coeff = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr + coeff * (self.lr - self.min_lr)

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "min_lr": self.min_lr, "warmup": self.warmup, "max_steps": self.max_steps,
                "kind": self.kind}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The schedule is a pure function of its settings; resuming with other settings is refused."""
        if state != self.state_dict():
            diff = {k: (state.get(k), v) for k, v in self.state_dict().items() if state.get(k) != v}
            raise UserError(f"the checkpoint's LR schedule differs from this config's: {diff} (saved, now)")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The schedule's LR into every group, times the group's lr_scale (Muon's muon_lr / lr; 1 elsewhere)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
