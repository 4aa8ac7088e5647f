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

`lm_head_token_nll` gives each row's cross-entropy instead of their mean (what DPO sums per response): the
same fused head when a gradient is wanted (its backward takes a gradient of either sign per row), and, with
no gradient (scoring), the rows in chunks of about 64 MB of logits, so scoring a batch never holds a whole
(rows × vocabulary) matrix: at GPT-2's vocabulary 64 sequences of 255 tokens are 3.3 GB per fp32 copy.
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


def _head_forward(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, W in the compute dtype, logits (N, V) in fp32 at least, their logsumexp (N,), each row's CE (N,),
    0 where targets is -100): the forward both fused heads share."""
    cdt = _compute_dtype(x)
    xc, wc = x.to(cdt), weight.to(cdt)
    logits = xc @ wc.t()  # (N, V)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # softmax in fp32 at least
    lse = torch.logsumexp(logits, dim=-1)  # (N,)
    picked = logits.gather(1, targets.clamp(min=0)[:, None]).squeeze(1)  # (N,)
    return xc, wc, logits, lse, torch.where(targets != -100, lse - picked, 0.0)


class _LMHeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        xc, wc, logits, lse, rows = _head_forward(x, weight, targets)
        n = (targets != -100).sum().clamp(min=1)
        loss = rows.sum() / n
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


def reference_token_nll(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each row's CE of (x Wᵀ) against targets, 0 where targets is -100: the plain formula."""
    logits = x @ weight.t()
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits, targets, ignore_index=-100, reduction="none")


class _LMHeadTokenNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        xc, wc, logits, lse, rows = _head_forward(x, weight, targets)
        ctx.save_for_backward(xc, wc, targets, logits, lse)
        ctx.dtypes = (x.dtype, weight.dtype)
        return rows  # (N,)

    @staticmethod
    def backward(ctx, grad_rows: torch.Tensor):
        if getattr(ctx, "consumed", False):
            raise RuntimeError("lm_head_token_nll keeps its logits in place; it cannot backward twice")
        ctx.consumed = True
        xc, wc, targets, logits, lse = ctx.saved_tensors
        x_dtype, w_dtype = ctx.dtypes
        g = torch.where(targets != -100, grad_rows.to(logits.dtype), 0.0)  # (N,): either sign (DPO's rejected)
        logits.sub_(lse[:, None]).exp_().mul_(g[:, None])  # softmax × g, in place
        logits.scatter_add_(1, targets.clamp(min=0)[:, None], -g[:, None])
        d = logits.to(xc.dtype)
        grad_x = (d @ wc).to(x_dtype) if ctx.needs_input_grad[0] else None
        grad_w = (d.t() @ xc).to(w_dtype) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, None


def _chunked_token_nll(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                       chunk_bytes: int) -> torch.Tensor:
    """lm_head_token_nll with no gradient: rows in chunks, one chunk's logits alive at a time."""
    cdt = _compute_dtype(x)
    xc, wc = x.to(cdt), weight.to(cdt)
    rows = max(1, chunk_bytes // (4 * weight.shape[0]))
    out = torch.zeros(x.shape[0], dtype=torch.promote_types(cdt, torch.float32), device=x.device)  # (N,)
    for i in range(0, x.shape[0], rows):
        t = targets[i: i + rows]
        logits = (xc[i: i + rows] @ wc.t()).to(out.dtype)  # (rows, V)
        picked = logits.gather(1, t.clamp(min=0)[:, None]).squeeze(1)
        out[i: i + rows] = torch.where(t != -100, torch.logsumexp(logits, dim=-1) - picked, 0.0)
    return out


def lm_head_token_nll(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                      chunk_bytes: int = 64 << 20) -> torch.Tensor:
    """Per-row cross-entropy (N,) of logits x Wᵀ against targets, 0 where targets is -100; no logits returned.

    x (N, C) final hidden states, weight (V, C), targets (N,). Equals reference_token_nll (to float
    rounding), gradients included. With no gradient wanted, scores `chunk_bytes` of logits at a time."""
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _LMHeadTokenNLL.apply(x, weight, targets)
    return _chunked_token_nll(x, weight, targets, chunk_bytes)
