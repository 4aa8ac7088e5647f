"""Run configuration: one dataclass per concern under RunConfig, read from YAML plus dotted overrides.

    gpt2 train shakespeare-cpu train.max_steps=10 --print-config   # print the resolved config of a recipe
    gpt2 train --resume runs/shakespeare-cpu --print-config        # ... or of a run, as `--resume` continues it

A recipe is a YAML file or the name of one shipped in `gpt2/configs/` (`load_config("shakespeare-cpu")`),
so the library, the CLI and a notebook resolve names the same way; `load_run_config(run_dir)` reads the
resolved config (`run.yaml`) a run or checkpoint was started with.

Precedence: dataclass defaults < the YAML recipe < `key=value` overrides. omegaconf checks keys and
types against the dataclasses; an unknown key or a value of the wrong type is a ValueError that names
the key. Each component receives only its own section (the loop hands `cfg.optim` to the optimizer,
`cfg.data` to the data pipeline, ...).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from gpt2.errors import UserError, UserFileNotFoundError

# omegaconf needs typing.Optional / List in annotations it resolves at runtime, so this module avoids
# PEP 604 unions in dataclass fields.


@dataclass
class ModelConfig:
    """Which GPT-2 to train."""

    preset: str = "tiny"
    """Base shape: gpt2, gpt2-medium, gpt2-large, gpt2-xl, tiny, mini, small (gpt2.model.config.PRESETS), or auto:
    sized to this machine and train.max_minutes (gpt2.train.sizing; model.n_layer/n_head/n_embd/dropout given win)."""
    n_layer: int | None = None
    """Override the preset's number of blocks."""
    n_head: int | None = None
    """Override the preset's attention heads."""
    n_embd: int | None = None
    """Override the preset's width."""
    n_positions: int | None = None
    """Context size of the position table; default: train.seq_len."""
    vocab_size: int | None = None
    """Default: the tokenizer's vocabulary size."""
    dropout: float | None = None
    """One value for resid/embd/attn dropout (GPT-2 used 0.1; short runs do better with 0); default 0, or what
    preset=auto picks."""
    pad_vocab_size_multiple: int = 1
    """Round the embedding table up to a multiple of this (64 on GPUs); outputs never change."""
    init_from: str | None = None
    """Start from pretrained weights: an HF-format directory or a hub id (continued pretraining)."""

    def pdrops(self) -> dict[str, float]:
        """The GPT2Config dropout fields this section asks for: one rate for resid/embd/attn (0 when unset)."""
        p = self.dropout or 0.0
        return {"resid_pdrop": p, "embd_pdrop": p, "attn_pdrop": p}


@dataclass
class TokenizerConfig:
    """Which tokenizer, or how to train one."""

    name: str = "train"
    """'train' (a byte-level BPE trained on the training split), 'gpt2', or a tokenizer directory."""
    vocab_size: int = 4096
    """Vocabulary size when training one (special tokens included)."""
    min_frequency: int = 2
    """Pairs seen fewer times than this are not merged when training one."""
    pattern: str = "gpt2"
    """Pre-split pattern when training one: gpt2 or gpt4."""


@dataclass
class DataConfig:
    """Where training text comes from and where its shards go."""

    source: str = "shakespeare"
    """A named corpus (shakespeare), a file, directory or glob, or hf:NAME[:CONFIG]."""
    dir: str | None = None
    """Shard directory; default: a cache directory keyed by source and tokenizer. Existing shards are reused;
    a directory of train_*/val_*.bin shards without meta.json (llm.c's) is read as it is, data.source unused."""
    field: str = "text"
    """jsonl/HF field holding the text."""
    delimiter: str | None = None
    """For .txt sources: split each file into documents on this string ('blank' = blank lines); None = one per file."""
    val_fraction: float | None = None
    """Fraction of documents held out; default: the source's own split (whole plays for shakespeare)."""
    workers: int = 0
    """Tokenizer processes for preparing shards; 0 = one per CPU."""
    control_fields: list[str] = dataclasses.field(default_factory=list)
    """Metadata fields of each record whose values become control tokens <|field=value|> before its text."""
    balance_controls: bool = False
    """Repeat training records of rarer control values so each value is read about as often (held-out once)."""
    tokenizer: TokenizerConfig = dataclasses.field(default_factory=TokenizerConfig)


