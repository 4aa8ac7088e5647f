"""HellaSwag: our batched scoring against transformers, example by example, on the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from eval_helpers import random_model

from gpt2.eval.hellaswag import Example, evaluate_hellaswag, load_examples, render, resolve_path


@pytest.mark.slow
def test_hellaswag_matches_transformers_example_by_example(shared_data, gpt2_tok, tmp_path):
    import transformers

    from gpt2.model.hf import to_hf_state_dict

    # float64 on both sides, so a near-tie between two endings cannot flip a prediction.
    model = random_model(n_positions=512, dtype=torch.float64)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=64, n_positions=512, vocab_size=50257)).double().eval()
    hf.load_state_dict(to_hf_state_dict(model), strict=False)

    # The first 100 of the 1000-example sample: every code path (full and partial batches, padding, near-ties),
    # 29 s on one busy core where the first 250 took 58 s; the fp64 reference below scores each ending alone
    # against a 50257-way softmax.
    N = 100
    lines = (shared_data / "hellaswag_val_sample1000.jsonl").read_text(encoding="utf-8").splitlines()[:N]
    path = tmp_path / "hellaswag_first.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    ours = evaluate_hellaswag(model, gpt2_tok, path, batch_size=32)
    assert ours.examples == N

    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    enc = tiktoken.Encoding("gpt2-ref", mergeable_ranks=load_tiktoken_bpe(str(shared_data / "gpt2" / "gpt2.tiktoken")),
                            pat_str=r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
                            special_tokens={})
    wte = hf.transformer.wte.weight  # tied LM head
    preds, preds_norm, labels = [], [], []
    with torch.no_grad():
        for line in path.read_text(encoding="utf-8").splitlines():
            ex = json.loads(line)
            ctx = enc.encode_ordinary(ex["ctx"])
            sums, means = [], []
            for ending in ex["endings"]:  # each ending on its own, no batching, no padding
                end = enc.encode_ordinary(" " + ending)
                ids = torch.tensor([ctx + end])
                h = hf.transformer(ids).last_hidden_state[0, len(ctx) - 1:-1]  # positions predicting the ending
                logp = torch.log_softmax(h @ wte.T, -1).gather(1, torch.tensor(end)[:, None]).sum().item()
                sums.append(logp)
                means.append(logp / len(end))
            preds.append(max(range(4), key=lambda i: (sums[i], -i)))
            preds_norm.append(max(range(4), key=lambda i: (means[i], -i)))
            labels.append(ex["label"])
    assert ours.predictions == preds
    assert ours.predictions_norm == preds_norm
    assert ours.acc == sum(p == y for p, y in zip(preds, labels)) / N
    assert ours.acc_norm == sum(p == y for p, y in zip(preds_norm, labels)) / N
    # Scaled random weights are not a language model: roughly chance, but the two scorings disagree somewhere.
    assert 0.15 < ours.acc < 0.35 and preds != preds_norm


def test_ranks_share_the_examples(shared_data, gpt2_tok):
    model = random_model(n_positions=512)
    examples = load_examples(shared_data / "hellaswag_val_sample1000.jsonl", limit=12)
    assert len(examples) == 12
    whole = evaluate_hellaswag(model, gpt2_tok, examples)
    parts = [evaluate_hellaswag(model, gpt2_tok, examples, rank=r, world_size=2) for r in (0, 1)]
    assert [p.examples for p in parts] == [6, 6]
    assert parts[0].predictions == whole.predictions[0::2] and parts[1].predictions == whole.predictions[1::2]


def test_long_contexts_keep_their_end(gpt2_tok):
    ex = Example(ctx="one two three four five six seven eight nine ten eleven twelve", endings=(
        "thirteen fourteen", "apple", "a b c d e f", "zero"), label=0)
    ctx, endings = render(gpt2_tok, ex, n_positions=10)
    full = gpt2_tok.encode_ordinary(ex.ctx)
    assert ctx == full[-(10 - 6):] and max(len(e) for e in endings) == 6
    assert all(len(ctx) + len(e) <= 10 for e in endings)
    model = random_model(n_positions=10)
    result = evaluate_hellaswag(model, gpt2_tok, [ex])
    assert result.examples == 1 and 0 <= result.predictions[0] < 4


def _write(tmp_path: Path, lines: list[str]) -> Path:
    p = tmp_path / "hs.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


GOOD = {"ctx": "A man", "endings": ["runs.", "sits.", "eats.", "sleeps."], "label": 1}


@pytest.mark.parametrize(("obj", "message"), [
    ({"ctx": "A man", "label": 0}, r"hs.jsonl:2: no 'endings' \(keys: ctx, label\); HellaSwag's jsonl"),
    ({**GOOD, "label": 4}, r"hs.jsonl:2: label 4 is out of range for 4 endings \(0..3\)"),
    ({**GOOD, "label": -1}, "out of range"),
    ({**GOOD, "endings": "runs."}, "`endings` must be a list"),
    ("not json", "hs.jsonl:2: not valid JSON"),
])
def test_bad_lines_are_named(tmp_path, obj, message):
    line = obj if isinstance(obj, str) else json.dumps(obj)
    with pytest.raises(ValueError, match=message):
        load_examples(_write(tmp_path, [json.dumps(GOOD), line]))


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="HellaSwag file .*nope.jsonl not found"):
        load_examples(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="holds no HellaSwag examples"):
        load_examples(_write(tmp_path, [""]))


def test_val_is_downloaded_once_into_the_cache(tmp_path, monkeypatch, shared_data):
    """The real download code, pointed at a local file:// URL (no network here)."""
    monkeypatch.setenv("GPT2_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GPT2_HELLASWAG_URL", (shared_data / "hellaswag_val_sample1000.jsonl").as_uri())
    path = resolve_path("val")
    assert path == tmp_path / "cache" / "hellaswag" / "hellaswag_val.jsonl"
    assert path.read_bytes() == (shared_data / "hellaswag_val_sample1000.jsonl").read_bytes()
    monkeypatch.setenv("GPT2_HELLASWAG_URL", (tmp_path / "gone.jsonl").as_uri())
    assert resolve_path("hellaswag") == path  # cached: not fetched again
    path.unlink()
    with pytest.raises(FileNotFoundError, match="could not download HellaSwag val .*pass a local jsonl"):
        resolve_path("val")
