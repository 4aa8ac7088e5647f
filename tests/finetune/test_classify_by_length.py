"""bench/classify_by_length.py: accuracy by text length, and both ends averaged, checked against classify()."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from conftest import CORPUS, LABELS

from gpt2.finetune.classify_inference import classify

REPO = Path(__file__).resolve().parents[2]


def test_buckets_and_both_ends(clf_ckpt, classifier, tok, tmp_path, capsys) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import classify_by_length
    finally:
        sys.path.remove(str(REPO / "bench"))
    # Texts from a few tokens to several times the checkpoint's max_length (48), labelled at random-ish.
    texts = [(CORPUS[i % 3] * (1 + i % 4))[: 20 + 37 * i] for i in range(24)]
    labels = [LABELS[(i * 7) % 3 % 2] for i in range(24)]
    path = tmp_path / "labelled.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels)))
    out = tmp_path / "table.json"
    assert classify_by_length.main([str(clf_ckpt), "--file", str(path), "--limit", "0", "--json", str(out)]) == 0
    rows = {r["tokens"]: r for r in json.loads(out.read_text())["rows"]}
    assert "| all | 24 |" in capsys.readouterr().out

    # The same numbers, computed here from classify() directly (the sample order does not matter for them).
    names = [classifier.config.id2label[i] for i in range(classifier.config.num_labels)]
    own = classify(classifier, tok, texts)
    other = classify(classifier, tok, texts, truncation_side="left")  # the fixture's side is the default, right
    lengths = [len(tok.encode_ordinary(t)) for t in texts]
    pick = lambda p: names[max(range(len(p)), key=p.__getitem__)]  # noqa: E731
    right = [pick(p) == y for p, y in zip(own, labels)]
    both = [pick([(a + b) / 2 for a, b in zip(p, q)]) == y for p, q, y in zip(own, other, labels)]
    assert rows["all"]["texts"] == 24
    assert rows["all"]["accuracy"] == sum(right) / 24
    assert rows["all"]["both_ends"] == sum(both) / 24
    short = [i for i, n in enumerate(lengths) if n < 128]
    assert rows["1-127"]["texts"] == len(short)
    assert sum(r["texts"] for k, r in rows.items() if k != "all") == 24
    # A text within max_length reads the same from either end, so averaging changes nothing for it.
    fits = [i for i, n in enumerate(lengths) if n <= 48]
    assert fits and all(both[i] == right[i] for i in fits)
    assert any(n > 48 for n in lengths)
