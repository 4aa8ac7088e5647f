"""Control tokens from a metadata field: the documents, the tokenizer, the shards, prompts and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gpt2.config import DataConfig, TokenizerConfig
from gpt2.data.controls import with_controls
from gpt2.errors import UserError
from gpt2.tokenizer.controls import check_controls, control_token, control_tokens

REVIEWS = [(5, "剧情很好，演员也好，推荐"), (1, "太无聊了，浪费时间"), (4, "还不错，值得一看"), (2, "剧情拖沓"),
           (3, "一般般吧"), (5, "非常感人的电影"), (1, "难看"), (10, "十分的好")] * 12


@pytest.fixture
def reviews(tmp_path: Path) -> Path:
    path = tmp_path / "reviews.jsonl"
    path.write_text("".join(json.dumps({"stars": s, "text": t, "id": i}, ensure_ascii=False) + "\n"
                            for i, (s, t) in enumerate(REVIEWS)), encoding="utf-8")
    return path


def test_with_controls_writes_tokens_before_text(reviews: Path, tmp_path: Path) -> None:
    out, tokens = with_controls(reviews, field="text", control_fields=["stars"], out_dir=tmp_path / "c")
    assert tokens == [f"<|stars={s}|>" for s in (1, 2, 3, 4, 5, 10)]  # numbers by value, not as text
    first = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    assert first == {"text": "<|stars=5|>剧情很好，演员也好，推荐"}
    with pytest.raises(UserError, match="no record has a value for control field 'genre'"):
        with_controls(reviews, field="text", control_fields=["genre"], out_dir=tmp_path / "c")
    with pytest.raises(UserError, match="cannot be a control token"):
        control_token("stars", "a|b")


def test_tokenizer_and_shards_keep_control_tokens_whole(reviews: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from gpt2.data.shards import read_shard
    from gpt2.train.setup import ensure_shards, ensure_tokenizer

    monkeypatch.setenv("GPT2_CACHE", str(tmp_path / "cache"))
    cfg = DataConfig(source=str(reviews), control_fields=["stars"], val_fraction=0.1, workers=1,
                     tokenizer=TokenizerConfig(vocab_size=300))
    tok = ensure_tokenizer(cfg, progress=False)
    assert control_tokens(tok) == {"stars": ["1", "2", "3", "4", "5", "10"]}
    stars5 = tok.special_tokens["<|stars=5|>"]
    assert tok.encode("<|stars=5|>剧情", allowed_special="all")[0] == stars5
    shards = ensure_shards(cfg, tok, progress=False)
    train = np.concatenate([read_shard(p) for p in sorted(shards.glob("train_*.bin"))])
    # Every document: <|endoftext|>, then its one control token, then its text.
    starts = np.flatnonzero(train == tok.eot_token)
    assert len(starts) > 50 and all(int(train[i + 1]) in tok.special_tokens.values() for i in starts)
    assert (train == stars5).sum() == sum(1 for i in starts if train[i + 1] == stars5) > 0


def test_check_controls_refuses_unknown_values() -> None:
    from types import SimpleNamespace

    tok = SimpleNamespace(special_tokens={"<|endoftext|>": 0, "<|stars=1|>": 1, "<|stars=5|>": 2})
    check_controls(tok, "<|stars=1|>剧情")
    check_controls(tok, "<|genre=x|> is plain text for a model without genre tokens")
    with pytest.raises(UserError, match=r"<\|stars=9\|>: the training data has no stars=9; this model knows "
                                        "stars = 1, 5"):
        check_controls(tok, "<|stars=9|>剧情")


def test_generate_info_and_serve_take_control_prompts(reviews: Path, tmp_path: Path, capsys,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from gpt2 import GPT2Config, GPT2LMHeadModel
    from gpt2.cli import main
    from gpt2.model.hf import save_pretrained
    from gpt2.train.setup import ensure_tokenizer

    monkeypatch.setenv("GPT2_CACHE", str(tmp_path / "cache"))
    tok = ensure_tokenizer(DataConfig(source=str(reviews), control_fields=["stars"], val_fraction=0.1,
                                      tokenizer=TokenizerConfig(vocab_size=300)), progress=False)
    torch.manual_seed(0)
    model_dir = tmp_path / "model"
    save_pretrained(GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=64,
                                               vocab_size=tok.n_vocab)), model_dir)
    tok.save(model_dir)
    assert main(["generate", str(model_dir), "<|stars=1|>剧情", "--max-new-tokens", "4", "--seed", "1"]) == 0
    assert "剧情" in capsys.readouterr().out
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(["generate", str(model_dir), "<|stars=7|>剧情", "--max-new-tokens", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: <|stars=7|>: the training data has no stars=7; this model knows stars = 1, 2, 3, 4, 5, 10"
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    # guided against the other rating; an unknown rating in the negative prompt is refused, named as such
    assert main(["generate", str(model_dir), "<|stars=1|>剧情", "--guidance-scale", "3", "--negative-prompt",
                 "<|stars=5|>剧情", "--max-new-tokens", "4", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("<|stars=1|>剧情")
    for extra in ([], ["--max-new-tokens", "4"]):  # the default length is fitted first; a given one is not
        assert main(["generate", str(model_dir), "<|stars=1|>剧情", "--guidance-scale", "3", "--negative-prompt",
                     "<|stars=7|>剧情", *extra]) == 2
        assert capsys.readouterr().err.strip().startswith("error: negative prompt: <|stars=7|>: the training data")
    assert main(["model", "info", str(model_dir)]) == 0
    assert "<|stars=1|> <|stars=2|> <|stars=3|> <|stars=4|> <|stars=5|> <|stars=10|>" in capsys.readouterr().out

    from gpt2.serve.app import _encode_prompts
    from gpt2.serve.protocol import ApiError

    class Served:
        tokenizer = tok
        vocab = tok.n_vocab

    assert _encode_prompts(Served(), "<|stars=5|>好")[0][0] == tok.special_tokens["<|stars=5|>"]
    with pytest.raises(ApiError, match="no stars=0"):
        _encode_prompts(Served(), ["<|stars=0|>好"])


def test_balance_repeats_rare_training_values_and_never_held_out(reviews: Path, tmp_path: Path) -> None:
    from collections import Counter

    from gpt2.data.prepare import is_val_document

    plain, _ = with_controls(reviews, field="text", control_fields=["stars"], out_dir=tmp_path / "c")
    out, _ = with_controls(reviews, field="text", control_fields=["stars"], out_dir=tmp_path / "c",
                           balance=True, val_fraction=0.3)
    assert out != plain  # its own cache entry
    before = [json.loads(line)["text"] for line in plain.read_text(encoding="utf-8").splitlines()]
    after = [json.loads(line)["text"] for line in out.read_text(encoding="utf-8").splitlines()]
    val_before = Counter(d for d in before if is_val_document(d, 0.3))
    assert val_before and Counter(d for d in after if is_val_document(d, 0.3)) == val_before  # held-out once each
    train_before = Counter(d[:d.index("|>") + 2] for d in before if not is_val_document(d, 0.3))
    train_after = Counter(d[:d.index("|>") + 2] for d in after if not is_val_document(d, 0.3))
    most = max(train_before.values())
    for token, n in train_before.items():
        assert train_after[token] == n * max(1, round(most / n))
    assert len(set(train_before.values())) > 1 and max(train_after.values()) - min(train_after.values()) <= most // 2


def test_balance_needs_control_fields(tmp_path: Path) -> None:
    from gpt2.train.setup import with_control_tokens

    with pytest.raises(UserError, match="balance_controls"):
        with_control_tokens(DataConfig(source=str(tmp_path / "x.jsonl"), balance_controls=True))
