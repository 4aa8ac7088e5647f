"""Batched classification and `gpt2 classify` / `gpt2 eval --classify` through a real subprocess; their
other output forms and the refusals of bad input through gpt2.cli.main in this process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gpt2.finetune.classify_inference import classify
from gpt2.finetune.data import encode_for_classification, read_labelled

TEXTS = [
    "Free entry! Win a prize now",
    "Are we still meeting at six?",
    "ok",
    "héllo wörld 🙂, call 0800 to claim your cash reward and some tea and books, more and more text " * 3,
    "I will bring the books",
]


def gpt2(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpt2", *args], capture_output=True, text=True, timeout=120)


def test_batches_equal_one_by_one_in_input_order(classifier, tok) -> None:
    batched = classify(classifier, tok, TEXTS, batch_size=3)
    for text, p in zip(TEXTS, batched):
        alone = classify(classifier, tok, [text], batch_size=1)[0]
        assert p == pytest.approx(alone, abs=1e-5) and sum(p) == pytest.approx(1.0)
    assert max(abs(a[0] - b[0]) for a in batched for b in batched) > 0.01  # the texts are told apart
    assert classifier.training is False


def test_encoding_truncates_on_either_side(tok) -> None:
    """The one encoding of training and `gpt2 classify` (gpt2.finetune.data): cut either side, cuts counted."""
    full = tok.encode_ordinary(TEXTS[3])
    assert len(full) > 10
    assert encode_for_classification(tok, [TEXTS[3]], max_length=10, truncation_side="right") == ([full[:10]], 1)
    assert encode_for_classification(tok, [TEXTS[3]], max_length=10, truncation_side="left") == ([full[-10:]], 1)
    assert encode_for_classification(tok, [TEXTS[3], "hi"], max_length=len(full), truncation_side="left") == \
        ([full, tok.encode_ordinary("hi")], 0)
    assert encode_for_classification(tok, ["<|endoftext|>"], max_length=99, truncation_side="right") == \
        ([tok.encode_ordinary("<|endoftext|>")], 0)  # a special token written in a text is plain text


def test_classify_prints_label_tab_probability(clf_ckpt, classifier, tok) -> None:
    r = gpt2("classify", str(clf_ckpt), *TEXTS[:3])
    assert r.returncode == 0, r.stderr
    expected = classify(classifier, tok, TEXTS[:3])
    lines = r.stdout.splitlines()
    assert len(lines) == 3
    for line, p in zip(lines, expected):
        label, prob = line.split("\t")
        best = max(range(2), key=p.__getitem__)
        assert label == ["ham", "spam"][best] and prob == f"{p[best]:.4f}"


def test_classify_file_and_json(clf_ckpt, classifier, tok, tmp_path, gpt2_main) -> None:
    (tmp_path / "texts.txt").write_text("\n".join([TEXTS[0], "", TEXTS[1], "  "]) + "\n", encoding="utf-8")
    r = gpt2("classify", str(clf_ckpt), "--file", str(tmp_path / "texts.txt"), "--json", "--batch-size", "1")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["text"] for row in rows] == TEXTS[:2] and "skipped 2 empty text(s)" in r.stderr
    for row, p in zip(rows, classify(classifier, tok, TEXTS[:2])):
        assert [row["probabilities"]["ham"], row["probabilities"]["spam"]] == pytest.approx(p, abs=1e-6)
        assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)
    # a headerless tsv, the text in column 1
    (tmp_path / "t.tsv").write_text("".join(f"x\t{t}\n" for t in TEXTS), encoding="utf-8")
    r = gpt2_main("classify", str(clf_ckpt), "--file", str(tmp_path / "t.tsv"), "--text-field", "1", "--json")
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["text"] for line in r.stdout.splitlines()] == TEXTS


def test_eval_classify_reports_and_plots(clf_ckpt, classifier, tok, tmp_path, gpt2_main) -> None:
    labels = ["spam", "ham", "ham", "spam", "ham"]
    (tmp_path / "test.tsv").write_text("".join(f"{y}\t{t}\n" for y, t in zip(labels, TEXTS)), encoding="utf-8")
    r = gpt2("eval", str(clf_ckpt), "--classify", str(tmp_path / "test.tsv"), "--text-field", "1",
             "--label-field", "0", "--json", "--plot", str(tmp_path / "confusion.png"))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    predicted = [max(range(2), key=p.__getitem__) for p in classify(classifier, tok, TEXTS)]
    truth = [{"ham": 0, "spam": 1}[y] for y in labels]
    assert out["examples"] == 5 and out["accuracy"] == pytest.approx(sum(a == b for a, b in zip(predicted, truth)) / 5)
    assert sum(map(sum, out["confusion"])) == 5 and set(out["per_class"]) == {"ham", "spam"}
    assert out["max_length"] == 48 and out["truncation_side"] == "right"  # from the checkpoint's config.json
    assert (tmp_path / "confusion.png").read_bytes().startswith(b"\x89PNG")
    r = gpt2_main("eval", str(clf_ckpt), "--classify", str(tmp_path / "test.tsv"), "--text-field", "1",
                  "--label-field", "0")
    assert r.returncode == 0, r.stderr
    assert "accuracy" in r.stdout and "macro-F1" in r.stdout and "confusion (rows = true" in r.stdout


@pytest.mark.parametrize("case", ["missing file", "missing column", "unknown label", "lm to classify",
                                  "classifier to generate", "classifier to eval --data"])
def test_bad_inputs_are_one_line_errors(case, clf_ckpt, lm_ckpt, tmp_path, gpt2_main) -> None:
    tsv = tmp_path / "d.tsv"
    tsv.write_text("ham\thello there\nmaybe\tsee you\n", encoding="utf-8")
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("label,review\nham,hello\n", encoding="utf-8")
    args, message = {
        "missing file": (["classify", str(clf_ckpt), "--file", str(tmp_path / "nope.txt")], "no such file"),
        "missing column": (["eval", str(clf_ckpt), "--classify", str(csv_path)],
                           "no column 'text'; columns: label, review"),
        "unknown label": (["eval", str(clf_ckpt), "--classify", str(tsv), "--text-field", "1", "--label-field", "0"],
                          "has label(s) the model does not know: 'maybe'; the model's labels are 'ham', 'spam'"),
        "lm to classify": (["classify", str(lm_ckpt), "hello"],
                           "is a language model (GPT2LMHeadModel), not a sequence classifier"),
        "classifier to generate": (["generate", str(clf_ckpt), "hello"],
                                   "is a sequence-classification checkpoint (GPT2ForSequenceClassification), not a "
                                   "language model: use `gpt2 classify` / `gpt2 eval --classify`"),
        "classifier to eval --data": (["eval", str(clf_ckpt), "--data", str(tsv), "--column", "1", "--no-header"],
                                      "is a sequence-classification checkpoint"),
    }[case]
    r = gpt2_main(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_read_labelled_and_classify_agree_on_a_headered_csv(classifier, tok, tmp_path) -> None:
    """The header names the columns (here label first), quoted texts keep their commas and quotes, and the
    texts read back classify exactly as the same strings given directly."""
    import csv

    rows = [("spam", TEXTS[0]), ("ham", 'She said "fine, see you", then left'), ("ham", TEXTS[4])]
    with (tmp_path / "d.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "text"])
        writer.writerows(rows)
    data = read_labelled(tmp_path / "d.csv")
    assert data.texts == [t for _, t in rows] and data.labels == [label for label, _ in rows]
    assert data.skipped_empty == 0
    read = classify(classifier, tok, data.texts, max_length=4, truncation_side="left")
    direct = classify(classifier, tok, [t for _, t in rows], max_length=4, truncation_side="left")
    assert read == direct
    for text, p in zip(data.texts, read):  # each row's own prediction, not its neighbour's
        assert p == pytest.approx(classify(classifier, tok, [text], max_length=4, truncation_side="left")[0], abs=1e-5)
    assert max(abs(a[0] - b[0]) for a in read for b in read) > 1e-3  # the rows are told apart
