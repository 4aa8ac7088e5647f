"""Does `douban-zh` write the rating it is asked for? A sentiment classifier judges 1- and 5-star completions.

    flock /tmp/gpt2-bench.lock python bench/douban_conditioning.py --run runs/douban-zh --minutes 5

1. Classifier data: the run's training reviews (by its recipe's split rule) with ≤ 2 stars as 0 (negative)
   and ≥ 4 as 1 (positive), plus ChnSentiCorp's 7,766 labelled hotel reviews (--no-hotel: Douban alone);
   the held-out Douban reviews with ≤ 2 or ≥ 4 stars are its test set, never trained on.
2. `gpt2 finetune classify douban-zh-classify` on that file for --minutes (base: the run), scored on the
   held-out reviews with its best checkpoint.
3. Prompt words: the first two characters of the first 50 held-out reviews. Each is completed once after
   <|stars=1|> and once after <|stars=5|> (seed 0, temperature 0.8, top-k 50, 48 new tokens), and the
   classifier reads prompt word + completion. Goal: ≥ 80% judged as the rating asked (1 → 0, 5 → 1).
   With --guidance-scale G each completion is sampled with classifier-free guidance against the other
   rating (`<|stars=1|>剧情` pushed away from `<|stars=5|>剧情`, and back), as
   `gpt2 generate RUN "<|stars=1|>剧情" --guidance-scale G --negative-prompt "<|stars=5|>剧情"` does.

Prints the classifier's held-out accuracy, the share judged as asked per rating, and writes
bench/results/douban-conditioning.json (--results) with every completion and its judgement.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, cpu_name, parser, timed, write_results

from gpt2.sources import read_json_records

HOTEL = REPO.parent / "shared" / "data" / "chnsenticorp_hotel_reviews_zh.csv"
DOUBAN = REPO.parent / "shared" / "data" / "douban_movie_reviews_zh.jsonl"
STARS = re.compile(r"^<\|stars=(\d+)\|>")
N_PROMPTS = 50


def _split_with_stars(run: Path) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(train, held-out) as (stars, text), by the run recipe's split rule."""
    from gpt2.config import load_run_config
    from gpt2.data.prepare import DEFAULT_VAL_FRACTION, is_val_document
    from gpt2.sources import resolve_source
    from gpt2.train.setup import with_control_tokens

    # The records as they are, once each, also where data.balance_controls repeated rare ratings for the LM.
    data, controls = with_control_tokens(dataclasses.replace(load_run_config(run).data, balance_controls=False))
    if not any(t.startswith("<|stars=") for t in controls):
        raise SystemExit(f"{run} was not trained with data.control_fields: [stars]")
    fraction = data.val_fraction if data.val_fraction is not None else DEFAULT_VAL_FRACTION
    train, val = [], []
    for doc in resolve_source(data.source, field=data.field).documents():
        m = STARS.match(doc)
        if m:
            (val if is_val_document(doc, fraction) else train).append((int(m.group(1)), doc[m.end():]))
    return train, val


def _labelled(rows: list[tuple[int, str]]) -> list[dict[str, str]]:
    return [{"text": t, "label": "1" if s >= 4 else "0"} for s, t in rows if s != 3]


def _hotel_reviews() -> list[dict[str, str]]:
    """ChnSentiCorp's labelled hotel reviews as {"text", "label"} (1 positive, 0 negative), empty ones dropped."""
    with open(HOTEL, encoding="utf-8", newline="") as f:
        return [{"text": r["review"], "label": r["label"]} for r in csv.DictReader(f) if r["review"].strip()]


def write_corpus(path: Path) -> None:
    """The corpus of the judge's language model in docs/douban-zh.md: every Douban record ({"stars", "text"})
    then every hotel review with no stars ({"text"}), so `data.control_fields: [stars]` gives the hotel
    reviews no control token and splits the Douban reviews as the recipe does."""
    rows = [{"stars": r["stars"], "text": r["text"]} for _, r in read_json_records(DOUBAN)]
    rows += [{"text": r["text"]} for r in _hotel_reviews()]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {path}: {len(rows):,} records")


