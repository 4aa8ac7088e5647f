"""`gpt2 lora merge`: a LoRA adapter folded into its base, written as a plain HF checkpoint.

    gpt2 lora merge runs/sms-spam-lora/best out/sms-spam-merged

The adapter's base is loaded by the one loader (gpt2.load, which applies the adapter), then
gpt2.model.lora.merge_lora folds B A · alpha / r into each weight; transformers loads the result as it is.
"""

from __future__ import annotations

from pathlib import Path

from gpt2.errors import UserError
from gpt2.model.lora import merge_lora, read_adapter_config


def merge_adapter_dir(adapter_dir: str | Path, out: str | Path) -> Path:
    """`gpt2 lora merge`: the adapter's base with the adapter folded in, written to `out` as a plain HF
    checkpoint (config.json + model.safetensors, the tokenizer files, chat.json if any), atomically."""
    from gpt2.common import atomic_directory
    from gpt2.load import load, resolve_model_dir, task_of

    adapter_dir = Path(adapter_dir)
    if (adapter_dir / "latest").is_file() or (adapter_dir.is_file() and adapter_dir.name in ("latest", "best")):
        adapter_dir = resolve_model_dir(adapter_dir)  # a LoRA fine-tune's run or RUN/best: its adapter checkpoint
    read_adapter_config(adapter_dir)  # a missing or foreign directory: one line before anything loads
    out = Path(out)
    if out.resolve() == adapter_dir.resolve():
        raise UserError(f"OUT must be another directory than the adapter's ({adapter_dir})")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; OUT is the directory to write the merged checkpoint to")
    loaded = load(adapter_dir, task=task_of(adapter_dir), device="cpu")
    model = merge_lora(loaded.model)
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        loaded.tokenizer.save(tmp)
        if loaded.chat_format is not None:
            from gpt2.tokenizer.chat import save_chat_format

            save_chat_format(tmp, loaded.chat_format)
    return out
