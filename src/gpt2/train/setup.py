"""Everything a run needs before its first step: the tokenizer, the token shards, the model.

    gpt2 train shakespeare-cpu          # fetches, trains the tokenizer and prepares shards first (cached)

Each piece is cached and reused: a tokenizer trained with the same settings on the same source is
loaded from `$GPT2_CACHE/tokenizers/`, shards prepared with the same tokenizer from
`$GPT2_CACHE/data/` (prepare itself leaves a finished directory alone and resumes an unfinished one).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from gpt2.common import atomic_write_text, cache_dir
from gpt2.config import DataConfig, ModelConfig, TrainConfig
from gpt2.errors import UserError
from gpt2.model import GPT2Config, GPT2LMHeadModel


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[-40:] or "data"


def _train_documents(cfg: DataConfig):
    """The documents of the training split only, so the tokenizer never sees validation text."""
    from gpt2.data.prepare import DEFAULT_VAL_FRACTION, is_val_document
    from gpt2.sources import resolve_source

    src = resolve_source(cfg.source, field=cfg.field, delimiter=cfg.delimiter)
    if src.val_files and cfg.val_fraction is None:
        src = dataclasses.replace(src, files=tuple(f for f in src.files if f.name not in src.val_files))
        yield from src.documents()
        return
    fraction = cfg.val_fraction if cfg.val_fraction is not None else DEFAULT_VAL_FRACTION
    for doc in src.documents():
        if not is_val_document(doc, fraction):
            yield doc


def with_control_tokens(cfg: DataConfig) -> tuple[DataConfig, list[str]]:
    """cfg reading a cached copy of its source with each record's control tokens before its text, and
    those tokens; cfg unchanged and [] without data.control_fields."""
    if not cfg.control_fields:
        if cfg.balance_controls:
            raise UserError("data.balance_controls=true balances the values of data.control_fields, and none are "
                            "named: add data.control_fields (e.g. [stars]) or drop balance_controls")
        return cfg, []
    from gpt2.data.controls import with_controls
    from gpt2.data.prepare import DEFAULT_VAL_FRACTION

    fraction = cfg.val_fraction if cfg.val_fraction is not None else DEFAULT_VAL_FRACTION
    path, tokens = with_controls(cfg.source, field=cfg.field, control_fields=cfg.control_fields,
                                 out_dir=cache_dir() / "controls", balance=cfg.balance_controls,
                                 val_fraction=fraction)
    return dataclasses.replace(cfg, source=str(path), field="text", control_fields=[], balance_controls=False), tokens


def ensure_tokenizer(cfg: DataConfig, *, progress: bool = True):
    """The run's tokenizer: GPT-2's, a directory, or a BPE trained (once, then cached) on the training split,
    with the data's control tokens (data.control_fields) as special tokens."""
    from gpt2.tokenizer import load_tokenizer, train_bpe

    cfg, controls = with_control_tokens(cfg)
    t = cfg.tokenizer
    if t.name != "train":
        tok = load_tokenizer(t.name)
        if controls and not set(controls) <= set(tok.special_tokens):
            raise UserError(f"data.control_fields needs the control tokens as special tokens, and tokenizer "
                            f"{t.name} lacks {sorted(set(controls) - set(tok.special_tokens))[:3]}: use "
                            "data.tokenizer.name=train")
        return tok
    source_id = cfg.source if not Path(cfg.source).exists() else str(Path(cfg.source).resolve())
    key = json.dumps([source_id, cfg.field, cfg.delimiter, cfg.val_fraction, t.vocab_size, t.min_frequency, t.pattern]
                     + ([controls] if controls else []))
    name = f"{_slug(source_id)}-bpe{t.vocab_size}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    directory = cache_dir() / "tokenizers" / name
    # The cache is named by the source's path; what it was trained on (sizes and mtimes of the files, as
    # the shards' fingerprint records them) is kept beside it, so a changed file trains it again instead
    # of the run depending on what the cache happened to hold. Written last: a half-saved one retrains.
    from gpt2.sources import resolve_source

    trained_on = json.dumps(resolve_source(cfg.source, field=cfg.field, delimiter=cfg.delimiter)
                            .describe(with_mtime=True), sort_keys=True)
    record = directory / "trained_on.json"
    try:
        if record.is_file() and record.read_text() == trained_on:
            return load_tokenizer(directory)
    except (FileNotFoundError, ValueError):
        pass
    why = "the source changed since it was trained; " if record.is_file() else ""
    print(f"{why}training a {t.vocab_size}-token byte-level BPE on {cfg.source} (train split) → {directory}",
          file=sys.stderr)
    from gpt2.tokenizer.bpe import ENDOFTEXT
    from gpt2.tokenizer.controls import CONTROL_RE

    # The merges are learned on the text alone: a control token is one special id, never cut into pieces.
    docs = (CONTROL_RE.sub("", d) for d in _train_documents(cfg)) if controls else _train_documents(cfg)
    tok = train_bpe(docs, vocab_size=t.vocab_size, min_frequency=t.min_frequency, pattern=t.pattern,
                    special_tokens=[ENDOFTEXT, *controls], progress=progress)
    tok.save(directory)
    atomic_write_text(record, trained_on)
    return tok


