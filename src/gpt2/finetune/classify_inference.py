"""Batched inference with a sequence classifier, and the `gpt2 classify` / `gpt2 eval --classify` commands.

    gpt2 classify runs/sms/step-000500 "WINNER!! Claim your prize now" "see you at 6?"
    gpt2 eval runs/sms/step-000500 --classify sms_test.tsv --text-field 1 --label-field 0 --plot confusion.png

Texts are encoded without special tokens (a user's "<|endoftext|>" is plain text), cut to max_length
tokens from the configured side, sorted by length so each right-padded batch wastes little, scored
under torch.inference_mode, and returned in input order. max_length and truncation_side default to
what the checkpoint's config.json says (`max_length`, `truncation_side`), else n_positions and right.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gpt2.common import print_result
from gpt2.errors import UserError
from gpt2.finetune.data import encode_for_classification, pad_right
from gpt2.model.classify import GPT2ForSequenceClassification
from gpt2.model.config import TruncationSide


def _settings(model: GPT2ForSequenceClassification, max_length: int | None,
              truncation_side: TruncationSide | None) -> tuple[int, TruncationSide]:
    config = model.config
    max_length = max_length or config.max_length or config.n_positions
    if max_length > config.n_positions:
        raise UserError(f"max_length={max_length} is longer than the model's context (n_positions="
                        f"{config.n_positions})")
    return max_length, truncation_side or config.truncation_side or "right"


def classify(
    model: GPT2ForSequenceClassification,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    max_length: int | None = None,
    truncation_side: TruncationSide | None = None,
) -> list[list[float]]:
    """Class probabilities (softmax of the logits, in id2label order) of each text, in input order."""
    if batch_size < 1:
        raise UserError(f"batch_size must be positive, got {batch_size}")
    max_length, side = _settings(model, max_length, truncation_side)
    encoded, _ = encode_for_classification(tokenizer, texts, max_length=max_length, truncation_side=side)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else tokenizer.eot_token
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    probs: list[list[float]] = [[] for _ in encoded]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                ids, mask = pad_right([encoded[i] for i in rows], pad)  # (B, T) each, as training batches them
                logits = model(ids.to(model.device), attention_mask=mask.to(model.device)).logits  # (B, num_labels)
                p = torch.softmax(logits.float(), dim=-1).cpu().tolist()
                for r, i in enumerate(rows):
                    probs[i] = p[r]
    finally:
        model.train(was_training)
    return probs


# --------------------------------------------------------------------------------------- commands
@dataclass(frozen=True)
class Reading:
    """How `gpt2 classify` and `gpt2 eval --classify` load a classifier and read texts with it: the settings
    the two commands share (None: the checkpoint's own max_length / truncation_side / tokenizer)."""

    batch_size: int = 32
    max_length: int | None = None
    truncation_side: TruncationSide | None = None
    tokenizer: str | None = None
    dtype: str = "fp32"
    device: str = "auto"

    def load(self, source: str | Path) -> tuple[Any, Any, Path | None]:
        """(model, tokenizer, checkpoint directory), the vocabulary checked against the model."""
        from gpt2.eval.loss import check_vocabulary
        from gpt2.load import load

        loaded = load(source, tokenizer=self.tokenizer, dtype=self.dtype, device=self.device,  # type: ignore[arg-type]
                      task="classify")
        check_vocabulary(loaded.model, loaded.tokenizer)
        return loaded.model, loaded.tokenizer, loaded.directory

    def classify(self, model: GPT2ForSequenceClassification, tokenizer: Any,
                 texts: Sequence[str]) -> list[list[float]]:
        return classify(model, tokenizer, texts, batch_size=self.batch_size, max_length=self.max_length,
                        truncation_side=self.truncation_side)


def run_classify(
    source: str | Path,
    texts: Sequence[str] = (),
    *,
    file: str | None = None,
    text_field: str = "text",
    delimiter: str | None = None,
    reading: Reading = Reading(),
    as_json: bool = False,
) -> list[dict[str, Any]]:
    """`gpt2 classify`: print `label<TAB>p(label)` per text (or a JSON line with every probability)."""
    from gpt2.finetune.data import read_texts

    if bool(texts) == bool(file):
        raise UserError("give texts to classify as arguments or with --file FILE (one of the two)")
    if file is not None:
        data = read_texts(file, text_field=text_field, delimiter=delimiter)  # checked before the model loads
        texts = data.texts
        if data.skipped_empty:
            print(f"skipped {data.skipped_empty} empty text(s) in {file}", file=sys.stderr)
    elif any(not t.strip() for t in texts):
        raise UserError("an empty text cannot be classified; leave it out")
    model, tok, _ = reading.load(source)
    probs = reading.classify(model, tok, texts)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    results = []
    for text, p in zip(texts, probs):
        best = max(range(len(p)), key=p.__getitem__)
        result = {"text": text, "label": names[best], "probability": p[best], "probabilities": dict(zip(names, p))}
        results.append(result)
        print_result(result, as_json=as_json, render=lambda r: f"{r['label']}\t{r['probability']:.4f}", one_line=True)
    return results


def run_eval_classify(
    source: str | Path,
    file: str,
    *,
    text_field: str = "text",
    label_field: str = "label",
    delimiter: str | None = None,
    reading: Reading = Reading(),
    plot: str | None = None,
    as_json: bool = False,
) -> dict[str, Any]:
    """`gpt2 eval --classify FILE`: accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix."""
    from gpt2.finetune.data import read_labelled
    from gpt2.finetune.metrics import classification_report, plot_confusion

    data = read_labelled(file, text_field=text_field, label_field=label_field, delimiter=delimiter)
    model, tok, directory = reading.load(source)
    label2id = model.config.label2id
    unknown = sorted(set(data.labels) - set(label2id))
    if unknown:
        raise UserError(f"{file} has label(s) the model does not know: {', '.join(map(repr, unknown))}; the model's "
                        f"labels are {', '.join(map(repr, label2id))} (check --label-field, or the checkpoint)")
    t0 = time.perf_counter()
    probs = reading.classify(model, tok, data.texts)
    predictions = [max(range(len(p)), key=p.__getitem__) for p in probs]
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    report = classification_report(predictions, [label2id[x] for x in data.labels], names)
    max_length, side = _settings(model, reading.max_length, reading.truncation_side)
    result: dict[str, Any] = {"checkpoint": str(directory), "file": str(file), "skipped_empty": data.skipped_empty,
                              "max_length": max_length, "truncation_side": side, **report,
                              "seconds": round(time.perf_counter() - t0, 2)}
    if plot is not None:
        result["plot"] = str(plot_confusion(report["confusion"], names, plot, title=Path(file).name))
    print_result(result, as_json=as_json, render=render)
    return result


def render(r: dict[str, Any]) -> str:
    """The short report people read: totals, a per-class table, and the confusion matrix."""
    names = list(r["per_class"])
    skipped = f", {r['skipped_empty']} empty skipped" if r["skipped_empty"] else ""
    lines = [f"checkpoint   {r['checkpoint']}",
             f"data         {r['file']}: {r['examples']:,} texts{skipped} (max_length {r['max_length']}, "
             f"truncation {r['truncation_side']})",
             f"accuracy     {r['accuracy']:.4f}",
             f"macro-F1     {r['macro_f1']:.4f}", ""]
    w = max(len("label"), *map(len, names))
    lines.append(f"{'label':<{w}}  precision  recall      f1  support")
    for name, m in r["per_class"].items():
        lines.append(f"{name:<{w}}  {m['precision']:9.4f}  {m['recall']:6.4f}  {m['f1']:6.4f}  {m['support']:7,}")
    cw = max(7, *(len(n) for n in names), *(len(f"{c:,}") for row in r["confusion"] for c in row))
    lines += ["", "confusion (rows = true, columns = predicted)",
              " " * w + "  " + "  ".join(f"{n:>{cw}}" for n in names)]
    for name, row in zip(names, r["confusion"]):
        lines.append(f"{name:<{w}}  " + "  ".join(f"{c:>{cw},}" for c in row))
    if "plot" in r:
        lines.append(f"\nplot         {r['plot']}")
    lines.append(f"time         {r['seconds']:.1f} s")
    return "\n".join(lines)
