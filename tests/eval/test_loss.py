"""Loss, perplexity and bits per byte: held against computations written out by hand here."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import tiktoken
import torch
import torch.nn.functional as F
from eval_helpers import random_model

from gpt2.eval.loss import (
    check_vocabulary,
    evaluate_source,
    evaluate_tokens,
    text_stream,
    window_spans,
)


def _tiktoken_gpt2(shared_data: Path) -> tiktoken.Encoding:
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(shared_data / "gpt2" / "gpt2.tiktoken"))
    pat = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    return tiktoken.Encoding("gpt2-test", pat_str=pat, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


@pytest.mark.slow
def test_bits_per_byte_on_the_verdict_matches_a_hand_computation(shared_data, gpt2_tok):
    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    model = random_model(n_positions=6144, scale=1.0)
    ids = [50256, *_tiktoken_gpt2(shared_data).encode_ordinary(text)]  # <|endoftext|>, then the text
    assert len(ids) == 5146
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]])).logits[0]  # (5145, V): one window holds it all
    nll = F.cross_entropy(logits.double(), torch.tensor(ids[1:]), reduction="sum").item()
    expected_loss = nll / 5145
    expected_bpb = nll / math.log(2) / len(text.encode("utf-8"))

    score = evaluate_source(model, gpt2_tok, shared_data / "the-verdict.txt")
    assert score.tokens == 5145 and score.bytes == 20479 and score.windows == 1
    assert score.loss == pytest.approx(expected_loss, abs=1e-5)
    assert abs(score.bits_per_byte - expected_bpb) < 1e-4
    assert score.perplexity == pytest.approx(math.exp(expected_loss), rel=1e-5)
    # A sliding window over a text that fits one window is that one window, whatever the stride.
    again = evaluate_source(model, gpt2_tok, shared_data / "the-verdict.txt", stride=1000)
    assert again.windows == 1 and again.bits_per_byte == pytest.approx(score.bits_per_byte, abs=1e-7)


def test_window_spans_score_every_target_once():
    for n, context, stride in [(2, 8, 8), (100, 16, 16), (100, 16, 5), (101, 16, 1), (17, 16, 7), (16, 16, 3)]:
        seen = []
        for start, end, scored in window_spans(n, context, stride):
            assert 0 < end - start <= context and 1 <= scored <= end - start
            seen.extend(range(end - scored + 1, end + 1))  # target positions in the stream
        assert seen == list(range(1, n)), (n, context, stride)
    with pytest.raises(ValueError, match="stride <= context"):
        window_spans(100, 16, 17)


def test_sliding_window_matches_per_target_recomputation():
    """Each target scored from exactly the history its window gives it, one forward per target."""
    torch.manual_seed(1)
    model = random_model(n_positions=64, vocab_size=500).double()
    ids = torch.randint(0, 500, (230,)).tolist()
    context, stride = 48, 20
    score = evaluate_tokens(model, ids, n_bytes=1000, context=context, stride=stride, batch_size=3)
    total = 0.0
    for p in range(1, len(ids)):
        # The window that scores target p: the first (in start order) whose end reaches p.
        k = 0
        while min(k * stride + context, len(ids) - 1) < p:
            k += 1
        start = k * stride
        with torch.no_grad():
            logits = model(torch.tensor([ids[start:p]])).logits[0, -1]
        total -= torch.log_softmax(logits, -1)[ids[p]].item()
    assert score.tokens == len(ids) - 1
    assert score.loss == pytest.approx(total / (len(ids) - 1), abs=1e-9)
    # Disjoint windows see less history, so they lose more: the sliding window buys something.
    disjoint = evaluate_tokens(model, ids, n_bytes=1000, context=context, stride=context)
    assert disjoint.loss != pytest.approx(score.loss, abs=1e-6)


def test_shard_directory_gives_the_same_numbers_as_the_text(tmp_path, shared_data, gpt2_tok):
    from gpt2.data.shards import write_shard

    docs = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:8_000].split("\n\n")
    ids, n_bytes = text_stream(gpt2_tok, docs)
    assert n_bytes == sum(len(d.encode("utf-8")) for d in docs)
    (tmp_path / "shards").mkdir()
    write_shard(tmp_path / "shards" / "val_000000.bin", ids[:1000], dtype=np.dtype(np.uint16))
    write_shard(tmp_path / "shards" / "val_000001.bin", ids[1000:], dtype=np.dtype(np.uint16))
    text_file = tmp_path / "docs.jsonl"
    import json

    text_file.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    model = random_model(n_positions=128)
    from_shards = evaluate_source(model, gpt2_tok, tmp_path / "shards", stride=64)
    from_text = evaluate_source(model, gpt2_tok, text_file, stride=64)
    assert from_shards.bytes == from_text.bytes
    assert from_shards.tokens == from_text.tokens == len(ids) - 1
    assert from_shards.loss == pytest.approx(from_text.loss, abs=1e-6)
    limited = evaluate_source(model, gpt2_tok, text_file, max_tokens=500)
    assert limited.tokens == 500 and 0 < limited.bytes < from_text.bytes


def test_mismatched_vocabulary_is_refused(shared_data, gpt2_tok):
    small = random_model(vocab_size=1000)
    with pytest.raises(ValueError, match=r"vocabulary has 1,000 tokens but the tokenizer has 50,257"):
        check_vocabulary(small, gpt2_tok)
    with pytest.raises(ValueError, match="outside the checkpoint's vocabulary"):
        evaluate_tokens(small, [1, 2, 5000], n_bytes=3)
    with pytest.raises(ValueError, match="longer than the model's n_positions"):
        evaluate_tokens(small, [1, 2, 3], n_bytes=3, context=10_000)