def ensure_shards(cfg: DataConfig, tokenizer: Any, *, progress: bool = True) -> Path:
    """A prepared shard directory for (source, tokenizer); prepared now if missing or unfinished."""
    from gpt2.data.prepare import prepare

    cfg, controls = with_control_tokens(cfg)
    if cfg.dir is not None:
        out = Path(cfg.dir)
        if not (out / "meta.json").is_file() and any(out.glob("train_*.bin")):
            # Shards written elsewhere (llm.c's fineweb.py, modded-nanogpt, gpt2.data.shards.write_shard):
            # used as they are; data.source is not read. Their token ids must fit the tokenizer's vocabulary.
            print(f"using the shards in {out} as they are (no meta.json: not prepared here)", file=sys.stderr)
            return out
    else:
        source_id = cfg.source if not Path(cfg.source).exists() else str(Path(cfg.source).resolve())
        key = json.dumps([source_id, cfg.field, cfg.delimiter, cfg.val_fraction, tokenizer.hash])
        out = cache_dir() / "data" / f"{_slug(source_id)}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    result = prepare(cfg.source, out=out, tokenizer=tokenizer, workers=cfg.workers or None, field=cfg.field, delimiter=cfg.delimiter,
                     val_fraction=cfg.val_fraction, replace_changed=cfg.dir is None, progress=progress,
                     allowed_special=controls)
    if not result.already_done:
        print(result.summary(), file=sys.stderr)
    return out


def bytes_per_token(shard_dir: str | Path, tokenizer: Any, split: str = "val") -> float:
    """UTF-8 bytes per token of a split, to turn nats/token into bits/byte.

    Counted by decoding the split's tokens (byte-level BPE decodes to exactly the bytes it encoded;
    the <|endoftext|> before each document stands for no text and counts 0 bytes), then cached
    beside the shards.
    """
    import numpy as np

    from gpt2.data.loader import TokenStream, shard_files

    cache = Path(shard_dir) / f".bytes_per_token.{split}.json"
    # The count is only valid for the shards it was made from: prepared again (a changed source), they differ.
    files = shard_files(shard_dir, split=split)
    signature = [[Path(f).name, os.stat(f).st_size, os.stat(f).st_mtime_ns] for f in files]
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("shards") == signature:
            return float(cached["bytes_per_token"])
    tokens = np.concatenate([a.astype(np.int64) for a in TokenStream(files).arrays])
    special = list(tokenizer.special_tokens.values())
    n_bytes = len(tokenizer.decode_bytes(tokens[~np.isin(tokens, special)].tolist()))
    value = n_bytes / len(tokens)
    atomic_write_text(cache, json.dumps({"bytes": n_bytes, "tokens": len(tokens), "bytes_per_token": value,
                                            "shards": signature}))
    return value


def model_config(cfg: ModelConfig, train: TrainConfig, *, vocab_size: int, eot: int) -> GPT2Config:
    """The GPT2Config of a run: the preset, the run's overrides, the tokenizer's vocabulary."""
    overrides: dict[str, Any] = {
        k: getattr(cfg, k) for k in ("n_layer", "n_head", "n_embd") if getattr(cfg, k) is not None
    }
    overrides["n_positions"] = cfg.n_positions or train.seq_len
    overrides["vocab_size"] = cfg.vocab_size or vocab_size
    overrides.update(**cfg.pdrops(),
                     pad_vocab_size_multiple=cfg.pad_vocab_size_multiple, bos_token_id=eot, eos_token_id=eot)
    config = GPT2Config.from_preset(cfg.preset, **overrides)
    if train.seq_len > config.n_positions:
        raise UserError(f"train.seq_len={train.seq_len} is longer than model.n_positions={config.n_positions}")
    if config.vocab_size < vocab_size:
        raise UserError(f"model.vocab_size={config.vocab_size} is smaller than the tokenizer's {vocab_size}")
    return config


def _init_dir(init_from: str) -> Path | str:
    """model.init_from as gpt2.load resolves it (a run, RUN/best, a checkpoint, an HF directory; a hub id as it
    is); an adapter or a preset is refused with what to do instead."""
    from gpt2.load import PRESET_PREFIX, is_adapter, resolve_model_dir

    if str(init_from).startswith(PRESET_PREFIX):
        raise UserError(f"model.init_from={init_from} names random weights: set model.preset="
                        f"{str(init_from)[len(PRESET_PREFIX):]} to train from scratch")
    if not Path(init_from).expanduser().exists():
        return init_from  # a hub id: downloaded by from_pretrained
    directory = resolve_model_dir(init_from)
    if is_adapter(directory):
        raise UserError(f"model.init_from={init_from} is a LoRA adapter: fold it into its base first with "
                        "`gpt2 lora merge ADAPTER OUT`, then set model.init_from=OUT")
    return directory


def build_model(cfg: ModelConfig, train: TrainConfig, *, vocab_size: int, eot: int) -> GPT2LMHeadModel:
    """A fresh model, or pretrained weights when model.init_from is set (continued pretraining)."""
    if cfg.init_from:
        model = GPT2LMHeadModel.from_pretrained(
            _init_dir(cfg.init_from), **cfg.pdrops()
        )
        if model.config.vocab_size < vocab_size:
            raise UserError(f"model.init_from={cfg.init_from} has {model.config.vocab_size} token ids, the "
                             f"tokenizer {vocab_size}: use the tokenizer the model was trained with")
        if train.seq_len > model.config.n_positions:
            raise UserError(f"train.seq_len={train.seq_len} exceeds {cfg.init_from}'s n_positions="
                             f"{model.config.n_positions}")
        return model.train()
    return GPT2LMHeadModel(model_config(cfg, train, vocab_size=vocab_size, eot=eot))
