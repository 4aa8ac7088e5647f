"""Weight-only int8 for CPU decoding: per-output-channel int8 matrices through PyTorch's own int8 kernel.

    python -m gpt2 generate runs/shakespeare-cpu "ROMEO:" --quantize int8 --greedy
    python -c "from gpt2 import GPT2Config, GPT2LMHeadModel; from gpt2.generate.quant import quantize; print(quantize(GPT2LMHeadModel(GPT2Config.from_preset('tiny')), 'int8'))"

Decoding one token streams every weight from memory once, so its speed is bytes read: int8 weights are a
quarter of fp32's. `quantize(model, "int8")` returns a copy of the model (sharing every other tensor
with it) whose four block matrices (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj) and LM head are
`Int8Linear`: each row (output channel) of W stored as int8 q with one bf16 scale s ≈ max|row| / 127
(q is rounded against the bf16 scale, so W ≈ s[:, None] · q holds for the scale as stored). The product
runs in `torch.ops.aten._weight_int8pack_mm` (x @ (q · s)ᵀ without materialising W; the kernel gpt-fast
and torchao's int8 weight-only path call on CPU), always on **bf16 activations**: that is the kernel's
vectorised path, on AVX2 as on AVX-512. With fp32 activations it runs a scalar loop, 6-14× slower than
fp32's own matmul at one row and ~40× at 128 (`bench/decode_vs_llamacpp.py --kernels`, measured on
Zen 4 with and without ATEN_CPU_CAPABILITY=avx2). So an fp32 model's activations are rounded to bf16 for
these five matrices and the products come back in fp32; embeddings, LayerNorms, attention and biases
keep the model's dtype. The plain path, F.linear on the dequantized weight s · q in the activations' own
dtype, is kept beside it as the reference (`kernel=False`); tests hold the two within bf16's rounding.
The LM head is tied to the token embedding: only the head's copy is int8, the embedding lookup reads the
original. A model carrying LoRA adapters is merged first (on a copy).
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from gpt2.errors import UserError
from gpt2.model.gpt2 import GPT2LMHeadModel

Quantization = Literal["int8"]
QUANTIZATIONS: tuple[str, ...] = ("int8",)
BLOCK_MATRICES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def check_quantization(name: str | None) -> None:
    """Refuse a --quantize value other than int8 (before anything loads)."""
    if name is not None and name not in QUANTIZATIONS:
        raise UserError(f"unknown --quantize {name!r}; the one weight quantization is int8")


class Int8Linear(nn.Module):
    """y = x (s · q)ᵀ + b, q (out, in) int8 and s (out,) one bf16 scale per output channel."""

    def __init__(self, linear: nn.Linear, *, kernel: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()  # (out, in)
        # bf16 scales: the kernel multiplies by them in the (bf16) activations' dtype; q is rounded against
        # the scale as stored, so s · q is the weight both paths use.
        scale = (w.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127.0).to(torch.bfloat16)
        q = torch.round(w / scale.float()[:, None]).clamp(-127, 127).to(torch.int8)  # (out, in)
        self.register_buffer("weight_int8", q)
        self.register_buffer("scales", scale)  # (out,)
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.kernel = kernel and self.weight_int8.device.type == "cpu"

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """s · q in `dtype`: what the reference path multiplies by."""
        return self.weight_int8.to(dtype) * self.scales.to(dtype)[:, None]  # (out, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.kernel:
            return F.linear(x, self.dequantized(x.dtype), self.bias)
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()  # (B*T, in): the fast path's input
        y = torch.ops.aten._weight_int8pack_mm(rows, self.weight_int8, self.scales).to(x.dtype)  # (B*T, out)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)  # (..., out)

    def extra_repr(self) -> str:
        path = "_weight_int8pack_mm on bf16 activations" if self.kernel else "dequantized F.linear"
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per channel, {path}"


def _merged(model: GPT2LMHeadModel) -> GPT2LMHeadModel:
    """`model` itself, or a merged copy when it carries LoRA adapters (the caller's model is left as it is)."""
    from gpt2.model.lora import lora_layers, merge_lora  # a leaf module, as gpt2.load uses it

    if not lora_layers(model):
        return model
    return merge_lora(copy.deepcopy(model))


def quantize(model: GPT2LMHeadModel, name: Quantization = "int8", *, kernel: bool = True,
             head: bool = True) -> GPT2LMHeadModel:
    """A copy of `model` with int8 block matrices (and LM head, unless head=False); see the module docstring.

    kernel=False runs the dequantized reference path instead of the int8 kernel."""
    from gpt2.generate.fastpath import shared_copy

    check_quantization(name)
    if not isinstance(model, GPT2LMHeadModel):
        raise UserError("--quantize int8 applies to a language model (GPT2LMHeadModel)")
    out = shared_copy(_merged(model))
    with torch.no_grad():
        for block in out.transformer.h:
            for path in BLOCK_MATRICES:
                parent, child = path.split(".")
                owner = getattr(block, parent)
                setattr(owner, child, Int8Linear(getattr(owner, child), kernel=kernel))
        if head:
            out.lm_head = Int8Linear(out.lm_head, kernel=kernel)
    return out
