"""Model size summaries: parameters, FLOPs per token and memory, for a preset or a model directory.

    gpt2 model info gpt2-xl
    gpt2 model info runs/sft-alpaca        # anything gpt2.load takes: a run, RUN/best, a checkpoint, an adapter
    gpt2 model info gpt2 --seq-len 256

This module reads a preset name or a directory holding config.json; `gpt2 model info` resolves every other
name (a run, `RUN/best`, a hub id, an adapter: its base's shape) through gpt2.load.describe first.

FLOPs follow the usual accounting (Kaplan et al. 2020, PaLM appendix B): a forward pass costs 2 FLOPs
per weight of every matmul (the tied LM head included, embedding look-ups excluded) plus 4·n_layer·T·n_embd
for attention's scores and weighted sum over a context of T; training (forward + backward) is 3× that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gpt2.errors import UserError
from gpt2.model.config import PRESETS, GPT2Config
from gpt2.model.gpt2 import GPT2LMHeadModel


def resolve_config(source: str | Path) -> GPT2Config:
    """A preset name or a directory holding config.json."""
    if str(source) in PRESETS:
        return GPT2Config.from_preset(str(source))
    path = Path(source)
    if path.exists():
        return GPT2Config.load(path)
    raise UserError(f"{source!r} is neither a model preset ({', '.join(PRESETS)}) nor a model directory")


def flops_per_token(config: GPT2Config, seq_len: int | None = None, *, training: bool = True) -> int:
    """Matmul FLOPs to process one token at context length seq_len (default n_positions)."""
    T = seq_len or config.n_positions
    C, L = config.n_embd, config.n_layer
    per_block = C * 3 * C + C * C + 2 * C * config.inner_dim  # c_attn, attn.c_proj, c_fc, mlp.c_proj
    matmul_weights = L * per_block + config.vocab_size * C
    forward = 2 * matmul_weights + 4 * L * T * C
    return 3 * forward if training else forward


def model_info(source: str | Path | GPT2Config, *, seq_len: int | None = None, name: str | None = None
               ) -> dict[str, Any]:
    """The numbers `gpt2 model info` prints, as a dict (`name`: what to call a GPT2Config source)."""
    config = source if isinstance(source, GPT2Config) else resolve_config(source)
    T = seq_len or config.n_positions
    if T > config.n_positions:
        raise UserError(f"--seq-len {T} is longer than the model's n_positions={config.n_positions}")
    with torch.device("meta"):
        model = GPT2LMHeadModel(config)
    head = config.num_labels * config.n_embd  # a classifier's score head (no bias) replaces the tied LM head
    n = model.num_parameters() + head
    gib = 1024**3
    return {
        "source": name or (str(source) if not isinstance(source, GPT2Config) else "config"),
        "parameters": n,
        "parameters_without_embeddings": model.num_parameters(exclude_embeddings=True) + head,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_embd": config.n_embd,
        "n_positions": config.n_positions,
        "vocab_size": config.vocab_size,
        "labels": list(config.id2label.values()),
        "padded_vocab_size": config.padded_vocab_size,
        "seq_len": T,
        "forward_flops_per_token": flops_per_token(config, T, training=False),
        "training_flops_per_token": flops_per_token(config, T, training=True),
        "memory_gib": {
            "weights_fp32": n * 4 / gib,
            "weights_bf16": n * 2 / gib,
            "grads_fp32": n * 4 / gib,
            "adamw_states_fp32": n * 8 / gib,
            "training_total_fp32": n * 16 / gib,
        },
    }


def render_info(info: dict[str, Any]) -> str:
    """A short table for people."""
    m = info["memory_gib"]
    rows = [("source", info["source"])]
    if info.get("directory") and info["directory"] != info["source"]:
        rows.append(("directory", info["directory"]))
    if info.get("adapter"):
        a = info["adapter"]
        rows += [("adapter", f"LoRA rank {a['rank']}, {a['parameters']:,} parameters ({a['task_type']})"),
                 ("base (counted below)", a["base"])]
    if info.get("labels"):
        rows.append(("labels", ", ".join(info["labels"])))
    rows += [
        ("parameters", f"{info['parameters']:,}"),
        ("  without embeddings", f"{info['parameters_without_embeddings']:,}"),
        ("layers × heads × width", f"{info['n_layer']} × {info['n_head']} × {info['n_embd']}"),
        ("context / vocabulary", f"{info['n_positions']} / {info['vocab_size']:,}"
         + (f" (padded to {info['padded_vocab_size']:,})" if info["padded_vocab_size"] != info["vocab_size"] else "")),
        (f"FLOPs/token forward (T={info['seq_len']})", f"{info['forward_flops_per_token'] / 1e9:.3f} G"),
        (f"FLOPs/token training (T={info['seq_len']})", f"{info['training_flops_per_token'] / 1e9:.3f} G"),
        ("weights fp32 / bf16", f"{m['weights_fp32']:.2f} / {m['weights_bf16']:.2f} GiB"),
        ("grads fp32", f"{m['grads_fp32']:.2f} GiB"),
        ("AdamW states fp32", f"{m['adamw_states_fp32']:.2f} GiB"),
        ("training total (w+g+AdamW), no activations", f"{m['training_total_fp32']:.2f} GiB"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