def _write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _completions(run: Path, words: list[str], max_new_tokens: int, samples: int, guidance: float,
                 penalty: float = 1.0) -> dict[int, list[str]]:
    """Per rating, `samples` completions of each prompt word (seeds 0, 1, ...), seed by seed; with guidance
    each against the same words after the other rating."""
    from gpt2.generate.engine import SampleConfig, generate
    from gpt2.load import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(run)
    out: dict[int, list[str]] = {1: [], 5: []}
    for seed in range(samples):
        config = SampleConfig(max_new_tokens=max_new_tokens, temperature=0.8, top_k=50, seed=seed, stop_at_eot=True,
                              repetition_penalty=penalty)
        for stars in out:
            if guidance == 1.0:
                out[stars] += [g.text for g in generate(model, tok, [f"<|stars={stars}|>{w}" for w in words], config)]
                continue
            other = 6 - stars  # 1 <-> 5
            for w in words:  # one negative prompt per call
                guided = config.replace(guidance_scale=guidance, negative_prompt=f"<|stars={other}|>{w}")
                out[stars].append(generate(model, tok, [f"<|stars={stars}|>{w}"], guided)[0].text)
    return out


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--run", type=Path, default=REPO / "runs" / "douban-zh")
    p.add_argument("--minutes", type=float, default=5.0, help="the classifier's training time")
    p.add_argument("--no-hotel", action="store_true", help="train the classifier on Douban's reviews alone")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--samples", type=int, default=1,
                   help="completions per prompt word and rating (seeds 0..N-1): more for a smaller standard error")
    p.add_argument("--guidance-scale", type=float, default=1.0, metavar="G",
                   help="sample with classifier-free guidance against the other rating (default 1: off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R",
                   help="sample with this repetition penalty (default 1: off)")
    p.add_argument("--classifier", type=Path, default=None, help="use this classifier instead of training one")
    p.add_argument("--classifier-out", type=Path, default=None,
                   help="train the classifier into this run directory (default: a temporary one), to judge "
                        "another run with the same classifier later (--classifier DIR/best)")
    p.add_argument("--results", type=Path, default=REPO / "bench" / "results" / "douban-conditioning.json")
    p.add_argument("--write-corpus", type=Path, default=None, metavar="PATH",
                   help="only write the Douban + hotel corpus of a judge's language model (docs/douban-zh.md) and exit")
    args = p.parse_args()
    if args.samples < 1:
        p.error(f"--samples must be at least 1, got {args.samples}")
    if not args.guidance_scale >= 0 or not args.repetition_penalty > 0:
        p.error("--guidance-scale must be >= 0 (1 is off) and --repetition-penalty > 0 (1 is off)")
    if args.write_corpus is not None:
        return write_corpus(args.write_corpus)
    train, val = _split_with_stars(args.run)
    rows = _labelled(train)
    if not args.no_hotel:
        rows += _hotel_reviews()
    work = Path(tempfile.mkdtemp(prefix="douban-cond-"))
    _write_jsonl(work / "train.jsonl", rows)
    _write_jsonl(work / "test.jsonl", _labelled(val))
    record: dict = {"cpu": cpu_name(), "run": str(args.run), "classifier_train_rows": len(rows),
                    "classifier_test_rows": len(_labelled(val)), "hotel": not args.no_hotel}
    classifier = args.classifier
    if classifier is None:
        classifier = args.classifier_out or work / "classifier"
        record["finetune"] = timed(["finetune", "classify", "douban-zh-classify", f"model.init_from={args.run}",
                                    f"finetune.train_file={work / 'train.jsonl'}", "finetune.text_field=text",
                                    f"finetune.test_file={work / 'test.jsonl'}", f"train.max_minutes={args.minutes}",
                                    f"train.out_dir={classifier}"])
        classifier = classifier / "best"
    record["classifier"] = str(classifier)
    r = subprocess.run([sys.executable, "-m", "gpt2", "eval", str(classifier), "--classify", str(work / "test.jsonl"),
                        "--json"], cwd=REPO, text=True, capture_output=True, check=True)
    held_out = json.loads(r.stdout)
    record["classifier_heldout_accuracy"] = held_out["accuracy"]
    record["classifier_heldout"] = {k: held_out.get(k) for k in ("per_class", "confusion", "checkpoint")}

    words = [t[:2] for _, t in val[:N_PROMPTS]]
    completions = _completions(args.run, words, args.max_new_tokens, args.samples, args.guidance_scale,
                               args.repetition_penalty)
    words = words * args.samples
    record["samples_per_word"] = args.samples
    record["guidance_scale"] = args.guidance_scale
    record["repetition_penalty"] = args.repetition_penalty
    from gpt2.finetune.classify_inference import Reading, classify

    model, tok, _ = Reading(device="cpu").load(classifier)
    positive = model.config.label2id["1"]
    results = {}
    for stars, texts in completions.items():
        probs = classify(model, tok, [w + t for w, t in zip(words, texts)])
        judged = [("1" if pr[positive] >= 0.5 else "0") for pr in probs]
        wanted = "1" if stars == 5 else "0"
        results[stars] = {"as_asked": sum(j == wanted for j in judged) / len(judged),
                          "samples": [{"prompt": w, "completion": t, "p_positive": pr[positive]}
                                      for w, t, pr in zip(words, texts, probs)]}
    record["conditioning"] = results
    both = (results[1]["as_asked"] + results[5]["as_asked"]) / 2
    record["as_asked_overall"] = both
    write_results(args.results, record)
    negative = held_out.get("per_class", {}).get("0", {}).get("recall", float("nan"))
    print(f"classifier held-out accuracy {held_out['accuracy']:.4f} on {record['classifier_test_rows']} Douban "
          f"reviews (negative recall {negative:.0%}); judged as asked: 1 star {results[1]['as_asked']:.0%}, 5 stars {results[5]['as_asked']:.0%}, "
          f"overall {both:.0%} ({N_PROMPTS} prompt words × {args.samples} each, guidance {args.guidance_scale})")


if __name__ == "__main__":
    main()