DEFAULT_WEIGHT_DECAY = 0.1  # GPT-2 / nanoGPT's AdamW weight decay


@dataclass
class OptimConfig:
    """The optimizer (AdamW, or Muon for the blocks' matrices with AdamW for the rest) and the LR schedule."""

    name: str = "adamw"
    """adamw, or muon: Muon on the blocks' hidden matrices (attn.c_attn/c_proj, mlp.c_fc/c_proj weights),
    AdamW on embeddings, the tied head, biases and LayerNorms (modded-nanogpt); see train/optim.py."""
    lr: float = 6e-4
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """The schedule decays to lr × this."""
    warmup_steps: int = 100
    """Linear warm-up from lr / warmup_steps."""
    schedule: str = "cosine"
    """cosine, linear or constant (after warm-up)."""
    weight_decay: float | None = None
    """Applied to matrices (2-D weights) only; biases, LayerNorms and embeddings... see optim.py. Default 0.1,
    or what model.preset=auto picks."""
    beta1: float = 0.9
    """AdamW β1."""
    beta2: float = 0.95
    """AdamW β2."""
    eps: float = 1e-8
    """AdamW ε."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = off)."""
    fused: bool | None = None
    """Fused AdamW kernel; default: on for CUDA and CPU devices."""
    muon_lr: float | None = None
    """Muon's peak LR (the schedule scales it with lr); default: optim.lr, which match_rms_adamw carries over."""
    muon_momentum: float = 0.95
    """Muon's Nesterov momentum (torch's default, Keller Jordan's and Moonlight's value)."""
    muon_weight_decay: float | None = None
    """Muon's decoupled weight decay on the matrices; default: optim.weight_decay (Moonlight keeps AdamW's)."""
    muon_adjust_lr: str = "match_rms_adamw"
    """match_rms_adamw (update RMS ≈ AdamW's: lr × 0.2·√max(A,B)) or original (lr × √max(1,A/B), wants lr ~0.02)."""
    muon_ns_dtype: str = "auto"
    """Newton-Schulz dtype: auto (bf16 where matmuls are native bf16, else fp32), bf16 or fp32."""

    def decay(self) -> float:
        """weight_decay as the optimizer takes it: the default 0.1 when unset."""
        return DEFAULT_WEIGHT_DECAY if self.weight_decay is None else self.weight_decay


@dataclass
class TrainConfig:
    """The loop: sizes, duration, precision, distribution, logging cadence."""

    out_dir: str = "runs/default"
    """Run directory: checkpoints, metrics.jsonl, TensorBoard events, loss.png, samples."""
    seq_len: int = 128
    """Context length of each training window."""
    micro_batch_size: int = 16
    """Sequences per forward pass on each process."""
    global_batch_tokens: int | None = None
    """Tokens per optimizer step over all processes and micro-steps; default: one micro-batch per process."""
    max_steps: int = 1000
    """Optimizer steps (the schedule spans these)."""
    max_minutes: float | None = None
    """Stop early after this much wall time, saving a final checkpoint (the schedule is not shortened)."""
    seed: int = 1337
    """Seeds model init, data order, dropout and sampling."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps."""
    dtype: str = "auto"
    """auto (bf16 autocast where supported, else fp16 on CUDA, else fp32), fp32, bf16 or fp16."""
    compile: bool = False
    """torch.compile the model (from outside; eval and sampling at other shapes use the plain module)."""
    distributed: str = "ddp"
    """Under torchrun: ddp, or fsdp (FSDP2 fully_shard per block) for models too big for one device."""
    log_interval: int = 10
    """Steps between progress/metrics lines."""
    threads: int | None = None
    """torch CPU threads; default: torch's own choice."""
    spike_factor: float = 0.0
    """Skip an update whose loss exceeds the running mean by this many running std-devs (0 = off)."""
    max_skipped_in_row: int = 10
    """Stop the run after this many skipped (non-finite or spiking) updates in a row."""


