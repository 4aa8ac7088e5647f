"""One loader: a run directory, a checkpoint, a model directory, a hub id or a preset → model + tokenizer.

    python -c "from gpt2.load import load; print(load('runs/shakespeare-cpu').directory)"
    python -c "from gpt2.load import load; print(load('preset:tiny').model)"   # random weights in a preset's shapes

Every verb that takes a model (eval, generate, chat, classify, finetune, serve, lora merge) goes through
`load()`, and `gpt2 model info` through `describe()` (the config alone), so a name means the same thing
everywhere:
- a training run directory → its newest complete checkpoint (the one `latest` names); `RUN/best` → the
  checkpoint a fine-tune's `best` file names;
- a checkpoint or any HF GPT-2 directory (config.json + weights) → that directory;
- `owner/name` or an alias such as `gpt2` → the Hugging Face hub snapshot (cached);
- `preset:NAME` → a fresh model of that preset's shapes (random weights, for benchmarks and tests);
- a LoRA adapter directory (PEFT's adapter_config.json + adapter_model.safetensors) → its base, loaded
  by the name adapter_config.json gives, with the adapter applied (gpt2.model.lora).
The tokenizer comes from the same directory unless one is named; the prompt format from its chat.json.
`task="classify"` loads a sequence classifier (GPT2ForSequenceClassification) instead; asking for one
kind and finding the other is a one-line error naming the verb that fits the checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from gpt2.errors import UserError, UserFileNotFoundError
from gpt2.model.classify import GPT2ForSequenceClassification
from gpt2.model.gpt2 import GPT2LMHeadModel

DtypeName = Literal["fp32", "bf16"]
Task = Literal["lm", "classify"]
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}
PRESET_PREFIX = "preset:"


@dataclass
class Loaded:
    """What a model name resolves to."""

    model: GPT2LMHeadModel | GPT2ForSequenceClassification  # the latter for task="classify"
    tokenizer: Any
    directory: Path | None  # the model directory read (None for a preset)
    chat_format: Any = None  # gpt2.tokenizer.chat.ChatFormat from chat.json, if the directory has one


def resolve_model_dir(source: str | Path) -> Path:
    """A model directory from a checkpoint or model directory, a training run directory (its newest
    checkpoint, as `latest` names it), a run's `latest` or `best` file (the checkpoint it names: `RUN/best`
    is a fine-tune's best by validation), or a hub id; a LoRA adapter directory is returned as it is."""
    from gpt2.model.hf import resolve_source

    pointer = Path(source)
    if pointer.name in ("latest", "best") and pointer.is_file():
        named = pointer.parent / pointer.read_text().strip()
        if not named.is_dir():
            raise UserFileNotFoundError(f"{pointer} names {named.name}, which is not in {pointer.parent}: "
                                        "the run directory is incomplete; give a step-NNNNNN directory instead")
        source = named
    directory = resolve_source(source)
    if (directory / "config.json").is_file() or _adapter_dir(directory) is not None:
        return directory
    if (directory / "latest").is_file() or any(directory.glob("step-*")):
        from gpt2.common import resolve_checkpoint

        return resolve_checkpoint(directory)
    raise UserFileNotFoundError(f"{directory} holds no config.json: not a model directory, checkpoint or run directory")


def _tokenizer(directory: Path | None, tokenizer: str | None) -> Any:
    from gpt2.tokenizer import load_tokenizer

    if tokenizer is not None:
        return load_tokenizer(tokenizer)
    if directory is None:
        return load_tokenizer("gpt2")
    try:
        return load_tokenizer(directory)
    except FileNotFoundError as e:
        raise UserFileNotFoundError(f"{e}; pass --tokenizer (gpt2, or a tokenizer directory)") from None


