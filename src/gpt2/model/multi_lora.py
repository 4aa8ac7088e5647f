"""Many LoRA adapters on one base model, batched: each row of a batch applies its own adapter's update.

    gpt2 serve BASE --adapter poet=runs/poet-lora --adapter coder=runs/coder-lora   # what uses it

    python -c "from gpt2.load import load; from gpt2.model.lora import read_adapter; \\
from gpt2.model.multi_lora import attach_adapters; m = load('BASE').model; \\
print(attach_adapters(m, [read_adapter(d, base=m) for d in ('ADAPTER_1', 'ADAPTER_2')]))"

Serving n adapters of one base as n merged models costs n copies of the base, and a batch can only hold
the rows of one of them. Punica (Chen et al. 2023, arXiv:2310.18547) and S-LoRA (Sheng et al. 2023,
arXiv:2311.03285) keep one base and batch every adapter's rows together: the base's matmul runs once for
the whole batch, and each row adds its own low-rank update B_i A_i x, taken from stacks of all the
adapters' matrices. This is that in plain PyTorch: where their fused GPU kernels (SGMV, BGMV) walk each
row's adapter, here the update of every adapter in the batch is two ordinary matmuls and a mask.

`attach_adapters(model, adapters)` replaces each block layer that any adapter targets with a
`MultiLoRALinear` holding, for that layer, every adapter's matrices side by side:

    lora_A (in, n, r)    [:, i]: adapter i's A, transposed and scaled by its alpha / rank
    lora_B (n, r, out)   [i]:    adapter i's B, transposed

r is the largest rank of the n adapters; a smaller one is zero-padded (zero columns of A meet zero rows of B:
nothing added), and an adapter that does not target the layer holds zeros there. Before each forward,
`AdapterSlots.set(slots)` names every row's slot (0: the base, i: the i-th adapter) and works out, once for
all layers, which k adapters the batch holds and a (B, 1, k·r) 1/0 mask giving each row its own adapter's
r columns. Then, with A and B restricted to those k adapters,

    y = base_layer(x) + ((x @ A) * mask) @ B          # (B, T, in) @ (in, k·r) ... @ (k·r, out)

so each present adapter's matrices are read once per step, whatever the batch size: the extra bytes read
grow with the k·r columns of the adapters present, not with the rows. (The first version gathered
A[slot] and B[slot] for every row and ran batched matmuls, as the Punica kernels' names suggest: that copies
rows × (in + out) × r numbers per layer per step, ~150 MB a step for 16 rows at GPT-2 124M shapes with rank
16 on all four layers, beside the base's 475 MB of weights; one run of bench/serve_adapters.py at commit
1e82263 had 16 streams mixed over 3 adapters at 0.59× the tokens/s of one adapter alone.)

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
    """Which adapter every row of the next forward applies; one object shared by all MultiLoRALinear of a model.

    `set(slots)` works out, once per forward, what every layer needs: the adapters present in the batch (k of
    them), the columns of the stacks to read (None: all n are present) and the (B, 1, k·r) mask that gives
    each row its own adapter's r columns (None: every row wants the one adapter present)."""

    def __init__(self, n_adapters: int, rank: int, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.n_adapters, self.rank, self.device, self.dtype = n_adapters, rank, torch.device(device), dtype
        self.active = False  # any row with an adapter at all
        self.present: torch.Tensor | None = None  # (k,) adapter indices (slot - 1) to read; None: all of them
        self.mask: torch.Tensor | None = None  # (B, 1, k·r) 1/0; None: all ones
        self.index: torch.Tensor | None = None  # (B,) each row's slot (for inspection; the layers read the mask)

    def set(self, slots: Sequence[int]) -> None:
        """slots[r] is row r's adapter (0 = the base, i = the i-th attached adapter)."""
        if any(not 0 <= s <= self.n_adapters for s in slots):
            raise UserError(f"adapter slots must be in 0..{self.n_adapters}, got {list(slots)}")
        device = self.device
        self.index = torch.tensor(list(slots), device=device)
        present = sorted({s for s in slots if s})
        self.active = bool(present)
        if not present:
            return
        self.present = None if len(present) == self.n_adapters else torch.tensor([s - 1 for s in present], device=device)
        if len(present) == 1 and all(slots):  # every row wants the same adapter: nothing to mask
            self.mask = None
            return
        where = {s: j for j, s in enumerate(present)}
        mask = torch.zeros(len(slots), len(present), self.rank, dtype=self.dtype)  # (B, k, r)
        for row, s in enumerate(slots):
            if s:
                mask[row, where[s]] = 1
        self.mask = mask.view(len(slots), 1, -1).to(device)  # (B, 1, k·r)


class MultiLoRALinear(nn.Module):
    """base_layer(x) plus, for each row, x (s_i A_i)ᵀ B_iᵀ with i = the row's adapter (module docstring)."""

    def __init__(self, base_layer: nn.Module, lora_A: torch.Tensor, lora_B: torch.Tensor, slots: AdapterSlots) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.in_features, self.out_features = lora_A.shape[0], lora_B.shape[2]
        self.register_buffer("lora_A", lora_A)  # (in, n, r), scaling folded in
        self.register_buffer("lora_B", lora_B)  # (n, r, out)
        self.slots = slots

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, in) → (B, T, out)."""
        y = self.base_layer(x)  # (B, T, out)
        slots = self.slots
        if not slots.active:
            return y
        A, B = self.lora_A, self.lora_B
        if slots.present is not None:  # only the adapters in this batch are read
            A, B = A.index_select(1, slots.present), B.index_select(0, slots.present)  # (in, k, r), (k, r, out)
        h = x @ A.reshape(self.in_features, -1)  # (B, T, k·r): every present adapter's r columns
        if slots.mask is not None:
            h = h * slots.mask  # each row keeps its own adapter's columns
        return y.add_(h @ B.reshape(-1, self.out_features))  # (B, T, out)

    def extra_repr(self) -> str:
        _, n, r = self.lora_A.shape
        return f"adapters={n}, rank={r}"


def attach_adapters(model: nn.Module, adapters: Sequence[Adapter]) -> nn.Module:
    """Give `model` (a GPT2LMHeadModel, modified in place) the adapters in slots 1..n; returns `model`.

    Each adapter must have been checked against this model's shapes (gpt2.model.lora.read_adapter does).
    The stacks are built in fp32 and stored in the dtype and on the device of the model's weights."""
    if not adapters:
        raise UserError("attach_adapters needs at least one adapter")
    if lora_layers(model) or any(isinstance(m, MultiLoRALinear) for m in model.modules()):
        raise UserError("this model carries adapters already: attach the adapters to a plain base")
    ref = model.transformer.wte.weight
    n, rank = len(adapters), max(cfg.rank for cfg, _ in adapters)
    slots = AdapterSlots(n, rank, device=ref.device, dtype=ref.dtype)
    for i, block in enumerate(model.transformer.h):
        for target, (parent, child) in TARGETS.items():
            users = [(k, cfg, w) for k, (cfg, w) in enumerate(adapters) if target in cfg.targets]
            if not users:
                continue
            owner, name = getattr(block, parent), f"transformer.h.{i}.{parent}.{child}"
            layer = getattr(owner, child)
            A = torch.zeros(layer.in_features, n, rank)  # (in, n, r)
            B = torch.zeros(n, rank, layer.out_features)  # (n, r, out)
            for k, cfg, w in users:
                A[:, k, : cfg.rank] = w[peft_key(name, "lora_A")].float().t() * (cfg.alpha / cfg.rank)
                B[k, : cfg.rank] = w[peft_key(name, "lora_B")].float().t()
            setattr(owner, child, MultiLoRALinear(layer, A.to(ref), B.to(ref), slots))
    return model


def adapter_slots(model: nn.Module) -> AdapterSlots:
    """The one AdapterSlots every MultiLoRALinear of `model` reads (bound afresh, so a copy of an attached
    model, such as the fast path's shared view, gets its own)."""
    layers = [m for m in model.modules() if isinstance(m, MultiLoRALinear)]
    if not layers:
        raise UserError("this model has no adapters attached (attach_adapters)")
    old = layers[0].slots
    slots = AdapterSlots(old.n_adapters, old.rank, device=old.device, dtype=old.dtype)
    for m in layers:
        m.slots = slots
    return slots

