"""Labelled data for classification: reading every format, label maps, seeded splits, balancing, weights."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from gpt2.errors import UserError
from gpt2.finetune.data import (
    Labelled,
    check_label_coverage,
    class_weights,
    downsample,
    label_maps,
    read_labelled,
    split_indices,
)


def test_sms_spam_the_llms_from_scratch_protocol(shared_data) -> None:
    data = read_labelled(shared_data / "sms_spam.tsv", text_field="1", label_field="0")
    assert isinstance(data, Labelled) and len(data.texts) == len(data.labels) == 5574
    assert Counter(data.labels) == {"ham": 4827, "spam": 747} and data.skipped_empty == 0
    assert data.texts[0].startswith("Go until jurong point") and data.labels[2] == "spam"
    keep = downsample(data.labels, seed=123)
    assert Counter(data.labels[i] for i in keep) == {"ham": 747, "spam": 747}
    assert keep == sorted(keep) and keep == downsample(data.labels, seed=123) != downsample(data.labels, seed=1)
    train, val, test = split_indices(len(keep), seed=123)
    assert (len(train), len(val), len(test)) == (1045, 149, 300)
    assert sorted(train + val + test) == list(range(len(keep)))
    assert (train, val, test) == split_indices(len(keep), seed=123)  # deterministic
    assert train != split_indices(len(keep), seed=124)[0]
    balanced = data.subset(keep)
    check_label_coverage(balanced.labels, train=train, val=val, test=test)  # both labels are everywhere
    id2label, label2id = label_maps(balanced.labels)
    assert id2label == {0: "ham", 1: "spam"} and label2id == {"ham": 0, "spam": 1}
    weights = class_weights(data.labels, label2id)
    assert weights[1] / weights[0] == pytest.approx(4827 / 747) and sum(weights) / 2 == pytest.approx(1.0)


def test_imdb_jsonl_integer_labels_become_strings(shared_data) -> None:
    data = read_labelled(shared_data / "imdb_train.jsonl")
    assert len(data.texts) == 25000 and Counter(data.labels) == {"0": 12500, "1": 12500}
    assert data.texts[0].startswith("Bromwell High is a cartoon comedy")


def test_csv_with_header_empty_texts_skipped_and_counted(tmp_path) -> None:
    path = tmp_path / "reviews.csv"
    path.write_text('\ufeffid,review,sentiment\r\n1,"good, really\r\ngood",pos\r\n2,,neg\r\n3,"   ",neg\r\n'
                    '4,bad,neg\r\n', encoding="utf-8")
    data = read_labelled(path, text_field="review", label_field="sentiment")
    assert data.texts == ["good, really\r\ngood", "bad"] and data.labels == ["pos", "neg"]
    assert data.skipped_empty == 2 and data.source == str(path)
    semi = tmp_path / "semi.csv"
    semi.write_text("text;label\nhello;a\nworld;b\n", encoding="utf-8")
    assert read_labelled(semi, delimiter=";").labels == ["a", "b"]


def test_jsonl_json_and_parquet(tmp_path) -> None:
    rows = [{"text": "one", "label": 1}, {"text": None, "label": 0}, {"text": "two", "label": True},
            {"text": "three", "label": "x"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    (tmp_path / "d.json").write_text(json.dumps(rows), encoding="utf-8")
    for name in ("d.jsonl", "d.json"):
        data = read_labelled(tmp_path / name)
        assert data.texts == ["one", "two", "three"] and data.labels == ["1", "true", "x"]
        assert data.skipped_empty == 1
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"sentence": ["a b", "", "c d"], "y": [2, 0, 10]}), tmp_path / "d.parquet")
    data = read_labelled(tmp_path / "d.parquet", text_field="sentence", label_field="y")
    assert data.texts == ["a b", "c d"] and data.labels == ["2", "10"] and data.skipped_empty == 1
    with pytest.raises(UserError, match=r"no column 'text'; columns: sentence, y"):
        read_labelled(tmp_path / "d.parquet")


def test_missing_columns_and_fields_list_the_present_ones(tmp_path, shared_data) -> None:
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("label,review\npos,nice\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"no column 'text'; columns: label, review \(name them with --text-field"):
        read_labelled(csv_path)
    with pytest.raises(UserError, match=r"first row \('ham', 'Go until jurong point, …'\) is not a header naming "
                                        r"'text' and 'label'.*0-based column indices \(0\.\.1\)"):
        read_labelled(shared_data / "sms_spam.tsv")
    with pytest.raises(UserError, match=r"text column index 5 is out of range; rows have 2 fields"):
        read_labelled(shared_data / "sms_spam.tsv", text_field="5", label_field="0")
    (tmp_path / "d.jsonl").write_text('{"id": 1, "sentence": "hi", "label": 0}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"d\.jsonl:1: no field 'text'; fields: id, sentence, label"):
        read_labelled(tmp_path / "d.jsonl")
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_labelled(tmp_path / "missing.csv")
    (tmp_path / "d.txt").write_text("hello\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"unsupported file type '\.txt'"):
        read_labelled(tmp_path / "d.txt")


def test_a_label_only_in_test_or_val_is_named() -> None:
    labels = ["a", "a", "b", "b", "c", "d"]
    check_label_coverage(labels, train=[0, 2, 4, 5], val=[1], test=[3])
    with pytest.raises(UserError, match=r"label 'c' \(1 example\) appears in the test split but never in train"):
        check_label_coverage(labels, train=[0, 2, 5], val=[1], test=[3, 4])
    with pytest.raises(UserError, match=r"label 'd' \(1 example\) appears in the val split"):
        check_label_coverage(labels, train=[0, 2, 4], val=[5], test=[3])


def test_label_maps_sort_numbers_by_value_and_weights_have_mean_one() -> None:
    assert label_maps(["10", "2", "1", "2"])[0] == {0: "1", 1: "2", 2: "10"}
    assert label_maps(["spam", "ham", "b10", "b2"])[0] == {0: "b10", 1: "b2", 2: "ham", 3: "spam"}
    _, label2id = label_maps(["x", "y", "z"])
    w = class_weights(["x"] * 6 + ["y"] * 3 + ["z"], label2id)
    assert w[0] * 6 == pytest.approx(w[1] * 3) == pytest.approx(w[2]) and sum(w) / 3 == pytest.approx(1.0)
    with pytest.raises(UserError, match=r"no examples of label\(s\) 'z'"):
        class_weights(["x", "y"], label2id)
    with pytest.raises(UserError, match="split fractions must be three non-negative numbers summing to 1"):
        split_indices(10, fractions=(0.5, 0.1, 0.1), seed=0)
