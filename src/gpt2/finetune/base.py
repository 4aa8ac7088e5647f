"""What every fine-tuning task shares: its base model, LoRA adapters, and how a checkpoint is written.

    run(cfg, ClassificationTask(cfg))      # gpt2.finetune.classify_task, through the one trainer
    run(cfg, InstructTask(cfg))            # gpt2.finetune.instruct
    run(cfg, DPOTask(cfg))                 # gpt2.finetune.dpo

`FinetuneTask` loads the base that `model.init_from` names (with its own tokenizer) in `prepare`. Then
`adapt(model, checkpoint)`, called at the end of a task's `build_model`, injects LoRA adapters when
`finetune.lora.rank` is set: the base is frozen, the adapters train, and so does a classifier's head.
On resume the base is built afresh from `model.init_from` and the checkpoint's adapter is loaded onto
it (its files are PEFT's, gpt2.model.lora).

**What a LoRA run's checkpoint holds.** The adapter in PEFT's format (adapter_config.json +
adapter_model.safetensors), the tokenizer, the trainer state and the run's config. No full model is
written. `base_model_name_or_path` names the base so that `gpt2.load`, `gpt2 lora merge` and PEFT's
`PeftModel.from_pretrained` find it:
- `model.init_from` a local model/checkpoint directory: its absolute path. A run directory is resolved
  to the checkpoint it points at now, since its `latest` moves on.
- `model.init_from` a hub id: the id.
- Otherwise, the base is written once to `RUN/base/`, and that path is used. This covers a preset's
  random weights, and every classifier: the classifier's base is the LM with the new head and its
  id2label, so transformers' AutoModelForSequenceClassification builds the right shapes and names
  from it; the trained head itself is in the adapter, as PEFT's modules_to_save.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from gpt2.config import RunConfig
from gpt2.errors import UserError
from gpt2.train.task import Geometry, Task

BASE_DIR = "base"


class FinetuneTask(Task):
    """A task that starts from a pretrained base and may train LoRA adapters on it."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        if not cfg.model.init_from:
            raise UserError("fine-tuning needs a base: set model.init_from to a run, checkpoint, model directory, "
                            "hub id or preset:NAME (e.g. model.init_from=openai-community/gpt2)")
        if self.lora is not None and cfg.train.distributed == "fsdp":
            raise UserError("LoRA fine-tuning runs single-process or under DDP (train.distributed=ddp); FSDP shards "
                            "the frozen base for nothing, as the adapters are small")
        self._base: Any = None
        self.master = True
        self.adapter_base: str | None = None  # base_model_name_or_path of a LoRA run's adapters

    @property
    def lora(self) -> Any:
        """The LoRAConfig of finetune.lora, or None for full fine-tuning."""
        from gpt2.model.lora import LoRAConfig

        section = self.cfg.finetune.lora
        if section.rank is None:
            return None
        return LoRAConfig(rank=section.rank, alpha=section.alpha, dropout=section.dropout,
                          targets=tuple(section.targets))

    def load_base(self) -> Any:
        """Load model.init_from (gpt2.load.load) and keep its LM for build_model; returns the Loaded."""
        from gpt2.load import load

        base = load(self.cfg.model.init_from, device="cpu")
        if base.tokenizer is None:
            raise UserError(f"{self.cfg.model.init_from} has no tokenizer files: save the tokenizer beside the model")
        try:
            base.tokenizer.eot_token  # noqa: B018  (padding and the end of a response need it)
        except UserError as e:
            raise UserError(f"{self.cfg.model.init_from}: its tokenizer has no end-of-text token ({e})") from None
        self._base = base.model
        return base

    def prepare(self, *, progress: bool) -> None:
        """Load the base and its tokenizer (end-of-text pads: padding is never read or trained), then the data."""
        base = self.load_base()
        self.tokenizer, self.pad_id = base.tokenizer, base.tokenizer.eot_token
        self._read_splits()

    def _read_splits(self) -> None:
        raise NotImplementedError

    def ready(self, *, master: bool) -> None:
        self.master = master

    def geometry(self, world_size: int) -> Geometry:
        """A micro-batch is train.micro_batch_size examples; a step is finetune.global_batch_size of them."""
        B = self.cfg.train.micro_batch_size
        per_step = self.cfg.finetune.global_batch_size or B * world_size
        if per_step % (B * world_size) != 0:
            n = B * world_size
            raise UserError(f"finetune.global_batch_size={per_step} is not a multiple of train.micro_batch_size × "
                            f"processes = {B} × {world_size} = {n}; pick a multiple, e.g. {n * max(1, round(per_step / n))}")
        return Geometry(per_micro=B, per_step=per_step, unit="examples", tokens_per_micro=B * self.cfg.train.seq_len)

    def check_context(self, model: torch.nn.Module) -> None:
        """Refuse a train.seq_len beyond the base's context."""
        if self.cfg.train.seq_len > model.config.n_positions:
            raise UserError(f"train.seq_len={self.cfg.train.seq_len} exceeds the base's n_positions="
                            f"{model.config.n_positions}")

    def split_indices(self, n: int, given: dict[str, Any]) -> tuple[list[int], list[int], list[int]]:
        """Train/val/test indices of `n` entries of finetune.train_file cut by finetune.split and split_seed;
        a split that a file gives (`given`: "val", "test") hands its share back to training."""
        from gpt2.finetune.data import split_indices

        f = self.cfg.finetune
        tr, va, te = (list(x) for x in split_indices(n, fractions=tuple(f.split), seed=f.split_seed))
        if "val" in given:
            tr, va = tr + va, []
        if "test" in given:
            tr, te = tr + te, []
        return tr, va, te

    # ---------------------------------------------------------------------------------- LoRA
    def adapt(self, model: torch.nn.Module, checkpoint: Path | None, *, write_base: bool) -> torch.nn.Module:
        """Inject LoRA (finetune.lora) into a freshly built model, or load the checkpoint's adapter onto it.

        `write_base`: whether the adapters' base must be written to RUN/base (see the module docstring);
        otherwise it is model.init_from. Without LoRA the model is returned as it is."""
        from gpt2.model.lora import inject_lora, load_adapter

        cfg = self.lora
        if cfg is None:
            return model
        if write_base or self._is_preset():
            self.adapter_base = str((Path(self.cfg.train.out_dir) / BASE_DIR).resolve())
            if self.master and checkpoint is None:
                self._write_base(model)
        elif Path(self.cfg.model.init_from).exists():
            from gpt2.load import resolve_model_dir

            self.adapter_base = str(resolve_model_dir(self.cfg.model.init_from).resolve())
        else:
            self.adapter_base = str(self.cfg.model.init_from)  # a hub id
        if checkpoint is not None:
            model = load_adapter(checkpoint, base=model)
            for name, p in model.named_parameters():  # load_adapter leaves every adapter trainable, and the head
                p.requires_grad_("lora_" in name or name.startswith("score."))
        else:
            model = inject_lora(model, cfg)
        if self.master:  # the trainer prints the trainable count
            print(f"LoRA rank {cfg.rank}, alpha {cfg.alpha:g} on {', '.join(cfg.targets)}; adapters saved for the base "
                  f"{self.adapter_base}", file=sys.stderr)
        return model

    def _is_preset(self) -> bool:
        from gpt2.load import PRESET_PREFIX

        return str(self.cfg.model.init_from).startswith(PRESET_PREFIX)

    def _write_base(self, model: torch.nn.Module) -> None:
        """RUN/base: the model before any adapter (written once, atomically; kept across resumes)."""
        from gpt2.common import atomic_directory

        target = Path(self.cfg.train.out_dir) / BASE_DIR
        if (target / "config.json").is_file():
            return
        with atomic_directory(target) as tmp:
            model.save_pretrained(tmp)
            self.tokenizer.save(tmp)

    def save_model(self, model: torch.nn.Module, directory: Path) -> None:
        """Write the model into a checkpoint directory being filled: the adapter alone for a LoRA run."""
        if self.lora is None:
            model.save_pretrained(directory)
            return
        from gpt2.model.lora import save_adapter

        assert self.adapter_base is not None
        save_adapter(model, directory, base_model_name_or_path=self.adapter_base, in_place=True)

    def start_record(self) -> dict[str, Any]:
        cfg = self.lora
        return {} if cfg is None else {"lora": {"rank": cfg.rank, "alpha": cfg.alpha, "dropout": cfg.dropout,
                                                "targets": list(cfg.targets), "base": self.adapter_base}}


def set_dropout(model: torch.nn.Module, p: float) -> torch.nn.Module:
    """Give a built model the run's dropout (model.dropout) everywhere: its config (saved with it), every
    nn.Dropout and the attention's own rate (scaled_dot_product_attention's dropout_p). Returns `model`."""
    model.config.resid_pdrop = model.config.embd_pdrop = model.config.attn_pdrop = p
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p
        if hasattr(m, "attn_pdrop"):
            m.attn_pdrop = p
    return model
