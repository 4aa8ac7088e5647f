"""Hugging Face / OpenAI GPT-2 weights in and out: local directories, the hub, safetensors and .bin.

    python -c "from gpt2 import GPT2LMHeadModel as M; M.from_pretrained('gpt2').save_pretrained('out/gpt2')"

HF's GPT-2 stores the four projection weights (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj) as
Conv1D matrices of shape (in, out); ours are nn.Linear (out, in), so those four are transposed on the
way in and out. Everything else maps by name. Files we write use HF's key names
(`transformer.h.0.attn.c_attn.weight`, ...) so `transformers.GPT2LMHeadModel.from_pretrained(dir)`
reads them as they are; files we read may use HF's names with or without the `transformer.` prefix,
OpenAI's converted names, or carry `module.`/`_orig_mod.` prefixes from DDP or torch.compile.
A sequence classifier (HF's GPT2ForSequenceClassification: the same body plus `score.weight`) goes
through the same functions with head="score"; config.json's `architectures` says which kind a directory
holds, and loading one kind as the other is refused with a message naming the verb to use.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from gpt2.common import atomic_write_bytes
from gpt2.errors import UserError, UserFileNotFoundError, UserNotADirectoryError
from gpt2.model.config import CLASSIFIER_ARCHITECTURE, LM_ARCHITECTURE, GPT2Config, architecture_of

Head = Literal["lm", "score"]

# HF Conv1D weights, stored (in, out): transposed relative to nn.Linear.
_CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers old HF/OpenAI checkpoints carry (the causal mask); not weights, ignored on load.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

# Short names users type for OpenAI's four released models.
HUB_ALIASES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def _is_conv1d(key: str) -> bool:
    return key.endswith(_CONV1D_SUFFIXES)


def to_hf_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our state dict in HF's names and layouts (tied head and padded vocab rows left out).

    Works for GPT2LMHeadModel and GPT2ForSequenceClassification alike: `score.weight` is an nn.Linear
    (num_labels, n_embd) in both libraries, so it is written as it is."""
    config = model.config
    out: dict[str, torch.Tensor] = {}
    for key, t in model.state_dict().items():
        key = _strip_wrappers(key)
        if ".lora_A." in key or ".base_layer." in key:
            # HF's GPT-2 has no place for these: a plain checkpoint needs the update folded in first
            raise UserError("this model carries LoRA adapters: save them with gpt2.model.lora.save_adapter, "
                            "or fold them in with merge_lora(model) before save_pretrained")
        if key == "lm_head.weight":
            continue  # tied to transformer.wte.weight; HF re-ties it on load
        t = t.detach()
        if key == "transformer.wte.weight":
            t = t[: config.vocab_size]
        if _is_conv1d(key):
            t = t.t()
        out[key] = t.contiguous().cpu().clone()
    return out


