"""The LM head's cross-entropy, fused: logits, loss and both gradients with three matmuls and two passes.

    python -c "import torch; from gpt2.model.loss import lm_head_cross_entropy as f; \\
        print(f(torch.randn(8, 16), torch.randn(100, 16), torch.randint(0, 100, (8,))))"

`F.cross_entropy(x @ W.T, targets)` runs log_softmax forward (an exp over every logit, a full write),
then in backward zero-fills a (N, V) gradient for nll_loss, scatters into it, and runs log_softmax
backward (another exp and two more full passes). With GPT-2's 50,257-way vocabulary those passes over
N × V floats cost about as much as a tenth of the step on a CPU (measured: bench/train_step.py).

Here forward keeps the logits and their logsumexp; backward turns the logits, in place, into
softmax × (grad / n) with one subtract and one exp (log(grad / n) folded into the subtraction),
subtracts grad / n at each target, and multiplies back: d_x = G W, d_W = Gᵀ x. The plain formula is
kept as `reference_cross_entropy`, and tests hold the two equal in value and gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reference_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mean CE of (x Wᵀ) against targets, ignoring -100: the plain formula."""
    logits = x @ weight.t()
    return F.cross_entropy(logits.float(), targets, ignore_index=-100)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


class _LMHeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        cdt = _compute_dtype(x)
        xc, wc = x.to(cdt), weight.to(cdt)
        logits = xc @ wc.t()  # (N, V)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # softmax in fp32 at least
        lse = torch.logsumexp(logits, dim=-1)  # (N,)
        valid = targets != -100
        n = valid.sum().clamp(min=1)
        picked = logits.gather(1, targets.clamp(min=0)[:, None]).squeeze(1)  # (N,)
        loss = torch.where(valid, lse - picked, 0.0).sum() / n
        ctx.save_for_backward(xc, wc, targets, logits, lse, n)
        ctx.dtypes = (x.dtype, weight.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        if getattr(ctx, "consumed", False):
            raise RuntimeError("lm_head_cross_entropy keeps its logits in place; it cannot backward twice "
                               "(retain_graph): use the plain loss (return_logits=True) for that")
        ctx.consumed = True
        xc, wc, targets, logits, lse, n = ctx.saved_tensors
        x_dtype, w_dtype = ctx.dtypes
        valid = targets != -100
        scale = torch.where(valid, grad_loss.to(logits.dtype) / n, 0.0)  # (N,) d loss / d (per-row CE)
        # softmax(logits) * scale = exp(logits - lse + log(scale)); rows with scale 0 become exactly 0.
        logits.sub_((lse - scale.log())[:, None]).exp_()  # (N, V) in place: no new N × V buffer
        logits.scatter_add_(1, targets.clamp(min=0)[:, None], -scale[:, None])
        g = logits.to(xc.dtype)
        grad_x = (g @ wc).to(x_dtype) if ctx.needs_input_grad[0] else None
        grad_w = (g.t() @ xc).to(w_dtype) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, None


def lm_head_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits x Wᵀ against targets (-100 = ignore), without returning the logits.

    x (N, C) final hidden states, weight (V, C) the head, targets (N,) ids in [0, V) or -100.
    The result equals reference_cross_entropy (to float rounding), gradients included.
    """
    return _LMHeadCrossEntropy.apply(x, weight, targets)