def load(
    source: str | Path,
    *,
    tokenizer: str | None = None,
    dtype: DtypeName = "fp32",
    device: str = "auto",
    seed: int = 0,
    task: Task = "lm",
) -> Loaded:
    """Resolve `source` (see the module docstring) and load the model in eval mode with its tokenizer.

    `tokenizer` names another tokenizer (gpt2, a directory, a .tiktoken file); `seed` only matters for a
    preset's random weights (drawn from a generator of its own, so the global RNG is untouched).
    `task` is "lm" (GPT2LMHeadModel) or "classify" (GPT2ForSequenceClassification)."""
    from gpt2.common import pick_device
    from gpt2.model.config import LM_ARCHITECTURE, GPT2Config
    from gpt2.model.hf import wrong_kind_error

    if dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if task not in ("lm", "classify"):
        raise UserError(f"task must be 'lm' or 'classify', got {task!r}")
    target = pick_device(device)
    if str(source).startswith(PRESET_PREFIX) and task == "classify":
        raise wrong_kind_error(source, LM_ARCHITECTURE)  # a preset is a fresh LM: it has no labels
    if str(source).startswith(PRESET_PREFIX):
        tok = _tokenizer(None, tokenizer)
        name = str(source)[len(PRESET_PREFIX):]
        config = GPT2Config.from_preset(name, vocab_size=tok.n_vocab, bos_token_id=tok.eot_token,
                                        eos_token_id=tok.eot_token)
        state = torch.random.get_rng_state()
        try:
            torch.manual_seed(seed)
            model = GPT2LMHeadModel(config)
        finally:
            torch.random.set_rng_state(state)
        return Loaded(model.to(device=target, dtype=DTYPES[dtype]).eval(), tok, None)
    directory = resolve_model_dir(source)
    if _adapter_dir(directory) is not None:  # an adapter directory, or a run whose checkpoints are adapters
        return _load_adapter(directory, tokenizer=tokenizer, dtype=dtype, device=device, seed=seed, task=task)
    tok = _tokenizer(directory, tokenizer)
    model: GPT2LMHeadModel | GPT2ForSequenceClassification
    if task == "classify":
        model = GPT2ForSequenceClassification.from_pretrained(directory, device=target, dtype=DTYPES[dtype])
    else:
        model = GPT2LMHeadModel.from_pretrained(directory, device=target, dtype=DTYPES[dtype])
    if model.config.vocab_size < tok.n_vocab:
        raise UserError(f"{directory} has {model.config.vocab_size:,} token ids but the tokenizer has {tok.n_vocab:,}; "
                        "pass the tokenizer the model was trained with")
    chat_format = None
    if task == "lm" and (directory / "chat.json").is_file():
        from gpt2.tokenizer.chat import load_chat_format

        chat_format = load_chat_format(directory)
    return Loaded(model, tok, directory, chat_format)


def is_adapter(source: str | Path) -> bool:
    """Whether `source` is a local LoRA adapter directory (adapter_config.json), which `load` applies to its base."""
    return _adapter_dir(source) is not None


def _adapter_dir(source: str | Path) -> Path | None:
    """`source` as a local LoRA adapter directory (one holding adapter_config.json), else None."""
    from gpt2.model.lora import ADAPTER_CONFIG

    if str(source).startswith(PRESET_PREFIX):
        return None
    path = Path(source).expanduser()
    return path if (path / ADAPTER_CONFIG).is_file() else None


def _load_adapter(directory: Path, *, tokenizer: str | None, dtype: DtypeName, device: str, seed: int,
                  task: Task) -> Loaded:
    """The base adapter_config.json names, loaded with its tokenizer, and the adapter applied to it."""
    from gpt2.model.config import CLASSIFIER_ARCHITECTURE, LM_ARCHITECTURE
    from gpt2.model.hf import wrong_kind_error
    from gpt2.model.lora import ADAPTER_CONFIG, load_adapter, read_adapter_config

    raw = read_adapter_config(directory)
    adapter_task = _adapter_task(raw)
    if adapter_task != task:
        raise wrong_kind_error(directory, CLASSIFIER_ARCHITECTURE if adapter_task == "classify" else LM_ARCHITECTURE)
    name = raw.get("base_model_name_or_path")
    if not name:
        raise UserError(f"{directory / ADAPTER_CONFIG} names no base_model_name_or_path, so its base is unknown; "
                        "load the base and apply it with gpt2.model.lora.load_adapter(dir, base=model)")
    if _adapter_dir(name) is not None:
        raise UserError(f"{directory}: its base {name} is itself an adapter; stacked adapters are not supported "
                        "(merge the first with `gpt2 lora merge`)")
    try:
        base = load(name, tokenizer=tokenizer, dtype=dtype, device=device, seed=seed, task=task)
    except UserError as e:  # say which file named the base: a relative path resolves from the current directory
        raise type(e)(f"{directory}'s base {name!r} ({ADAPTER_CONFIG}: base_model_name_or_path): {e}") from None
    if tokenizer is None:
        own = _adapter_tokenizer(directory)
        if own is not None and own.hash != base.tokenizer.hash:
            raise UserError(f"{directory} holds another tokenizer than its base {name}: an adapter must use its "
                            "base's tokenizer (remove the adapter's tokenizer files, or pass --tokenizer)")
    model = load_adapter(directory, base=base.model)
    chat_format = base.chat_format
    if task == "lm" and (directory / "chat.json").is_file():
        from gpt2.tokenizer.chat import load_chat_format

        chat_format = load_chat_format(directory)
    return Loaded(model, base.tokenizer, directory, chat_format)