def _strip_wrappers(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    # wrappers can also sit inside the name (a compiled submodule): drop those parts too
    return key.replace("._orig_mod.", ".").replace(".module.", ".")


def from_hf_state_dict(
    sd: Mapping[str, torch.Tensor], config: GPT2Config, *, shapes: dict[str, tuple[int, ...]],
    source: str = "state dict", head: Head = "lm"
) -> dict[str, torch.Tensor]:
    """An HF/OpenAI GPT-2 state dict in our names and layouts; raises ValueError on missing or mis-shaped keys.

    `shapes` is `expected_shapes(model)` of the model to load into (a meta-device one costs nothing).
    head="lm": a language model (the head is tied to wte, so no head weight is read); head="score": a
    sequence classifier, whose `score.weight` (num_labels, n_embd) is read as it is."""
    wanted = dict(shapes)
    if head == "score":
        wanted["score.weight"] = (config.num_labels, config.n_embd)
    out: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for raw_key, t in sd.items():
        key = _strip_wrappers(raw_key)
        if key.endswith(_IGNORED_SUFFIXES) or key == "lm_head.weight":
            continue
        if not key.startswith("transformer.") and key not in wanted:
            key = "transformer." + key
        if key not in wanted:
            unexpected.append(raw_key)
            continue
        if _is_conv1d(key):
            t = t.t()
        shape = wanted[key]
        if key == "transformer.wte.weight" and tuple(t.shape) == (config.vocab_size, config.n_embd) != shape:
            # saved without the padding rows (as HF expects): pad them back with zeros
            pad = t.new_zeros(config.padded_vocab_size - config.vocab_size, config.n_embd)
            t = torch.cat([t, pad])
        if tuple(t.shape) != shape:
            raise UserError(
                f"{source}: weight {raw_key} has shape {tuple(t.shape)} but the config asks for {shape} "
                f"(config.json and the weights disagree)"
            )
        out[key] = t.contiguous()
    if unexpected:
        raise UserError(
            f"{source}: {len(unexpected)} unexpected weight(s), e.g. {', '.join(unexpected[:3])}: "
            f"not a GPT-2 {'sequence classifier' if head == 'score' else 'LM'} checkpoint, or one with extra heads"
        )
    missing = sorted(set(wanted) - set(out))
    if missing:
        raise UserError(f"{source}: {len(missing)} weight(s) missing, e.g. {', '.join(missing[:3])}")
    return out


def expected_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """The weights a model holds, by our name, and their shapes (the LM head is tied to wte: not a weight)."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "lm_head.weight"}


# --------------------------------------------------------------------------------------------- loading
def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """Read model.safetensors, a sharded safetensors index, or pytorch_model.bin from `directory`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    st = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    pt = directory / "pytorch_model.bin"
    try:
        if st.is_file():
            return load_file(str(st))
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            sd: dict[str, torch.Tensor] = {}
            for shard in shards:
                sd.update(load_file(str(directory / shard)))
            return sd
        if pt.is_file():
            return torch.load(pt, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, KeyError, json.JSONDecodeError, SafetensorError) as e:
        raise UserError(f"could not read the weights in {directory}: {e}") from None
    if (directory / "sharded" / ".metadata").is_file():
        raise UserFileNotFoundError(f"{directory} is a sharded FSDP checkpoint; make an HF directory of it first: "
                                    f"gpt2 checkpoint consolidate {directory} OUT_DIR")
    raise UserFileNotFoundError(
        f"no weights in {directory}: expected one of {', '.join(WEIGHT_FILES)} next to config.json"
    )


def resolve_source(source: str | Path, *, revision: str | None = None) -> Path:
    """A local model directory for `source`: the directory itself, or a hub snapshot downloaded to the cache."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserNotADirectoryError(f"{path} is a file; pass the directory holding config.json and the weights")
        return path
    repo_id = HUB_ALIASES.get(str(source), str(source))
    if str(source).startswith((".", "/", "~")) or repo_id.count("/") != 1:
        raise UserFileNotFoundError(
            f"no model directory at {source!r}, and it is not a hub id like 'openai-community/gpt2'"
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - a core dependency
        raise UserError("huggingface_hub is needed to download models: pip install huggingface_hub") from None
    try:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=["config.json", "model.safetensors", "generation_config.json", "tokenizer*",
                                "vocab.json", "merges.txt"],
            )
        )
    except Exception as e:  # network errors, 404s, offline mode: all end the same way for the user
        raise UserError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {str(e).splitlines()[0]}); "
            "when offline, pass a local directory holding config.json and model.safetensors"
        ) from None


def read_config(directory: Path) -> tuple[GPT2Config, str]:
    """config.json of a model directory, and the architecture it names (LM or sequence classifier)."""
    config = GPT2Config.load(directory)
    raw = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    return config, architecture_of(raw)


def wrong_kind_error(directory: Path | str, architecture: str) -> UserError:
    """The one-line error for a directory holding the other kind of model than the one asked for."""
    if architecture == CLASSIFIER_ARCHITECTURE:
        return UserError(f"{directory} is a sequence-classification checkpoint ({CLASSIFIER_ARCHITECTURE}), not a "
                         "language model: use `gpt2 classify` / `gpt2 eval --classify` "
                         "(GPT2ForSequenceClassification.from_pretrained in Python)")
    return UserError(f"{directory} is a language model ({LM_ARCHITECTURE}), not a sequence classifier: use it with "
                     "`gpt2 generate`, or fine-tune it into a classifier with `gpt2 finetune classify`")


def load_state(
    directory: Path, config: GPT2Config, model_cls: type[nn.Module], *, head: Head,
    device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
) -> nn.Module:
    """Build `model_cls(config)` on the meta device and assign the directory's weights to it (no init cost)."""
    with torch.device("meta"):
        model = model_cls(config)
    sd = from_hf_state_dict(_read_weights(directory), config, shapes=expected_shapes(model), source=str(directory),
                            head=head)
    model.load_state_dict(sd, strict=False, assign=True)  # an LM's head is tied to wte, not in sd
    if head == "lm":
        model.lm_head.weight = model.transformer.wte.weight
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device=device)
    return model.eval()


def apply_overrides(config: GPT2Config, overrides: dict[str, Any]) -> None:
    """Set config fields that do not touch weight shapes (dropout, attn_implementation, ...), then re-check."""
    for k, v in overrides.items():
        if not hasattr(config, k):
            raise UserError(f"unknown GPT2Config field {k!r}")
        setattr(config, k, v)
    config.validate()


def save_pretrained(model: nn.Module, directory: str | Path, *, safe_serialization: bool = True) -> None:
    """Write config.json and model.safetensors (or pytorch_model.bin) in HF GPT-2's layout.

    `model` is a GPT2LMHeadModel or a GPT2ForSequenceClassification; config.json's `architectures` says which.

    Each file is written under a temporary name and renamed, so other files already in `directory`
    (a tokenizer, a trainer state) stay, and a crash never leaves a half-written weight file.
    """
    from safetensors.torch import save

    # Unwrap DDP / FSDP / torch.compile wrappers: save the plain module.
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    sd = to_hf_state_dict(model)
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserNotADirectoryError(f"{directory} is a file; save_pretrained writes a directory")
    if safe_serialization:
        # transformers checks this metadata key before it will read a safetensors file.
        atomic_write_bytes(directory / "model.safetensors", save(sd, metadata={"format": "pt"}))
    else:
        buf = io.BytesIO()
        torch.save(sd, buf)
        atomic_write_bytes(directory / "pytorch_model.bin", buf.getvalue())
    architecture = CLASSIFIER_ARCHITECTURE if hasattr(model, "score") else LM_ARCHITECTURE
    model.config.save(directory, architecture=architecture)
