"""`gpt2 serve BASE --adapter NAME=DIR ...`: LoRA adapters served beside their base, each under its own name.

    gpt2 serve runs/base --adapter poet=runs/poet-lora --adapter coder=runs/coder-lora/step-000300

A request's `model` picks one (the base answers to its own name); rows of different adapters decode in the
same batch (gpt2.model.multi_lora). This module turns the command line's NAME=DIR pairs into checked
adapters: every refusal is one line naming the flag, before the server binds its port.

An adapter must fit the base it is served on: its matrices the base's shapes (n_layer, n_embd, n_inner;
gpt2.model.lora.read_adapter), its task a language model's, and its tokenizer the base's (the one saved in
the adapter directory, else the one of the base its adapter_config.json names, where that is a local
directory). Its prompt format is its own chat.json, else the base's, as `gpt2.load` gives it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt2.errors import UserError, UserFileNotFoundError
from gpt2.model.multi_lora import Adapter


@dataclass
class NamedAdapter:
    """One served adapter: the name requests use, its directory, its weights and its prompt format (None:
    the base's)."""

    name: str
    directory: Path
    lora: Adapter
    chat_format: Any = None


def parse_adapter_specs(specs: Sequence[str], *, base_name: str) -> list[tuple[str, str]]:
    """`--adapter NAME=DIR` values as (name, dir) pairs; a malformed value, a name given twice or the base's
    own name is one error line (checked before any model loads)."""
    pairs: list[tuple[str, str]] = []
    for spec in specs:
        name, sep, directory = spec.partition("=")
        name, directory = name.strip(), directory.strip()
        if not sep or not name or not directory:
            raise UserError(f"--adapter {spec!r}: give NAME=DIR (the name requests use in `model`, then the "
                            "adapter's directory)")
        if name == base_name:
            raise UserError(f"--adapter {name}={directory}: {name!r} is the base model's name; name the adapter "
                            "otherwise (or rename the base with --model-name)")
        if any(name == seen for seen, _ in pairs):
            raise UserError(f"--adapter: two adapters are named {name!r} ({dict(pairs)[name]} and {directory}); "
                            "give each its own name")
        pairs.append((name, directory))
    return pairs


def load_adapters(pairs: Sequence[tuple[str, str]], *, base: Any, tokenizer_given: bool = False) -> list[NamedAdapter]:
    """Read and check each (name, dir) against `base` (a gpt2.load.Loaded language model without adapters).

    `tokenizer_given`: the server was started with --tokenizer, which then stands for every adapter (as
    `gpt2.load` skips its tokenizer check then)."""
    from gpt2.load import is_adapter, resolve_model_dir
    from gpt2.model.lora import lora_layers, read_adapter, read_adapter_config
    from gpt2.tokenizer.chat import CHAT_FILE, load_chat_format

    if pairs and lora_layers(base.model):
        raise UserError(f"--adapter needs a base model, but {base.directory} is itself a LoRA adapter: serve the "
                        "base it names and give each adapter with --adapter NAME=DIR")
    out = []
    for name, spec in pairs:
        try:
            directory = resolve_model_dir(spec)
            if not is_adapter(directory):
                raise UserError(f"{directory} is not a LoRA adapter directory (no adapter_config.json); a whole "
                                "model is served by a server of its own")
            raw = read_adapter_config(directory)
            if not tokenizer_given:
                _check_tokenizer(directory, raw, base.tokenizer)
            lora = read_adapter(directory, base=base.model)
            fmt = load_chat_format(directory) if (directory / CHAT_FILE).is_file() else None
        except UserError as e:  # say which flag: the message may only name a file inside the directory
            raise type(e)(f"--adapter {name}={spec}: {e}") from None
        out.append(NamedAdapter(name, directory, lora, fmt))
    return out


def _check_tokenizer(directory: Path, raw: dict[str, Any], tokenizer: Any) -> None:
    """Refuse an adapter whose tokenizer (its own, else its named base's) is not the served base's."""
    from gpt2.tokenizer import load_tokenizer

    own, where = None, directory
    try:
        own = load_tokenizer(directory)
    except FileNotFoundError:
        named = raw.get("base_model_name_or_path")
        if named and Path(named).is_dir():
            from gpt2.load import resolve_model_dir

            try:
                where = resolve_model_dir(named)
                own = load_tokenizer(where)
            except (FileNotFoundError, UserFileNotFoundError):
                own = None
    if own is not None and own.hash != tokenizer.hash:
        raise UserError(f"the adapter's tokenizer ({where}) is not the base's: it was made for another base "
                        "(an adapter must use its base's tokenizer)")
