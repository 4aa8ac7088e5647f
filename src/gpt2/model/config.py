"""GPT2Config: the model's shape, with Hugging Face's field names, named presets, and config.json in and out.

    python -c "from gpt2.model.config import GPT2Config; print(GPT2Config.from_preset('gpt2'))"

The field names are HF's, so a `config.json` written here is read by `transformers.GPT2Config` and the
other way round. Two fields are ours and never change what the model computes:
`pad_vocab_size_multiple` (round the embedding table up for faster matmuls) and `attn_implementation`.
A sequence classifier's config also carries HF's `id2label`/`label2id`/`pad_token_id` and two keys of
ours that `gpt2 classify` reads, `max_length` and `truncation_side` (transformers ignores unknown keys).
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
TruncationSide = Literal["left", "right", "both"]
LM_ARCHITECTURE = "GPT2LMHeadModel"
CLASSIFIER_ARCHITECTURE = "GPT2ForSequenceClassification"

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
    id2label: dict[int, str] = field(default_factory=dict)
    """Classifier only: class index → label name (config.json keeps HF's string keys). Empty for a language model."""
    label2id: dict[str, int] = field(default_factory=dict)
    """Classifier only: label name → class index, the inverse of id2label (filled in from it when empty)."""
    pad_token_id: int | None = None
    """Id that right-pads a batch; a classifier pools at the last position whose id is not this one (as HF does)."""
    max_length: int | None = None
    """Classifier only (ours): tokens kept per text by `gpt2 classify`; None means n_positions."""
    truncation_side: TruncationSide | None = None
    """Classifier only (ours): which end of a long text `gpt2 classify` cuts: left, right, or both (the start and
    the end kept, finetune.data.truncate); None means right."""
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """Other keys found in a config.json (kept so a save writes them back)."""

    def __post_init__(self) -> None:
        # config.json stores id2label's keys as strings (JSON has no int keys); HF turns them back into ints.
        self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
        if self.id2label and not self.label2id:
            self.label2id = {v: k for k, v in self.id2label.items()}
        self.label2id = {str(k): int(v) for k, v in self.label2id.items()}
        self.validate()

    @property
    def num_labels(self) -> int:
        """Number of classes: len(id2label), as in HF (0 for a language model)."""
        return len(self.id2label)

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
        if self.id2label:
            if sorted(self.id2label) != list(range(len(self.id2label))):
                raise UserError(f"GPT2Config.id2label keys must be 0..{len(self.id2label) - 1}, got "
                                f"{sorted(self.id2label)}")
            if self.label2id != {v: k for k, v in self.id2label.items()}:
                raise UserError(f"GPT2Config.label2id {self.label2id} is not the inverse of id2label {self.id2label}")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise UserError(f"GPT2Config.pad_token_id={self.pad_token_id} is not a token id (vocab_size "
                            f"{self.vocab_size})")
        if self.max_length is not None and not 0 < self.max_length <= self.n_positions:
            raise UserError(f"GPT2Config.max_length={self.max_length} must be in 1..n_positions={self.n_positions}")
        if self.truncation_side not in (None, "left", "right", "both"):
            raise UserError(f"GPT2Config.truncation_side={self.truncation_side!r}; use 'left', 'right' or 'both'")

    # ------------------------------------------------------------------------------------------ presets
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> GPT2Config:
        """A named shape: OpenAI's four GPT-2 sizes, or a small CPU preset (see PRESETS)."""
        if name not in PRESETS:
            raise UserError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    # ------------------------------------------------------------------------------- HF config.json
    def to_hf_dict(self, *, architecture: str = LM_ARCHITECTURE) -> dict[str, Any]:
        """The dict `transformers.GPT2Config` reads from config.json; `architecture` names the model class
        (GPT2LMHeadModel, or GPT2ForSequenceClassification), which is how AutoModel* and gpt2.load tell them apart."""
        d: dict[str, Any] = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name in ("extra", "attn_implementation"):
                continue
            value = getattr(self, f.name)
            if f.name in _OPTIONAL_KEYS and not value:
                continue  # absent, as in a language model's config.json written before these fields existed
            if f.name == "id2label":
                value = {str(k): v for k, v in value.items()}  # HF writes (and JSON needs) string keys
            d[f.name] = value
        d.update(
            model_type="gpt2",
            architectures=[architecture],
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
        if isinstance(d.get("num_labels"), int) and not isinstance(d.get("id2label"), dict):
            # HF's shorthand: num_labels alone means LABEL_0 ... LABEL_{n-1}
            kwargs["id2label"] = {i: f"LABEL_{i}" for i in range(d["num_labels"])}
            kwargs.pop("label2id", None)
        elif isinstance(d.get("num_labels"), int) and d["num_labels"] != len(d["id2label"]):
            raise UserError(f"{source}: num_labels={d['num_labels']} but id2label has {len(d['id2label'])} entries")
        for key in ("id2label", "label2id"):
            if not isinstance(kwargs.get(key, {}), dict):
                raise UserError(f"{source}: {key} must be a JSON object, got {type(kwargs[key]).__name__}")
        extra = {k: v for k, v in d.items() if k not in names and k not in _WRITTEN_KEYS}
        return cls(**kwargs, extra=extra)

    def save(self, directory: str | Path, *, architecture: str = LM_ARCHITECTURE) -> None:
        """Write config.json into `directory`."""
        from gpt2.common import atomic_write_text

        text = json.dumps(self.to_hf_dict(architecture=architecture), indent=2, ensure_ascii=False) + "\n"
        atomic_write_text(Path(directory) / "config.json", text)

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
    "num_labels",
}
# Fields left out of config.json when empty/None, so a language model's config.json stays as it was.
_OPTIONAL_KEYS = {"id2label", "label2id", "pad_token_id", "max_length", "truncation_side"}


def architecture_of(d: dict[str, Any]) -> str:
    """The model class a config.json dict names: GPT2ForSequenceClassification or (the default) GPT2LMHeadModel."""
    archs = d.get("architectures") or []
    return CLASSIFIER_ARCHITECTURE if CLASSIFIER_ARCHITECTURE in archs else LM_ARCHITECTURE

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
