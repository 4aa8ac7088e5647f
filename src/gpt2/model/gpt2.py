"""GPT-2 in plain PyTorch: attention, MLP, block, model, LM head and a preallocated KV cache.

    python -c "from gpt2 import GPT2Config, GPT2LMHeadModel; m = GPT2LMHeadModel(GPT2Config.from_preset('tiny')); print(m)"

Module and parameter names are Hugging Face's (`transformer.h.0.attn.c_attn`, ...), so state dicts map
one to one onto `transformers.GPT2LMHeadModel` (only HF's Conv1D weights are stored transposed; see
hf.py). The modules are single-device and do no I/O: DDP, FSDP and torch.compile wrap them from outside.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from gpt2.errors import UserError
from gpt2.model.config import _TANH_GELU, GPT2Config
from gpt2.model.loss import lm_head_cross_entropy, lm_head_token_nll

# The head's rows in steps of 64: each new row count is a new oneDNN kernel on CPU (see PAD_MULTIPLE in
# gpt2.finetune.instruct_data); the extra rows are masked (-100), so they add nothing but ~2% of the head's work.
HEAD_ROWS_MULTIPLE = 64


def _token_nll(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each target's cross-entropy (B, T), 0 at -100, with the head run only on the rows that have a target."""
    B, T, C = x.shape
    flat = targets.reshape(-1)  # (B*T,)
    rows = (flat != -100).nonzero().squeeze(1)  # (M,): a prompt's and the padding's rows never reach the head
    t = flat.index_select(0, rows)  # (M,)
    pad = -rows.numel() % HEAD_ROWS_MULTIPLE
    if pad:  # masked copies of row 0, scored 0
        rows, t = torch.cat([rows, rows.new_zeros(pad)]), torch.cat([t, t.new_full((pad,), -100)])
    nll = lm_head_token_nll(x.reshape(-1, C).index_select(0, rows), weight, t)  # (M + pad,)
    return nll.new_zeros(B * T).index_put((rows,), nll, accumulate=True).view(B, T)  # pads add their 0


class LMOutput(NamedTuple):
    """What GPT2LMHeadModel.forward returns: unpack as `logits, loss = model(x, targets=y)`."""

    logits: torch.Tensor | None  # (B, T, vocab_size), padded rows never included; None if not asked for
    loss: torch.Tensor | None  # mean cross-entropy over targets != -100, when targets were given


