"""Classification metrics against scikit-learn (or a hand computation), and the confusion-matrix PNG."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gpt2.errors import UserError
from gpt2.finetune.metrics import classification_report, plot_confusion

NAMES = ["ham", "spam", "other"]  # "other" is never predicted and never true: zero division everywhere
TRUE = [0, 0, 0, 1, 1, 0, 1, 0]
PRED = [0, 1, 0, 1, 0, 0, 1, 1]


def test_matches_hand_computation_and_is_json() -> None:
    r = classification_report(PRED, TRUE, NAMES)
    json.dumps(r)  # plain Python numbers only
    assert r["examples"] == 8 and r["accuracy"] == pytest.approx(5 / 8)
    assert r["confusion"] == [[3, 2, 0], [1, 2, 0], [0, 0, 0]]
    ham, spam, other = (r["per_class"][n] for n in NAMES)
    assert ham == pytest.approx({"precision": 3 / 4, "recall": 3 / 5, "f1": 2 / 3, "support": 5})
    assert spam == pytest.approx({"precision": 2 / 4, "recall": 2 / 3, "f1": 4 / 7, "support": 3})
    assert other == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert r["macro_f1"] == pytest.approx((2 / 3 + 4 / 7 + 0) / 3)


def test_matches_sklearn() -> None:
    from sklearn import metrics  # a dev dependency: missing, the test fails rather than skips
    rng = np.random.default_rng(0)
    for k in (2, 3, 5):
        true = rng.integers(0, k, 200).tolist()
        pred = rng.integers(0, k - 1, 200).tolist()  # the last class is never predicted
        r = classification_report(pred, true, [f"c{i}" for i in range(k)])
        assert r["accuracy"] == pytest.approx(metrics.accuracy_score(true, pred))
        assert r["macro_f1"] == pytest.approx(metrics.f1_score(true, pred, average="macro", labels=range(k),
                                                               zero_division=0))
        p, rec, f1, support = metrics.precision_recall_fscore_support(true, pred, labels=range(k), zero_division=0)
        assert [r["per_class"][f"c{i}"]["precision"] for i in range(k)] == pytest.approx(p.tolist())
        assert [r["per_class"][f"c{i}"]["recall"] for i in range(k)] == pytest.approx(rec.tolist())
        assert [r["per_class"][f"c{i}"]["f1"] for i in range(k)] == pytest.approx(f1.tolist())
        assert [r["per_class"][f"c{i}"]["support"] for i in range(k)] == support.tolist()
        assert r["confusion"] == metrics.confusion_matrix(true, pred, labels=range(k)).tolist()


def test_bad_ids_are_user_errors() -> None:
    with pytest.raises(UserError, match=r"prediction id 3 is not a class index \(0\.\.2"):
        classification_report([3], [0], NAMES)
    with pytest.raises(UserError, match="two lists of one length"):
        classification_report([0, 1], [0], NAMES)


def test_plot_confusion_writes_a_png_without_touching_pyplot(tmp_path) -> None:
    import matplotlib

    backend = matplotlib.get_backend()
    r = classification_report(PRED, TRUE, NAMES)
    out = plot_confusion(r["confusion"], NAMES, tmp_path / "plots" / "confusion.png", title="SMS test")
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and out.stat().st_size > 1000
    assert [p.name for p in out.parent.iterdir()] == ["confusion.png"]  # no temporary file left behind
    assert matplotlib.get_backend() == backend
