"""Many LoRA adapters on one base model, batched: each row of a batch applies its own adapter's update.

    gpt2 serve BASE --adapter poet=runs/poet-lora --adapter coder=runs/coder-lora   # what uses it

    python -c "from gpt2.load import load; from gpt2.model.lora import read_adapter; \\
from gpt2.model.multi_lora import attach_adapters; m = load('BASE').model; \\
print(attach_adapters(m, [read_adapter(d, base=m) for d in ('ADAPTER_1', 'ADAPTER_2')]))"

Serving n adapters of one base as n merged models costs n copies of the base, and a batch can only hold
the rows of one of them. Punica (Chen et al. 2023, arXiv:2310.18547) and S-LoRA (Sheng et al. 2023,
arXiv:2311.03285) keep one base and batch every adapter's rows together: the base's matmul runs once for
the whole batch, and each row adds its own low-rank update B_i A_i x, gathered from stacks of all the
adapters' matrices. This is that in plain PyTorch (their fused kernels, SGMV/BGMV, become a gather and
two batched matmuls).

`attach_adapters(model, adapters)` replaces each block layer that any adapter targets with a
`MultiLoRALinear` holding, for that layer,

    lora_A (n + 1, in, r)    slot i + 1: adapter i's A, transposed and scaled by its alpha / rank
    lora_B (n + 1, r, out)   slot i + 1: adapter i's B, transposed

Slot 0 is the base itself (zeros: no update). An adapter of a smaller rank than the layer's largest is
zero-padded (zero columns of A meet zero rows of B: nothing added), and one that does not target the
layer has zeros there. Before each forward, `AdapterSlots.set(slots)` names every row's slot; then

    y = base_layer(x) + (x @ lora_A[slots]) @ lora_B[slots]        # bmm over the rows

A batch whose rows all want the base skips the update altogether. The base layer is whatever was there
(nn.Linear, the fast path's packed PackedLinear, quant.py's Int8Linear): its weights are shared, never
copied. A model with no adapter attached is not touched at all. The plain reference is the one-adapter
LoRALinear (gpt2.model.lora) and PEFT itself: tests/serve/test_adapters.py holds a mixed batch to both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from gpt2.errors import UserError
from gpt2.model.lora import TARGETS, LoRAConfig, lora_layers, peft_key

Adapter = tuple[LoRAConfig, Mapping[str, torch.Tensor]]
"""One adapter as gpt2.model.lora.read_adapter returns it: its config and its tensors under PEFT's names."""


class AdapterSlots:
    """Which adapter every row of the next forward applies; one object shared by all MultiLoRALinear of a model."""

    def __init__(self) -> None:
        self.index: torch.Tensor | None = None  # (B,) slot per row; None: every row is the base's

    def set(self, slots: Sequence[int], *, device: torch.device | str = "cpu") -> None:
        """slots[r] is row r's adapter (0 = the base, i + 1 = the i-th attached adapter)."""
        self.index = torch.tensor(list(slots), device=device) if any(slots) else None


class MultiLoRALinear(nn.Module):
    """base_layer(x) plus, for each row r, x_r (s_i A_i)ᵀ B_iᵀ with i = the row's slot (module docstring)."""

    def __init__(self, base_layer: nn.Module, lora_A: torch.Tensor, lora_B: torch.Tensor, slots: AdapterSlots) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.in_features, self.out_features = lora_A.shape[1], lora_B.shape[2]
        self.register_buffer("lora_A", lora_A)  # (n + 1, in, r), scaling folded in
        self.register_buffer("lora_B", lora_B)  # (n + 1, r, out)
        self.slots = slots

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, in) → (B, T, out)."""
        y = self.base_layer(x)  # (B, T, out)
        index = self.slots.index
        if index is None:
            return y
        h = torch.bmm(x, self.lora_A.index_select(0, index))  # (B, T, r)
        return y.baddbmm_(h, self.lora_B.index_select(0, index))  # (B, T, out)

    def extra_repr(self) -> str:
        n, _, r = self.lora_A.shape
        return f"adapters={n - 1}, rank={r}"


def attach_adapters(model: nn.Module, adapters: Sequence[Adapter]) -> nn.Module:
    """Give `model` (a GPT2LMHeadModel, modified in place) the adapters in slots 1..n; returns `model`.

    Each adapter must have been checked against this model's shapes (gpt2.model.lora.read_adapter does).
    The stacks are built in fp32 and stored in the dtype and on the device of the model's weights."""
    if not adapters:
        raise UserError("attach_adapters needs at least one adapter")
    if lora_layers(model) or any(isinstance(m, MultiLoRALinear) for m in model.modules()):
        raise UserError("this model carries adapters already: attach the adapters to a plain base")
    ref = model.transformer.wte.weight
    slots = AdapterSlots()
    for i, block in enumerate(model.transformer.h):
        for target, (parent, child) in TARGETS.items():
            users = [(k, cfg, w) for k, (cfg, w) in enumerate(adapters) if target in cfg.targets]
            if not users:
                continue
            owner, name = getattr(block, parent), f"transformer.h.{i}.{parent}.{child}"
            layer = getattr(owner, child)
            rank = max(cfg.rank for _, cfg, _ in users)
            A = torch.zeros(len(adapters) + 1, layer.in_features, rank)  # (n + 1, in, r)
            B = torch.zeros(len(adapters) + 1, rank, layer.out_features)  # (n + 1, r, out)
            for k, cfg, w in users:
                A[k + 1, :, : cfg.rank] = w[peft_key(name, "lora_A")].float().t() * (cfg.alpha / cfg.rank)
                B[k + 1, : cfg.rank] = w[peft_key(name, "lora_B")].float().t()
            setattr(owner, child, MultiLoRALinear(layer, A.to(ref), B.to(ref), slots))
    return model


def adapter_slots(model: nn.Module) -> AdapterSlots:
    """The one AdapterSlots every MultiLoRALinear of `model` reads (bound afresh, so a copy of an attached
    model, such as the fast path's shared view, gets its own)."""
    slots = AdapterSlots()
    layers = [m for m in model.modules() if isinstance(m, MultiLoRALinear)]
    if not layers:
        raise UserError("this model has no adapters attached (attach_adapters)")
    for m in layers:
        m.slots = slots
    return slots