@dataclass
class CheckpointConfig:
    """When and how many checkpoints."""

    interval: int = 500
    """Steps between checkpoints (0 = only the final one)."""
    keep_last: int = 3
    """How many step-NNNNNN directories to keep."""
    resume: str | None = None
    """A run directory or checkpoint to continue from (same as `gpt2 train --resume DIR`)."""
    sharded: bool = False
    """Under FSDP: each rank writes its own shards (torch.distributed.checkpoint) instead of one gathered HF
    directory; `gpt2 checkpoint consolidate` turns such a checkpoint into one."""


@dataclass
class EvalConfig:
    """Periodic validation."""

    interval: int = 200
    """Steps between validation passes (0 = only at the end)."""
    steps: int = 20
    """Batches per validation pass (0 = the whole val split)."""
    hellaswag: str = ""
    """HellaSwag jsonl file (or `val` to download it) to score during training; empty = off."""
    hellaswag_interval: int = 0
    """Steps between HellaSwag passes (0 = with every validation pass, and at the end)."""
    hellaswag_limit: int = 0
    """HellaSwag examples per pass (0 = all)."""


@dataclass
class SampleConfig:
    """Periodic sample generations."""

    interval: int = 0
    """Steps between samples (0 = only at the end)."""
    prompts: list = dataclasses.field(default_factory=lambda: ["\n"])
    """Prompts to continue."""
    max_new_tokens: int = 64
    """Tokens generated per sample."""
    temperature: float = 0.8
    """Sampling temperature."""
    top_k: int = 50
    """Keep the k most likely tokens (0 = all)."""


