"""LoRA adapters for our GPT-2, saved and loaded in PEFT's directory format.

    gpt2 lora show ADAPTER_DIR                        # what an adapter holds and what it is applied to
    gpt2 lora merge ADAPTER_DIR OUT                   # fold it into its base: a plain HF checkpoint

A leaf: it imports nothing of the package above the model. Loading an adapter's base by the name
adapter_config.json gives is the loader's (gpt2.load); `gpt2 lora merge` is gpt2.finetune.merge.

LoRA (Hu et al. 2021, arXiv:2106.09685) freezes a pretrained weight W (out, in) and learns a low-rank
update: y = W x + b + (B A x) · alpha / r, with A (r, in) and B (out, r). B starts at zero, so a freshly
injected model computes exactly what its base does.

`inject_lora(model, cfg)` swaps the targeted nn.Linear layers of every block (attn.c_attn, attn.c_proj,
mlp.c_fc, mlp.c_proj) for `LoRALinear` in place and freezes the rest, except a classifier's `score` head
(PEFT's `modules_to_save`). `save_adapter` writes what PEFT writes: `adapter_config.json` and
`adapter_model.safetensors` with PEFT's key names, so

    peft.PeftModel.from_pretrained(transformers.GPT2LMHeadModel.from_pretrained(base), adapter_dir)

loads it with the same logits (tested), and `load_adapter` reads adapters PEFT made. HF's GPT-2 stores
the projections as Conv1D (in, out), the transpose of our nn.Linear, hence `fan_in_fan_out: true`; the
LoRA matrices themselves are nn.Linear in PEFT too, so lora_A/lora_B are stored as they are.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from gpt2.errors import UserError, UserFileNotFoundError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

# Our target names → (the block's submodule, the layer). "c_proj" alone would be ambiguous: both the
# attention and the MLP have one.
TARGETS: dict[str, tuple[str, str]] = {
    "c_attn": ("attn", "c_attn"),
    "attn.c_proj": ("attn", "c_proj"),
    "c_fc": ("mlp", "c_fc"),
    "mlp.c_proj": ("mlp", "c_proj"),
}
# PEFT matches a target_modules entry t against a module name k when k == t or k.endswith("." + t)
# (peft.tuners.tuners_utils.check_target_module_exists), so "attn.c_proj" catches
# transformer.h.0.attn.c_proj and not transformer.h.0.mlp.c_proj. Our names are written as they are.

TaskType = Literal["CAUSAL_LM", "SEQ_CLS"]
# PEFT's key prefix for a PeftModel wrapping a transformers model (LoraModel.model is the HF model).
_PREFIX = "base_model.model."
# PeftModelForSequenceClassification adds these to modules_to_save by itself (PEFT 0.22 added `pre_classifier`,
# DistilBERT's); GPT-2's head is `score`, and the names that match no module of GPT-2 change nothing.
_SEQ_CLS_HEADS = ("classifier", "score", "pre_classifier")


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update: base_layer(x) + lora_B(lora_A(dropout(x))) · alpha / r.

    Names follow PEFT's lora.Linear (`base_layer`, `lora_A`, `lora_B`, `lora_dropout`, `scaling`), so state
    dict keys read `...c_attn.lora_A.weight` as PEFT's files do (PEFT adds an adapter name we do not need).
    """

    def __init__(self, base_layer: nn.Linear, *, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / rank
        self.lora_dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # Built on the CPU in the default dtype and initialised there, then moved, as PEFT's
        # LoraLayer.update_layer does: the same seed then draws the same A as PEFT (tested).
        self.lora_A = nn.Linear(self.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, self.out_features, bias=False)
        self.reset_lora_parameters()
        self.disabled = False  # adapters_disabled(model): the base layer alone (DPO's reference, PEFT's disable_adapter)
        w = base_layer.weight
        self.lora_A.to(device=w.device, dtype=w.dtype)
        self.lora_B.to(device=w.device, dtype=w.dtype)

    def reset_lora_parameters(self) -> None:
        """PEFT's default (init_lora_weights=True): A kaiming-uniform with a=sqrt(5), B zeros, so ΔW = 0."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) → (..., out)."""
        # The scaling multiplies the (..., r) activations, not the (..., out) ones, and the update is added in
        # place: a Linear's backward needs its input and weight, never its output, so autograd allows it.
        if self.disabled:
            return self.base_layer(x)
        update = self.lora_B(self.lora_A(self.lora_dropout(x)) * self.scaling)  # (..., out)
        return self.base_layer(x).add_(update)

    def delta_weight(self) -> torch.Tensor:
        """B @ A · scaling, (out, in): what merging adds to base_layer.weight (computed in fp32)."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling  # (out, in)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, scaling={self.scaling:g}"


def lora_reference(x: torch.Tensor, layer: LoRALinear) -> torch.Tensor:
    """The same output as LoRALinear.forward (without dropout), written as the paper's formula
    y = x Wᵀ + b + x (scaling · B A)ᵀ with plain matmuls: the reference the module is tested against."""
    base = layer.base_layer
    y = x @ base.weight.t()  # (..., out)
    if base.bias is not None:
        y = y + base.bias
    return y + x @ layer.delta_weight().to(x.dtype).t()  # (..., out)


@dataclass
class LoRAConfig:
    """Which layers get an adapter, and its size. Defaults are PEFT's LoraConfig defaults for GPT-2."""

    rank: int = 8
    """r: the rank of the update B A; its parameters per layer are r × (in + out)."""
    alpha: float = 8
    """lora_alpha: the update is scaled by alpha / rank."""
    dropout: float = 0.0
    """lora_dropout: dropout on the adapter's input only (the frozen path sees x as it is)."""
    targets: tuple[str, ...] = ("c_attn",)
    """Layers of every block to adapt, among c_attn, attn.c_proj, c_fc, mlp.c_proj (PEFT's GPT-2 default: c_attn)."""

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            self.targets = (self.targets,)
        self.targets = tuple(self.targets)
        self.validate()

    def validate(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise UserError(f"LoRA rank must be an integer ≥ 1, got {self.rank!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not math.isfinite(self.alpha):
            raise UserError(f"LoRA alpha must be a number (the update is scaled by alpha / rank), got {self.alpha!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise UserError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if not self.targets:
            raise UserError(f"LoRA targets is empty; name one or more of {', '.join(TARGETS)}")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown:
            raise UserError(f"unknown LoRA target(s) {', '.join(map(repr, unknown))}; valid: {', '.join(TARGETS)}")
        # one canonical order (the blocks' module order), no repeats: injection and saving follow it
        self.targets = tuple(t for t in TARGETS if t in self.targets)


# ------------------------------------------------------------------------------------------ in place
def _blocks(model: nn.Module) -> nn.ModuleList:
    transformer = getattr(model, "transformer", None)
    if transformer is None or not hasattr(transformer, "h"):
        raise UserError(f"LoRA applies to gpt2-scratch's GPT2LMHeadModel or GPT2ForSequenceClassification, "
                        f"got {type(model).__name__}")
    return transformer.h


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every LoRALinear of the model by its module name (`transformer.h.0.attn.c_attn`), in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def inject_lora(model: nn.Module, cfg: LoRAConfig) -> nn.Module:
    """Wrap the targeted layers of every block in LoRALinear, in place, and freeze everything else.

    Trainable afterwards: the lora_A/lora_B weights, plus a classifier's `score` head (a new head has
    to learn; PEFT keeps it whole as `modules_to_save`). Call it on the plain model, before DDP/FSDP or
    torch.compile wrap it. The new weights are drawn from the global RNG (seed it first) and placed on
    the device and dtype of the layer each one adapts. Returns `model`."""
    cfg.validate()
    blocks = _blocks(model)
    if lora_layers(model):
        raise UserError("this model has LoRA adapters already; merge_lora(model) first to stack another")
    for p in model.parameters():
        p.requires_grad_(False)
    for block in blocks:
        for target in cfg.targets:
            parent_name, child_name = TARGETS[target]
            parent = getattr(block, parent_name)
            layer = LoRALinear(getattr(parent, child_name), rank=cfg.rank, alpha=cfg.alpha, dropout=cfg.dropout)
            setattr(parent, child_name, layer)
    if hasattr(model, "score"):
        model.score.requires_grad_(True)
    return model


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model computes what its base does (every LoRALinear gives its base layer's
    output), as PEFT's `disable_adapter()`: DPO's reference is the same weights with the adapters off, so
    there is no second model in memory. Yields `model`; the adapters are back on when the block ends."""
    layers = list(lora_layers(model).values())
    for layer in layers:
        layer.disabled = True
    try:
        yield model
    finally:
        for layer in layers:
            layer.disabled = False


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a tied matrix counts once, as PEFT's get_nb_trainable_parameters.

    Padded vocabulary rows (never scored) are left out of the total, as num_parameters() does."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "padded_vocab_size"):
        padding = (config.padded_vocab_size - config.vocab_size) * config.n_embd
        total -= padding
        if model.transformer.wte.weight.requires_grad:
            trainable -= padding
    return trainable, total


def lora_config_of(model: nn.Module) -> LoRAConfig:
    """The LoRAConfig an adapter-on model was injected with, read back from its layers."""
    layers = lora_layers(model)
    if not layers:
        raise UserError("this model has no LoRA adapters: inject_lora(model, cfg) first (or load_adapter)")
    first = next(iter(layers.values()))
    dropout = first.lora_dropout.p if isinstance(first.lora_dropout, nn.Dropout) else 0.0
    found = {f"{name.split('.')[-2]}.{name.split('.')[-1]}" for name in layers}
    targets = tuple(t for t, (parent, child) in TARGETS.items() if f"{parent}.{child}" in found)
    return LoRAConfig(rank=first.rank, alpha=first.alpha, dropout=dropout, targets=targets)


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold B @ A · scaling into each adapted weight and put the plain nn.Linear back, in place.

    The result is an ordinary GPT2LMHeadModel / GPT2ForSequenceClassification (every parameter trainable
    again, as when loaded) that save_pretrained writes as a plain HF checkpoint. Returns `model`."""
    layers = lora_layers(model)
    if not layers:
        raise UserError("this model has no LoRA adapters to merge")
    for name, layer in layers.items():
        base = layer.base_layer
        base.weight.copy_((base.weight.float() + layer.delta_weight()).to(base.weight.dtype))
        parent_name, child_name = name.rsplit(".", 1)
        setattr(model.get_submodule(parent_name), child_name, base)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


# ------------------------------------------------------------------------------------------- format
def peft_key(module: str, matrix: Literal["lora_A", "lora_B"]) -> str:
    """The key of one LoRA matrix in PEFT's adapter file: `base_model.model.<module>.lora_A.weight`."""
    return f"{_PREFIX}{module}.{matrix}.weight"


def _task_type(model: nn.Module) -> TaskType:
    return "SEQ_CLS" if hasattr(model, "score") else "CAUSAL_LM"


def adapter_config_dict(cfg: LoRAConfig, *, task_type: TaskType, base_model_name_or_path: str) -> dict[str, Any]:
    """adapter_config.json as PEFT writes it for this adapter.

    Only fields PEFT 0.13 already knew are written: an older PEFT warns about (and drops) keys it does not
    know, a newer one fills in its defaults for those left out (checked: no warning from PEFT 0.21)."""
    return {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "revision": None,
        "inference_mode": True,
        "r": cfg.rank,
        "lora_alpha": int(cfg.alpha) if float(cfg.alpha).is_integer() else cfg.alpha,  # PEFT's type is int
        "lora_dropout": cfg.dropout,
        "target_modules": list(cfg.targets),
        "fan_in_fan_out": True,  # HF GPT-2's projections are Conv1D, weights (in, out)
        "bias": "none",
        "modules_to_save": ["score"] if task_type == "SEQ_CLS" else None,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors under PEFT's names: `base_model.model.<module>.lora_A.weight` (the adapter
    name PEFT uses in memory, `.default`, is not in its files), and `base_model.model.score.weight` for a
    classifier's head (modules_to_save: PEFT saves the trained copy under the module's own name)."""
    out: dict[str, torch.Tensor] = {}
    for name, layer in lora_layers(model).items():
        out[f"{_PREFIX}{name}.lora_A.weight"] = layer.lora_A.weight.detach()  # (r, in)
        out[f"{_PREFIX}{name}.lora_B.weight"] = layer.lora_B.weight.detach()  # (out, r)
    if hasattr(model, "score"):
        out[f"{_PREFIX}score.weight"] = model.score.weight.detach()  # (num_labels, n_embd)
    return {k: v.contiguous().cpu().clone() for k, v in out.items()}


def save_adapter(model: nn.Module, directory: str | Path, *, base_model_name_or_path: str,
                 tokenizer: Any = None, in_place: bool = False) -> Path:
    """Write PEFT's adapter directory (adapter_config.json + adapter_model.safetensors) for an adapter-on model.

    `base_model_name_or_path` is what the adapter applies to: a model directory (absolute, to load from
    anywhere) or a hub id; `gpt2.load.load(directory)` and PEFT's AutoPeftModel load the base from it.
    Give a checkpoint directory rather than a run directory, whose newest checkpoint moves on.
    `tokenizer`, if given, is saved beside (it must be the base's). The directory is filled under a
    temporary name and renamed when whole, replacing what was there; with `in_place=True` the files are
    written (each atomically) into `directory` as it is, leaving its other files, for a caller that fills
    a temporary directory of its own and renames it (a checkpoint writer, in place of save_pretrained).
    Returns the directory."""
    from safetensors.torch import save

    from gpt2.common import atomic_directory, atomic_write_bytes

    while hasattr(model, "module") or hasattr(model, "_orig_mod"):  # DDP / FSDP / torch.compile wrappers
        model = getattr(model, "module", None) or model._orig_mod
    cfg = lora_config_of(model)
    config = adapter_config_dict(cfg, task_type=_task_type(model), base_model_name_or_path=str(base_model_name_or_path))
    weights = adapter_state_dict(model)
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{directory} is a file; save_adapter writes a directory")
    files = {
        ADAPTER_CONFIG: (json.dumps(config, indent=2, sort_keys=True) + "\n").encode("utf-8"),
        # transformers/PEFT check this metadata key before they read a safetensors file
        ADAPTER_WEIGHTS: save(weights, metadata={"format": "pt"}),
    }
    if in_place:
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            atomic_write_bytes(directory / name, data)
        if tokenizer is not None:
            tokenizer.save(directory)
        return directory
    with atomic_directory(directory) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        if tokenizer is not None:
            tokenizer.save(tmp)
    return directory


# PEFT options this implementation does not have, with the value that means "off". An adapter that turns
# one on is refused rather than loaded into something that computes another function.
_UNSUPPORTED_OFF: dict[str, Any] = {
    "use_dora": False, "use_rslora": False, "bias": "none", "lora_bias": False, "layers_to_transform": None,
    "rank_pattern": {}, "alpha_pattern": {}, "layer_replication": None, "target_parameters": None,
    "trainable_token_indices": None, "exclude_modules": None, "alora_invocation_tokens": None,
    "use_qalora": False, "use_bdlora": None,
}


def _is_off(value: Any, off: Any) -> bool:
    return value == off or value in (None, False, {}, [], "none")


def read_adapter_config(directory: str | Path) -> dict[str, Any]:
    """adapter_config.json of a LoRA adapter directory, checked to be a LoRA that LoRALinear computes."""
    directory = Path(directory)
    path = directory / ADAPTER_CONFIG
    if not path.is_file():
        if not directory.exists():
            raise UserFileNotFoundError(f"no adapter directory at {str(directory)!r}")
        raise UserFileNotFoundError(f"{directory} holds no {ADAPTER_CONFIG}: not a LoRA adapter directory")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e})") from None
    if raw.get("peft_type") != "LORA":
        raise UserError(f"{path}: peft_type={raw.get('peft_type')!r}; only LoRA adapters (LORA) are supported")
    task = raw.get("task_type") or "CAUSAL_LM"  # PEFT allows none: the plain LoraModel, same keys as CAUSAL_LM
    if task not in ("CAUSAL_LM", "SEQ_CLS"):
        raise UserError(f"{path}: task_type={task!r}; GPT-2 adapters here are CAUSAL_LM or SEQ_CLS")
    for key, off in _UNSUPPORTED_OFF.items():
        if key in raw and not _is_off(raw[key], off):
            raise UserError(f"{path}: {key}={raw[key]!r} is a PEFT option gpt2-scratch's LoRA does not implement; "
                            "merge the adapter with PEFT (merge_and_unload) and load the merged checkpoint instead")
    extra = set(raw.get("modules_to_save") or ()) - set(_SEQ_CLS_HEADS if task == "SEQ_CLS" else ())
    if extra:
        raise UserError(f"{path}: modules_to_save {sorted(extra)} are not supported (only a classifier's score head)")
    for key in ("r", "lora_alpha"):
        if key not in raw:
            raise UserError(f"{path}: {key} is missing")
    raw["task_type"] = task
    return raw


def _match_targets(target_modules: str | list[str] | None, *, source: Path) -> tuple[str, ...]:
    """Our targets for PEFT's target_modules, matched as PEFT matches them against block 0's layer names."""
    if not target_modules:
        raise UserError(f"{source}: target_modules is empty")
    names = {t: f"transformer.h.0.{parent}.{child}" for t, (parent, child) in TARGETS.items()}
    if isinstance(target_modules, str):  # a regex, matched whole (peft's match_target_against_key)
        return tuple(t for t, name in names.items() if re.fullmatch(target_modules, name))
    return tuple(t for t, name in names.items()
                 if any(name == m or name.endswith("." + m) for m in target_modules))


def _config_from_adapter(raw: dict[str, Any], *, source: Path) -> LoRAConfig:
    targets = _match_targets(raw.get("target_modules"), source=source)
    if not targets:
        raise UserError(f"{source}: target_modules={raw.get('target_modules')!r} names none of GPT-2's block "
                        f"layers ({', '.join(TARGETS)})")
    try:
        return LoRAConfig(rank=raw["r"], alpha=raw["lora_alpha"], dropout=raw.get("lora_dropout", 0.0) or 0.0,
                          targets=targets)
    except UserError as e:
        raise UserError(f"{source}: {e}") from None


def read_adapter(directory: str | Path, *, base: nn.Module) -> tuple[LoRAConfig, dict[str, torch.Tensor]]:
    """The adapter in `directory` (ours or PEFT's): its LoRAConfig and its tensors under PEFT's names, checked
    against `base` (task and shapes) without changing it. An adapter made for another base is a one-line
    error naming the first mismatch. `load_adapter` applies what this returns; gpt2.model.multi_lora
    stacks several."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    raw = read_adapter_config(directory)
    cfg = _config_from_adapter(raw, source=directory / ADAPTER_CONFIG)
    weights_path = directory / ADAPTER_WEIGHTS
    if not weights_path.is_file():
        if (directory / "adapter_model.bin").is_file():
            raise UserError(f"{directory}: adapter_model.bin (pickle) is not read; re-save the adapter with PEFT's "
                            "safe_serialization=True (the default)")
        raise UserFileNotFoundError(f"{directory} holds no {ADAPTER_WEIGHTS}")
    try:
        weights = load_file(weights_path)
    except SafetensorError as e:
        raise UserError(f"{weights_path} is not a readable safetensors file ({e})") from None
    model = _unwrapped(base)
    want_task = raw["task_type"]
    if _task_type(model) != want_task:
        kind = "sequence classifier" if want_task == "SEQ_CLS" else "language model"
        raise UserError(f"{directory} is a {want_task} adapter: its base must be a {kind}, got {type(model).__name__}")
    _check_shapes(model, cfg, weights, directory=directory)
    return cfg, weights


def _unwrapped(model: nn.Module) -> nn.Module:
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):  # DDP / FSDP / torch.compile wrappers
        model = getattr(model, "module", None) or model._orig_mod
    return model


def load_adapter(directory: str | Path, *, base: nn.Module) -> nn.Module:
    """`base` with the adapter in `directory` applied (ours or PEFT's), in eval mode.

    The base is a GPT2LMHeadModel for a CAUSAL_LM adapter, a GPT2ForSequenceClassification for SEQ_CLS,
    modified in place; `gpt2.load.load(directory)` loads the base adapter_config.json's
    `base_model_name_or_path` names and applies the adapter to it. Shapes are checked before anything
    is changed (read_adapter)."""
    cfg, weights = read_adapter(directory, base=base)
    model = _unwrapped(base)
    inject_lora(model, cfg)
    ref = model.transformer.wte.weight
    with torch.no_grad():
        for name, layer in lora_layers(model).items():
            layer.lora_A.weight.copy_(weights[f"{_PREFIX}{name}.lora_A.weight"].to(ref.device, ref.dtype))
            layer.lora_B.weight.copy_(weights[f"{_PREFIX}{name}.lora_B.weight"].to(ref.device, ref.dtype))
        if _task_type(model) == "SEQ_CLS":
            model.score.weight.copy_(weights[f"{_PREFIX}score.weight"].to(ref.device, ref.dtype))
    return base.eval()


def _expected_adapter_shapes(model: nn.Module, cfg: LoRAConfig) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for i, block in enumerate(_blocks(model)):
        for target in cfg.targets:
            parent, child = TARGETS[target]
            layer = getattr(getattr(block, parent), child)
            name = f"{_PREFIX}transformer.h.{i}.{parent}.{child}"
            out[f"{name}.lora_A.weight"] = (cfg.rank, layer.in_features)
            out[f"{name}.lora_B.weight"] = (layer.out_features, cfg.rank)
    if hasattr(model, "score"):
        out[f"{_PREFIX}score.weight"] = tuple(model.score.weight.shape)
    return out


def _check_shapes(model: nn.Module, cfg: LoRAConfig, weights: dict[str, torch.Tensor], *, directory: Path) -> None:
    expected = _expected_adapter_shapes(model, cfg)
    unexpected = sorted(set(weights) - set(expected))
    if unexpected:
        raise UserError(f"{directory}: {len(unexpected)} adapter weight(s) this base has no place for, e.g. "
                        f"{', '.join(unexpected[:3])}: an adapter for a deeper base, or for layers other than "
                        f"{', '.join(TARGETS)}")
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise UserError(f"{directory}: {len(missing)} adapter weight(s) missing, e.g. {', '.join(missing[:3])} "
                        f"(a base with more layers than the adapter was made for?)")
    for key, shape in expected.items():
        if tuple(weights[key].shape) != shape:
            raise UserError(f"{directory}: {key} has shape {tuple(weights[key].shape)} but this base needs {shape}: "
                            "the adapter was made for a base of other sizes (n_embd, n_inner or num_labels)")


def describe(directory: str | Path) -> str:
    """A few lines on what an adapter directory holds (`gpt2 lora show DIR`)."""
    directory = Path(directory)
    raw = read_adapter_config(directory)
    cfg = _config_from_adapter(raw, source=directory / ADAPTER_CONFIG)
    return (f"adapter    {directory}\n"
            f"task       {raw['task_type']}\n"
            f"base       {raw.get('base_model_name_or_path')}\n"
            f"lora       rank {cfg.rank}, alpha {cfg.alpha:g}, dropout {cfg.dropout:g}, targets {', '.join(cfg.targets)}")
