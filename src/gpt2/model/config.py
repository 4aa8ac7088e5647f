"""GPT2Config: the model's shape, with Hugging Face's field names, named presets, and config.json in and out.

    python -c "from gpt2.model.config import GPT2Config; print(GPT2Config.from_preset('gpt2'))"

The field names are HF's, so a `config.json` written here is read by `transformers.GPT2Config` and the
other way round. Two fields are ours and never change what the model computes:
`pad_vocab_size_multiple` (round the embedding table up for faster matmuls) and `attn_implementation`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gpt2.errors import UserError, UserFileNotFoundError

AttnImplementation = Literal["sdpa", "eager"]

# GELU variants HF GPT-2 configs name; GPT-2 was trained with the tanh approximation ("gelu_new").
_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
ACTIVATIONS = (*_TANH_GELU, "gelu", "relu", "silu", "swish")


@dataclass
class GPT2Config:
    """Shape and regularisation of a GPT-2; field names follow `transformers.GPT2Config`."""

    vocab_size: int = 50257
    """Number of token ids the model scores (GPT-2: 50,257)."""
    n_positions: int = 1024
    """Longest context, in tokens: the size of the learned position table."""
    n_embd: int = 768
    """Width of the residual stream."""
    n_layer: int = 12
    """Number of transformer blocks."""
    n_head: int = 12
    """Attention heads per block; must divide n_embd."""
    n_inner: int | None = None
    """Width of the MLP's hidden layer; None means 4 × n_embd."""
    activation_function: str = "gelu_new"
    """MLP non-linearity: gelu_new (GPT-2's tanh GELU), gelu, relu, silu."""
    resid_pdrop: float = 0.1
    """Dropout on the attention and MLP outputs before they join the residual stream."""
    embd_pdrop: float = 0.1
    """Dropout on the sum of token and position embeddings."""
    attn_pdrop: float = 0.1
    """Dropout on the attention probabilities."""
    layer_norm_epsilon: float = 1e-5
    """LayerNorm epsilon."""
    initializer_range: float = 0.02
    """Std of the normal initialisation of weights."""
    bos_token_id: int = 50256
    """Id of the beginning-of-text token (GPT-2 uses <|endoftext|> for both)."""
    eos_token_id: int = 50256
    """Id of the end-of-text token."""
    pad_vocab_size_multiple: int = 1
    """Round the embedding table up to a multiple of this (64 or 128 speeds up GPUs); padded rows are never scored."""
    attn_implementation: AttnImplementation = "sdpa"
    """sdpa: F.scaled_dot_product_attention; eager: the plain matmul-softmax reference."""
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """Other keys found in a config.json (kept so a save writes them back)."""

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------------------------------ derived
    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def inner_dim(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return math.ceil(self.vocab_size / m) * m

    def validate(self) -> None:
        """Raise ValueError naming the first field that cannot describe a GPT-2."""
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "pad_vocab_size_multiple"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise UserError(f"GPT2Config.{name} must be a positive integer, got {v!r}")
        if self.n_embd % self.n_head != 0:
            raise UserError(
                f"GPT2Config.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        if self.n_inner is not None and (not isinstance(self.n_inner, int) or self.n_inner <= 0):
            raise UserError(f"GPT2Config.n_inner must be a positive integer or None, got {self.n_inner!r}")
        if self.activation_function not in ACTIVATIONS:
            raise UserError(
                f"GPT2Config.activation_function={self.activation_function!r} is not supported; "
                f"use one of {', '.join(ACTIVATIONS)}"
            )
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
            v = getattr(self, name)
            if not 0.0 <= float(v) < 1.0:
                raise UserError(f"GPT2Config.{name} must be in [0, 1), got {v!r}")
        if self.attn_implementation not in ("sdpa", "eager"):
            raise UserError(
                f"GPT2Config.attn_implementation={self.attn_implementation!r}; use 'sdpa' or 'eager'"
            )

    # ------------------------------------------------------------------------------------------ presets
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> GPT2Config:
        """A named shape: OpenAI's four GPT-2 sizes, or a small CPU preset (see PRESETS)."""
        if name not in PRESETS:
            raise UserError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    # ------------------------------------------------------------------------------- HF config.json
    def to_hf_dict(self) -> dict[str, Any]:
        """The dict `transformers.GPT2Config` reads from config.json."""
        d: dict[str, Any] = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name in ("extra", "attn_implementation"):
                continue
            d[f.name] = getattr(self, f.name)
        d.update(
            model_type="gpt2",
            architectures=["GPT2LMHeadModel"],
            # HF's names for behaviour we implement exactly; written out so nothing is left to defaults.
            scale_attn_weights=True,
            scale_attn_by_inverse_layer_idx=False,
            reorder_and_upcast_attn=False,
            tie_word_embeddings=True,
            n_ctx=self.n_positions,
        )
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], *, source: str = "config") -> GPT2Config:
        """Read a GPT-2 config.json dict; refuse other architectures and GPT-2 variants we do not implement."""
        model_type = d.get("model_type", "gpt2")
        if model_type != "gpt2":
            raise UserError(f"{source}: model_type is {model_type!r}, expected 'gpt2' (only GPT-2 models load here)")
        archs = d.get("architectures") or []
        if any(not a.startswith("GPT2") for a in archs):
            raise UserError(f"{source}: architectures {archs} is not a GPT-2 architecture")
        unsupported = {
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            "add_cross_attention": False,
            "tie_word_embeddings": True,
        }
        for key, expected in unsupported.items():
            if key in d and bool(d[key]) != expected:
                raise UserError(f"{source}: {key}={d[key]!r} is not supported (only {expected} is implemented)")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names and k not in _WRITTEN_KEYS}
        return cls(**kwargs, extra=extra)

    def save(self, directory: str | Path) -> None:
        """Write config.json into `directory`."""
        from gpt2.common import atomic_write_text

        atomic_write_text(Path(directory) / "config.json", json.dumps(self.to_hf_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> GPT2Config:
        """Read `directory`/config.json (or a path to the json file itself)."""
        path = Path(directory)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise UserFileNotFoundError(f"no config.json at {path}: a model directory needs one (HF GPT2Config format)")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise UserError(f"{path} must hold a JSON object")
        return cls.from_hf_dict(d, source=str(path))


# Keys to_hf_dict writes itself; dropped on read so they are not carried twice through `extra`.
_WRITTEN_KEYS = {
    "model_type",
    "architectures",
    "scale_attn_weights",
    "scale_attn_by_inverse_layer_idx",
    "reorder_and_upcast_attn",
    "tie_word_embeddings",
    "n_ctx",
}

_NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}

PRESETS: dict[str, dict[str, Any]] = {
    # OpenAI's released sizes (HF hub ids openai-community/gpt2, -medium, -large, -xl).
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
    # Small shapes for tests and CPU runs. The vocabulary is usually overridden with the tokenizer's;
    # end-of-text is the last id, as in GPT-2 and in tokenizers trained here.
    "tiny": dict(n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=512, bos_token_id=511,
                 eos_token_id=511, **_NO_DROPOUT),
    "mini": dict(n_layer=4, n_head=4, n_embd=128, n_positions=256, vocab_size=4096, bos_token_id=4095,
                 eos_token_id=4095, **_NO_DROPOUT),
    "small": dict(n_layer=6, n_head=6, n_embd=384, n_positions=256, vocab_size=8192, bos_token_id=8191,
                  eos_token_id=8191, **_NO_DROPOUT),
}