class KVCache:
    """Keys and values of every layer, preallocated for `max_len` positions so decoding never reallocates.

    Layout (n_layer, B, n_head, max_len, head_dim). `pos` counts the positions filled so far; each forward
    writes its T new positions at [pos, pos + T) in every layer and then advances `pos` once.
    """

    def __init__(
        self,
        config: GPT2Config,
        *,
        batch_size: int,
        max_len: int | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        max_len = max_len or config.n_positions
        if max_len > config.n_positions:
            raise UserError(f"KVCache max_len={max_len} exceeds the model's n_positions={config.n_positions}")
        shape = (config.n_layer, batch_size, config.n_head, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.pos = 0

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's (B, n_head, T, head_dim) keys/values; return all keys/values so far."""
        T = k.shape[2]
        end = self.pos + T
        self.k[layer_idx, :, :, self.pos : end] = k
        self.v[layer_idx, :, :, self.pos : end] = v
        return self.k[layer_idx, :, :, :end], self.v[layer_idx, :, :, :end]

    def advance(self, n: int) -> None:
        self.pos += n

    def reset(self) -> None:
        self.pos = 0

    def reorder(self, index: torch.Tensor) -> None:
        """Keep only / reorder batch rows (e.g. drop finished sequences)."""
        self.k = self.k[:, index]
        self.v = self.v[:, index]


def _activation(name: str):
    if name in _TANH_GELU:
        # One fused kernel; HF's NewGELUActivation computes the same tanh formula in ~8 separate ops.
        return lambda x: F.gelu(x, approximate="tanh")
    return {"gelu": F.gelu, "relu": F.relu, "silu": F.silu, "swish": F.silu}[name]


def _math_attention_is_faster(q: torch.Tensor, k: torch.Tensor, kv_cache: KVCache | None) -> bool:
    """On a CPU in bf16, PyTorch's flash-attention kernel loses to plain batched matmuls + softmax for
    short sequences (forward + backward; it wins from ~1024 keys on: `python bench/train_step.py
    --attention`), and attention is a large part of a small model's training step. Short bf16
    sequences take the math path (the reference's formula); KV-cache decoding is left alone."""
    return q.device.type == "cpu" and q.dtype == torch.bfloat16 and k.shape[-2] <= 512 and kv_cache is None


class GPT2Attention(nn.Module):
    """Causal multi-head self-attention: one fused QKV projection, SDPA or a plain reference path."""

    def __init__(self, config: GPT2Config, layer_idx: int = 0) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.head_dim = config.head_dim
        self.layer_idx = layer_idx
        self.attn_pdrop = config.attn_pdrop
        self.attn_implementation = config.attn_implementation
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.attn_dropout = nn.Dropout(config.attn_pdrop)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        is_causal: bool = True,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        """x (B, T, C); mask (B, 1, T, T_keys) bool, True = may attend, or None with is_causal."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 × (B, T, C)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, n_head, T, head_dim)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, n_head, T, head_dim)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, n_head, T, head_dim)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, n_head, T_keys, head_dim)
        if self.attn_implementation == "sdpa" and not _math_attention_is_faster(q, k, kv_cache):
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                dropout_p=self.attn_pdrop if self.training else 0.0,
                is_causal=is_causal and mask is None,
            )  # (B, n_head, T, head_dim)
        else:
            y = self._reference_attention(q, k, v, mask=mask, is_causal=is_causal)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def _reference_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask: torch.Tensor | None, is_causal: bool
    ) -> torch.Tensor:
        """softmax(q kᵀ / sqrt(d) + mask) v, written out: the reference the SDPA path is tested against."""
        T, S = q.shape[-2], k.shape[-2]
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))  # (B, n_head, T, S)
        if mask is None and is_causal:
            # Queries are the last T of the S key positions.
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
        if mask is not None:
            att = att.masked_fill(~mask, float("-inf"))
        att = F.softmax(att, dim=-1)
        att = self.attn_dropout(att)
        return att @ v  # (B, n_head, T, head_dim)


class GPT2MLP(nn.Module):
    """Position-wise feed-forward: n_embd → n_inner → n_embd with GPT-2's tanh GELU."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.inner_dim)
        self.c_proj = nn.Linear(config.inner_dim, config.n_embd)
        self.act = _activation(config.activation_function)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class GPT2Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then + mlp(ln_2(x))."""

    def __init__(self, config: GPT2Config, layer_idx: int = 0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = GPT2Attention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = GPT2MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        is_causal: bool = True,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask=mask, is_causal=is_causal, kv_cache=kv_cache)
        return x + self.mlp(self.ln_2(x))


def _attention_mask(
    attention_mask: torch.Tensor | None, *, T: int, past: int, device: torch.device
) -> tuple[torch.Tensor | None, bool]:
    """Turn a (B, past + T) 1/0 padding mask into what attention takes: (bool mask or None, is_causal).

    No padding and no cache: (None, True), so SDPA runs its causal kernel without a mask tensor.
    One new token after a cache with no padding: (None, False), it may see every key.
    Otherwise a (B, 1, T, past + T) bool mask: causal, minus padded keys. Each query may always see
    itself, so rows of padding positions never become all -inf (NaN); their outputs are ignored anyway.
    """
    S = past + T
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None
    if attention_mask is None:
        if past == 0:
            return None, True
        if T == 1:
            return None, False
    q_pos = torch.arange(past, S, device=device)[:, None]  # (T, 1)
    k_pos = torch.arange(S, device=device)[None, :]  # (1, S)
    mask = (k_pos <= q_pos)[None, None]  # (1, 1, T, S)
    if attention_mask is not None:
        keys = attention_mask.to(device=device, dtype=torch.bool)[:, None, None, :]  # (B, 1, 1, S)
        mask = (mask & keys) | (k_pos == q_pos)[None, None]  # (B, 1, T, S)
    return mask, False


class GPT2Model(nn.Module):
    """Token + position embeddings, n_layer blocks and the final LayerNorm: (B, T) ids → (B, T, C)."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.padded_vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList(GPT2Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        """input_ids (B, T); attention_mask (B, past + T) with 1 for real tokens and 0 for (left) padding.

        Positions default to 0, 1, ... counted over real tokens only, so a left-padded row gets the
        same positions (and outputs) as the same row unpadded.
        """
        B, T = input_ids.shape
        past = kv_cache.pos if kv_cache is not None else 0
        if past + T > self.config.n_positions:
            raise UserError(
                f"sequence of {past + T} tokens is longer than the model's n_positions={self.config.n_positions}"
            )
        if kv_cache is not None and past + T > kv_cache.max_len:
            raise UserError(f"KV cache holds {kv_cache.max_len} positions, {past + T} needed")
        if attention_mask is not None and attention_mask.shape != (B, past + T):
            raise UserError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, expected (batch, past + new tokens) = "
                f"{(B, past + T)}"
            )
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]  # (B, T)
            else:
                position_ids = torch.arange(past, past + T, device=input_ids.device)[None]  # (1, T)
        mask, is_causal = _attention_mask(attention_mask, T=T, past=past, device=input_ids.device)
        x = self.drop(self.wte(input_ids) + self.wpe(position_ids))  # (B, T, C)
        for block in self.h:
            x = block(x, mask=mask, is_causal=is_causal, kv_cache=kv_cache)
        if kv_cache is not None:
            kv_cache.advance(T)
        return self.ln_f(x)


def init_gpt2_weights(model: nn.Module, config: GPT2Config) -> None:
    """GPT-2's initialisation, in place: N(0, initializer_range) for linear and embedding weights, zero
    biases, unit LayerNorms, residual projections scaled down, padded vocabulary rows zeroed.

    Shared by the language model and the sequence classifier (whose score head it draws the same way)."""
    std = config.initializer_range

    def init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    model.apply(init)
    # GPT-2 paper §2.3: scale the residual projections by 1/sqrt(N), N = 2 per block (attn + MLP).
    proj_std = std / math.sqrt(2 * config.n_layer)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            nn.init.normal_(p, mean=0.0, std=proj_std)
    with torch.no_grad():
        model.transformer.wte.weight[config.vocab_size :].zero_()  # padding rows: never scored


class GPT2Sizes:
    """What every GPT-2 with a head (LM, classifier) reads from its body: parameter counts and the device."""

    config: GPT2Config
    transformer: GPT2Model

    def num_parameters(self, *, exclude_embeddings: bool = False) -> int:
        """Trainable parameters, a tied head counted once and padded vocabulary rows not at all."""
        n = sum(p.numel() for p in self.parameters())  # type: ignore[attr-defined]
        n -= (self.config.padded_vocab_size - self.config.vocab_size) * self.config.n_embd
        if exclude_embeddings:
            n -= self.config.vocab_size * self.config.n_embd + self.transformer.wpe.weight.numel()
        return n

    @property
    def device(self) -> torch.device:
        return self.transformer.wte.weight.device


class GPT2LMHeadModel(GPT2Sizes, nn.Module):
    """GPT2Model plus the language-model head, tied to the token embedding as in GPT-2."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.config = config
        self.transformer = GPT2Model(config)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied: one matrix, trained by both uses
        if self.transformer.wte.weight.is_meta:
            return  # built on the meta device to be loaded into: initialising would only cost time
        init_gpt2_weights(self, config)

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        targets: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        return_logits: bool = True,
        reduction: Literal["mean", "none"] = "mean",
    ) -> LMOutput:
        """input_ids (B, T) → logits (B, T, vocab_size); targets (B, T) are the next tokens, -100 = ignore.

        Targets are already shifted (targets[:, t] is the token after input_ids[:, t]), as the data
        loader yields them; the loss is the mean cross-entropy over the targets that are not -100.
        With targets and return_logits=False (what training uses) the head and the loss run fused
        (gpt2.model.loss), faster and lighter, and logits come back as None. reduction="none" (with
        return_logits=False) gives each target's cross-entropy (B, T) instead, 0 where targets is -100, and
        runs the head only on the rows that have a target (what DPO sums per response).
        """
        if reduction not in ("mean", "none") or (reduction == "none" and (targets is None or return_logits)):
            raise ValueError(f"reduction={reduction!r}: 'mean', or 'none' with targets and return_logits=False")
        x = self.transformer(
            input_ids, attention_mask=attention_mask, position_ids=position_ids, kv_cache=kv_cache
        )  # (B, T, C)
        V = self.config.vocab_size
        if targets is not None and not return_logits:
            weight = self.lm_head.weight if self.config.padded_vocab_size == V else self.lm_head.weight[:V]
            if reduction == "none":
                return LMOutput(None, _token_nll(x, weight, targets))
            loss = lm_head_cross_entropy(x.reshape(-1, x.size(-1)), weight, targets.reshape(-1))  # (B*T, C)
            return LMOutput(None, loss)
        logits = self.lm_head(x)  # (B, T, padded_vocab)
        if self.config.padded_vocab_size != self.config.vocab_size:
            logits = logits[..., : self.config.vocab_size]  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-100
            )
        return LMOutput(logits, loss)

    # ------------------------------------------------------------------------------------------- I/O
    @classmethod
    def from_pretrained(
        cls,
        source: str | Path,
        *,
        revision: str | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        **config_overrides: Any,
    ) -> GPT2LMHeadModel:
        """Build a GPT2LMHeadModel from an HF-format directory (ours or HF's) or a hub id, and load its weights.

        config_overrides change fields that do not touch weight shapes (dropout, attn_implementation, ...).
        """
        from gpt2.model.config import LM_ARCHITECTURE
        from gpt2.model.hf import apply_overrides, load_state, read_config, resolve_source, wrong_kind_error

        directory = resolve_source(source, revision=revision)
        config, architecture = read_config(directory)
        if architecture != LM_ARCHITECTURE:
            raise wrong_kind_error(directory, architecture)
        apply_overrides(config, config_overrides)
        model = load_state(directory, config, cls, head="lm", device=device, dtype=dtype)
        assert isinstance(model, GPT2LMHeadModel)
        return model

    def save_pretrained(self, directory: str | Path, *, safe_serialization: bool = True) -> None:
        """Write config.json + model.safetensors (or pytorch_model.bin) that transformers loads as they are."""
        from gpt2.model.hf import save_pretrained

        save_pretrained(self, directory, safe_serialization=safe_serialization)