def _adapter_task(raw: dict[str, Any]) -> Task:
    """The loader's task for an adapter_config.json: PEFT's SEQ_CLS is "classify", CAUSAL_LM is "lm"."""
    return "classify" if raw["task_type"] == "SEQ_CLS" else "lm"


def _adapter_tokenizer(directory: Path) -> Any:
    """The tokenizer saved in an adapter directory, or None when it holds none."""
    from gpt2.tokenizer import load_tokenizer

    try:
        return load_tokenizer(directory)
    except FileNotFoundError:
        return None


@dataclass
class Described:
    """What a model name resolves to, read from its config.json alone (no weights loaded)."""

    config: Any  # gpt2.model.config.GPT2Config: the model's, or an adapter's base's
    directory: Path | None  # the directory read (an adapter's own directory for an adapter; None for a preset)
    adapter: dict[str, Any] | None = None  # an adapter's base, rank and parameter count


def describe(source: str | Path) -> Described:
    """The config a name resolves to, without loading weights: for `gpt2 model info` and anything that needs a
    model's shape only. Takes what `load` takes (run, RUN/best, checkpoint, HF directory, hub id, preset:NAME,
    adapter); an adapter is described by its base's config and its own size."""
    from gpt2.model.config import GPT2Config

    if str(source).startswith(PRESET_PREFIX):
        return Described(GPT2Config.from_preset(str(source)[len(PRESET_PREFIX):]), None)
    directory = resolve_model_dir(source)
    if _adapter_dir(directory) is None:
        return Described(GPT2Config.load(directory), directory)
    from safetensors import safe_open

    from gpt2.model.lora import ADAPTER_WEIGHTS, read_adapter_config

    raw = read_adapter_config(directory)
    name = raw.get("base_model_name_or_path")
    if not name or _adapter_dir(name) is not None:
        raise UserError(f"{directory}: its base {name!r} is not a model (adapter_config.json: base_model_name_or_path)")
    with safe_open(str(directory / ADAPTER_WEIGHTS), framework="pt") as f:
        n = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118 (not iterable); shapes only
    return Described(describe(name).config, directory,
                     {"base": str(name), "rank": raw.get("r"), "task_type": raw.get("task_type"), "parameters": n})


def task_of(source: str | Path) -> Task:
    """What `source` holds: "classify" for a sequence classifier (or a SEQ_CLS adapter), else "lm"."""
    from gpt2.model.config import CLASSIFIER_ARCHITECTURE
    from gpt2.model.hf import read_config

    if str(source).startswith(PRESET_PREFIX):
        return "lm"
    directory = resolve_model_dir(source)
    if _adapter_dir(directory) is not None:
        from gpt2.model.lora import read_adapter_config

        return _adapter_task(read_adapter_config(directory))
    return "classify" if read_config(directory)[1] == CLASSIFIER_ARCHITECTURE else "lm"


def load_model_and_tokenizer(
    source: str | Path, *, tokenizer: str | None = None, dtype: DtypeName = "fp32", device: str = "auto"
) -> tuple[GPT2LMHeadModel, Any]:
    """`load(...)` of a language model as a (model, tokenizer) pair."""
    loaded = load(source, tokenizer=tokenizer, dtype=dtype, device=device)
    assert isinstance(loaded.model, GPT2LMHeadModel)
    return loaded.model, loaded.tokenizer
