"""CPU decoding fast path: a view of the model whose linear layers run oneDNN on pre-packed weights.

    python -c "from gpt2 import GPT2Config, GPT2LMHeadModel; from gpt2.generate.fastpath import inference_view; print(inference_view(GPT2LMHeadModel(GPT2Config.from_preset('tiny'))))"

Decoding one token is a chain of matrix-vector products, so its speed is the rate at which the
weights stream from memory. On the 2-core AMD EPYC (Zen 4) this project is measured on, PyTorch's
default CPU path for F.linear with one row (MKL sgemv on our (out, in) weights) reads about 14 GB/s,
while oneDNN's matmul on a weight reordered once into its blocked layout reads 28-30 GB/s in fp32 and
~24 GB/s in bf16 (the same 124M weight set, measured side by side: 35 ms vs 16-18 ms per token in
fp32). Prefill gains too (~2× at 512 tokens). These are the ops torch.compile's CPU backend emits
for frozen linear layers (`mkldnn::_reorder_linear_weight`, `mkldnn::_linear_pointwise`).

`inference_view(model)` returns a shallow copy of the model that shares every parameter with it, with
each large nn.Linear replaced by a `PackedLinear` holding the packed copy of its weight; the caller's model
is never modified. The copy costs one extra copy of the linear weights in memory (the tied LM head
is packed once more), and is cached per model until its weights change (a new tensor or an in-place
update bumps the stamp). Where oneDNN cannot run (not CPU, no mkldnn build, a dtype other than
fp32/bf16, or bf16 on a CPU without the instructions oneDNN's packed bf16 kernels need: AVX-512
BW/VL/DQ or AVX-NE-CONVERT, e.g. an AMD Zen 3 or most laptops) the model is returned as it is and
the plain PyTorch path runs. GPT2_NO_FAST_PATH=1 forces the plain path on any machine.
"""

from __future__ import annotations

import copy
import functools
import os
import weakref

import torch
from torch import nn

from gpt2.model.gpt2 import GPT2LMHeadModel


class PackedLinear(nn.Module):
    """y = x Wᵀ + b with W held in oneDNN's blocked layout (packed once, reused every call)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # Plain attributes, not parameters or buffers: the packed layout is opaque and never saved.
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1)
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.dtype = linear.weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # oneDNN has no primitive for a bf16 input on fp32 packed weights; under autocast (a trainer's samples
        # from an fp32 model) an attention output arrives in bf16, so it is read in the weights' dtype.
        if x.dtype != self.dtype:
            x = x.to(self.dtype)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed=oneDNN"


def can_pack(model: nn.Module) -> bool:
    """True where the packed path runs: CPU weights in fp32, or bf16 on a CPU whose oneDNN runs packed bf16,
    and a PyTorch built with oneDNN. GPT2_NO_FAST_PATH=1 says no everywhere (the plain path is then tested)."""
    if os.environ.get("GPT2_NO_FAST_PATH", "0") not in ("", "0"):
        return False
    p = next(model.parameters())
    if p.device.type != "cpu" or p.dtype not in (torch.float32, torch.bfloat16):
        return False
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    return p.dtype != torch.bfloat16 or packed_bf16_supported()


@functools.cache
def packed_bf16_supported() -> bool:
    """Whether oneDNN's packed bf16 linear runs on this CPU. It refuses ("bf16 path needs the cpu support
    avx_ne_convert or avx512bw, avx512vl and avx512dq") on AVX2-only CPUs, where bf16 is emulated."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if check is not None and not check():
        return False
    try:  # the check above is what PyTorch itself consults; a tiny reorder confirms it on this build
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(16, 16, dtype=torch.bfloat16), 1)
    except RuntimeError:
        return False
    return True


def _stamp(model: nn.Module) -> tuple:
    """Changes whenever a weight is replaced or updated in place (data pointer, version counter, dtype)."""
    return tuple((p.data_ptr(), p._version, p.dtype) for p in model.parameters())


# Below this many weights a linear layer is cheap to read and oneDNN's fixed cost per call (~15 µs against
# ~3-7 µs for F.linear, measured on 64×64 to 512×128 weights) dominates: those layers stay plain.
MIN_PACKED_NUMEL = 2**18

_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, nn.Module]] = weakref.WeakKeyDictionary()


def shared_copy(model: GPT2LMHeadModel) -> GPT2LMHeadModel:
    """A copy of the module tree in eval mode that shares every parameter and buffer with `model`."""
    # deepcopy copies the module objects only: the memo maps each tensor to itself.
    memo = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, memo).eval()


def inference_view(model: GPT2LMHeadModel, *, pack: bool = True) -> GPT2LMHeadModel:
    """The model ready for generation without touching it: packed linears where possible (see the module
    docstring), else the model itself when already in eval mode, else an eval-mode shared copy."""
    big = [m for m in model.modules() if isinstance(m, nn.Linear) and m.weight.numel() >= MIN_PACKED_NUMEL]
    if not (pack and big and can_pack(model)):
        return shared_copy(model) if model.training else model
    stamp = _stamp(model)
    hit = _CACHE.get(model)
    if hit is not None and hit[0] == stamp:
        return hit[1]  # type: ignore[return-value]
    fast = shared_copy(model)
    for module in list(fast.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and child.weight.numel() >= MIN_PACKED_NUMEL:
                setattr(module, name, PackedLinear(child))
    _CACHE[model] = (stamp, fast)
    return fast