@dataclass
class LoRASection:
    """LoRA adapters instead of full fine-tuning (gpt2.model.lora): set `rank` to turn them on."""

    rank: int | None = None
    """Adapter rank r; None trains the whole model (or what finetune.trainable says)."""
    alpha: float = 16.0
    """Scaling numerator: the update is B·A·alpha/r."""
    dropout: float = 0.0
    """Dropout on the adapter's input (PEFT's lora_dropout)."""
    targets: list = dataclasses.field(default_factory=lambda: ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"])
    """Which layers of every block get an adapter: c_attn, attn.c_proj, c_fc, mlp.c_proj."""


@dataclass
class DPOSection:
    """Preference tuning (`gpt2 finetune dpo`, gpt2.finetune.dpo): DPO's sigmoid loss against a frozen reference."""

    beta: float = 0.1
    """DPO's β: how far the policy may move from the reference (rewards are β · log-ratio); must be > 0."""
    average_logps: bool = False
    """Average each response's log-probs over its tokens (LLMs-from-scratch) instead of summing them (TRL)."""
    precompute_reference: bool = False
    """Score the reference once before training (TRL's precompute_ref_log_probs): no reference forward per step."""
    reference: str | None = None
    """The reference model (a run, checkpoint, model directory or hub id); default: model.init_from, the start."""
    format: str | None = None
    """The prompt format (gpt2.generate.chat.FORMATS) for a base without chat.json; default: the base's own."""


@dataclass
class FinetuneConfig:
    """What fine-tuning adds (`gpt2 finetune classify`): labelled data, the head, what trains.

    The base is model.init_from (a run, checkpoint, model directory, hub id or preset:NAME) with its
    own tokenizer; train.seq_len is the longest example in tokens, train.micro_batch_size the examples
    per micro-batch."""

    train_file: str = ""
    """csv, tsv, jsonl or parquet with a text and a label column (the whole dataset when no val/test file)."""
    val_file: str | None = None
    """Validation examples; default: a split of train_file."""
    test_file: str | None = None
    """Test examples, scored with the best checkpoint at the end; default: a split of train_file."""
    text_field: str = "text"
    """Column (or 0-based index, for a headerless csv/tsv) holding the text."""
    label_field: str = "label"
    """Column (or 0-based index) holding the label; names are mapped to ids in sorted order."""
    split: list = dataclasses.field(default_factory=lambda: [0.7, 0.1, 0.2])
    """train/val/test fractions of train_file for what val_file/test_file do not give."""
    split_seed: int = 123
    """Seeds the split and the down-sampling, apart from train.seed."""
    balance: str = "none"
    """none, downsample (every class down to the smallest, before the split) or class_weights (in the loss)."""
    truncation_side: str = "right"
    """Which end of a long text is cut: right keeps the beginning, left keeps the end, both keeps the first quarter
    of the tokens read and the last three quarters."""
    trainable: str = "all"
    """head (the new score layer only), last_blocks (finetune.last_blocks blocks + final LayerNorm + head) or all."""
    last_blocks: int = 1
    """How many of the last blocks train with trainable=last_blocks."""
    global_batch_size: int | None = None
    """Examples per optimizer step over all processes and micro-steps; default: one micro-batch per process."""
    every_token_weight: float = 0.0
    """Classification: weight of an auxiliary loss asking the head for the label at every real token (each
    example's mean over its tokens), beside the last token's loss; 0 = off. Training only: inference and
    the checkpoint's format are unchanged."""
    metric: str = "accuracy"
    """Validation metric that picks the checkpoint named `best`: accuracy, macro_f1 or val_loss."""
    eval_batch_size: int = 64
    """Examples per forward when evaluating."""
    format: str = "alpaca"
    """Instruction tuning: the prompt format (gpt2.generate.chat.FORMATS), saved in each checkpoint."""
    train_on_prompt: bool = False
    """Instruction tuning: also train on the prompt tokens (litgpt's default); padding never trains."""
    lora: LoRASection = dataclasses.field(default_factory=LoRASection)
    dpo: DPOSection = dataclasses.field(default_factory=DPOSection)


@dataclass
class RunConfig:
    """Everything `gpt2 train` (and `gpt2 finetune`) needs."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    sample: SampleConfig = dataclasses.field(default_factory=SampleConfig)
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)


def _one_line(e: OmegaConfBaseException) -> str:
    msg = str(e).splitlines()[0]
    key = getattr(e, "full_key", None)
    if isinstance(e, ConfigKeyError):
        return f"unknown config key {key!r}: {msg}"
    if isinstance(e, ValidationError):
        return f"bad value for config key {key!r}: {msg}"
    return f"config error at {key!r}: {msg}" if key else f"config error: {msg}"


DEFAULT_RECIPE = "shakespeare-cpu"
RECIPES_DIR = Path(__file__).resolve().parent / "configs"
RUN_CONFIG = "run.yaml"


def available_recipes() -> list[str]:
    """The names of the recipes shipped in gpt2/configs/, sorted."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def recipe_path(recipe: str | Path | None = None) -> Path:
    """A YAML file, or the name of a shipped recipe (with or without .yaml); None is the default recipe."""
    name = DEFAULT_RECIPE if recipe is None else recipe
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if path.parent == Path(".") and path.suffix in ("", ".yaml"):  # a bare name: look among the shipped recipes
        shipped = RECIPES_DIR / f"{path.stem}.yaml"
        if shipped.is_file():
            return shipped
    if path.suffix in (".yaml", ".yml") or path.parent != Path("."):
        raise UserFileNotFoundError(f"no config file {str(name)!r} (and no shipped recipe of that name; "
                                    f"recipes: {', '.join(available_recipes())})")
    raise UserError(f"unknown recipe {str(name)!r}; recipes: {', '.join(available_recipes())} (or a YAML path)")


def run_config_path(run: str | Path) -> Path:
    """The run.yaml a run directory (its latest checkpoint, else its top level) or a checkpoint was started with."""
    from gpt2.common import resolve_checkpoint

    try:
        path = resolve_checkpoint(run) / RUN_CONFIG
    except FileNotFoundError:
        path = Path(run) / RUN_CONFIG  # a run killed before its first checkpoint still has its run.yaml
    if not path.is_file():
        path = Path(run) / RUN_CONFIG
    if not path.is_file():
        raise UserFileNotFoundError(f"no {RUN_CONFIG} in {run} or its latest checkpoint; pass the recipe too "
                                    "(gpt2 train RECIPE --resume RUN)")
    return path


def load_run_config(run: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """The resolved config a run (or checkpoint) was started with, plus overrides: what `--resume RUN` continues."""
    return load_config(run_config_path(run), overrides)


def config_from_args(args: list[str], *, resume: str | Path | None = None, default: str | None = None,
                     example: str = "shakespeare-cpu") -> RunConfig:
    """The one parser of a verb's `[RECIPE] [key=value ...]` words (train, every finetune verb).

    The first word is the recipe unless it holds '='; with --resume and no recipe the run's own run.yaml is
    the recipe; else `default`, and without one a UserError naming `example`.
    """
    recipe = args[0] if args and "=" not in args[0] else None
    overrides = args[1:] if recipe else list(args)
    if resume and recipe is None:
        return load_run_config(resume, overrides)  # what the run was started with, so `--resume DIR` continues it
    recipe = recipe or default
    if recipe is None:
        raise UserError(f"give a recipe (e.g. {example}, a YAML file) or --resume RUN_DIR")
    return load_config(recipe, overrides)


def load_config(
    recipe: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), *,
    resume: str | Path | None = None, **sections: Any
) -> RunConfig:
    """Defaults < YAML recipe < dotted overrides ("train.max_steps=10"); then validate.

    `recipe` is a YAML path or a shipped recipe's name ("shakespeare-cpu"); None means the dataclass
    defaults alone, unless `resume` names a run, whose run.yaml is then the recipe.
    """
    if recipe is not None:
        recipe = recipe_path(recipe)
    elif resume is not None:
        recipe = run_config_path(resume)
    try:
        cfg = OmegaConf.structured(RunConfig)
        if recipe is not None:
            cfg = OmegaConf.merge(cfg, OmegaConf.load(recipe))
        if sections:
            cfg = OmegaConf.merge(cfg, OmegaConf.create(sections))
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise UserError(f"override {bad[0]!r} is not key=value (e.g. train.max_steps=100)")
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        run: RunConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        raise UserError(_one_line(e)) from None
    validate(run)
    return run


def validate(cfg: RunConfig) -> None:
    """Checks omegaconf's types cannot express; each error names the key."""
    t, o = cfg.train, cfg.optim
    checks = [
        (t.seq_len >= 1, "train.seq_len must be at least 1"),
        (t.micro_batch_size >= 1, "train.micro_batch_size must be at least 1"),
        (t.max_steps >= 1, "train.max_steps must be at least 1"),
        (t.global_batch_tokens is None or t.global_batch_tokens >= 1, "train.global_batch_tokens must be positive"),
        (t.dtype in ("auto", "fp32", "bf16", "fp16"), f"train.dtype={t.dtype!r}: use auto, fp32, bf16 or fp16"),
        (t.distributed in ("ddp", "fsdp"), f"train.distributed={t.distributed!r}: use ddp or fsdp"),
        (t.log_interval >= 1, "train.log_interval must be at least 1"),
        (o.lr > 0, f"optim.lr={o.lr} must be positive"),
        (0 <= o.min_lr_ratio <= 1, f"optim.min_lr_ratio={o.min_lr_ratio} must be in [0, 1]"),
        (o.warmup_steps >= 0, "optim.warmup_steps must be >= 0"),
        (o.schedule in ("cosine", "linear", "constant"), f"optim.schedule={o.schedule!r}: use cosine, linear or constant"),
        (0 <= o.beta1 < 1 and 0 <= o.beta2 < 1, "optim.beta1 and optim.beta2 must be in [0, 1)"),
        (o.grad_clip >= 0, "optim.grad_clip must be >= 0"),
        (o.name in ("adamw", "muon"), f"optim.name={o.name!r}: use adamw or muon"),
        (o.muon_lr is None or o.muon_lr > 0, f"optim.muon_lr={o.muon_lr} must be positive"),
        (0 <= o.muon_momentum < 1, f"optim.muon_momentum={o.muon_momentum} must be in [0, 1)"),
        (o.weight_decay is None or o.weight_decay >= 0, f"optim.weight_decay={o.weight_decay} must be >= 0"),
        (o.muon_weight_decay is None or o.muon_weight_decay >= 0,
         f"optim.muon_weight_decay={o.muon_weight_decay} must be >= 0"),
        (o.muon_adjust_lr in ("match_rms_adamw", "original"),
         f"optim.muon_adjust_lr={o.muon_adjust_lr!r}: use match_rms_adamw or original"),
        (o.muon_ns_dtype in ("auto", "bf16", "fp32"), f"optim.muon_ns_dtype={o.muon_ns_dtype!r}: use auto, bf16 or fp32"),
        # Newton-Schulz orthogonalises whole matrices; FSDP2 hands each rank a shard of every matrix.
        (not (o.name == "muon" and t.distributed == "fsdp"),
         "optim.name=muon does not work under train.distributed=fsdp (Newton-Schulz needs whole matrices, FSDP "
         "shards them): use train.distributed=ddp, or optim.name=adamw"),
        (cfg.model.dropout is None or 0 <= cfg.model.dropout < 1, "model.dropout must be in [0, 1)"),
        (cfg.model.n_positions is None or t.seq_len <= cfg.model.n_positions,
         f"train.seq_len={t.seq_len} is longer than model.n_positions={cfg.model.n_positions}"),
        (cfg.checkpoint.keep_last >= 1, "checkpoint.keep_last must be at least 1"),
        (cfg.checkpoint.interval >= 0 and cfg.eval.interval >= 0 and cfg.sample.interval >= 0
         and cfg.eval.hellaswag_interval >= 0 and cfg.eval.hellaswag_limit >= 0,
         "checkpoint/eval/sample/hellaswag intervals (and eval.hellaswag_limit) must be >= 0"),
        (cfg.data.tokenizer.pattern in ("gpt2", "gpt4"), "data.tokenizer.pattern: use gpt2 or gpt4"),
        *_finetune_checks(cfg.finetune, o.name),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)


def _finetune_checks(f: FinetuneConfig, cfg_optim_name: str) -> list[tuple[bool, str]]:
    return [
        (f.balance in ("none", "downsample", "class_weights"),
         f"finetune.balance={f.balance!r}: use none, downsample or class_weights"),
        (f.truncation_side in ("left", "right", "both"),
         f"finetune.truncation_side={f.truncation_side!r}: use left, right or both"),
        (f.trainable in ("head", "last_blocks", "all"), f"finetune.trainable={f.trainable!r}: use head, last_blocks or all"),
        (f.last_blocks >= 1, "finetune.last_blocks must be at least 1"),
        (f.metric in ("accuracy", "macro_f1", "val_loss"), f"finetune.metric={f.metric!r}: use accuracy, macro_f1 or val_loss"),
        (len(f.split) == 3 and all(isinstance(x, (int, float)) and x >= 0 for x in f.split)
         and abs(sum(f.split) - 1) < 1e-6 and f.split[0] > 0,
         f"finetune.split={list(f.split)} must be three fractions train/val/test that sum to 1, e.g. [0.7,0.1,0.2]"),
        (f.global_batch_size is None or f.global_batch_size >= 1, "finetune.global_batch_size must be positive"),
        (f.eval_batch_size >= 1, "finetune.eval_batch_size must be at least 1"),
        (f.every_token_weight >= 0, f"finetune.every_token_weight={f.every_token_weight} must be 0 (off) or positive"),
        (f.dpo.beta > 0, f"finetune.dpo.beta={f.dpo.beta} must be positive (DPO's β scales the log-ratios; 0.1 is "
                         "TRL's default)"),
        (f.lora.rank is None or f.lora.rank >= 1,
         f"finetune.lora.rank={f.lora.rank} must be at least 1 (or null for full fine-tuning)"),
        (f.lora.alpha > 0, f"finetune.lora.alpha={f.lora.alpha} must be positive"),
        (0 <= f.lora.dropout < 1, f"finetune.lora.dropout={f.lora.dropout} must be in [0, 1)"),
        (bool(f.lora.targets) and all(t in ("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj") for t in f.lora.targets),
         f"finetune.lora.targets={list(f.lora.targets)}: choose among c_attn, attn.c_proj, c_fc, mlp.c_proj"),
        (f.lora.rank is None or cfg_optim_name != "muon",
         "optim.name=muon orthogonalises the blocks' full weight matrices, which LoRA freezes: use optim.name=adamw "
         "with finetune.lora.rank"),
        (f.lora.rank is None or f.trainable == "all",
         f"finetune.trainable={f.trainable} is for full fine-tuning; with finetune.lora.rank set the adapters "
         "(and a classifier's head) train: drop one of the two"),
    ]


def to_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML (written to run.yaml in every checkpoint)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
