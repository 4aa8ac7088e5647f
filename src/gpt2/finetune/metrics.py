"""Classification metrics: accuracy, macro-F1, per-class precision/recall/F1, a confusion matrix and its plot.

    python -c "from gpt2.finetune.metrics import classification_report as r; print(r([0, 1, 1], [0, 1, 0], ['ham', 'spam']))"

`classification_report` returns plain Python numbers (JSON-serialisable) and follows scikit-learn's
definitions with zero_division=0: a class never predicted has precision 0.0, one never present recall
0.0 (the tests hold it equal to sklearn). Computed here with numpy since sklearn is not a dependency.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gpt2.common import atomic_write_bytes
from gpt2.errors import UserError


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b != 0)


def classification_report(predictions: Sequence[int], labels: Sequence[int], names: Sequence[str]) -> dict[str, Any]:
    """accuracy, macro_f1, per_class {name: {precision, recall, f1, support}}, confusion (rows = true,
    columns = predicted, in `names` order) and examples (how many were scored)."""
    k = len(names)
    pred = np.asarray(predictions, dtype=np.int64)
    true = np.asarray(labels, dtype=np.int64)
    if pred.shape != true.shape or pred.ndim != 1:
        raise UserError(f"predictions ({pred.shape}) and labels ({true.shape}) must be two lists of one length")
    for what, arr in (("prediction", pred), ("label", true)):
        bad = arr[(arr < 0) | (arr >= k)]
        if bad.size:
            raise UserError(f"{what} id {int(bad[0])} is not a class index (0..{k - 1} for {k} names)")
    confusion = np.bincount(true * k + pred, minlength=k * k).reshape(k, k)  # (true, predicted)
    tp = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    precision = _safe_div(tp, confusion.sum(axis=0))
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    n = int(true.size)
    return {
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "macro_f1": float(f1.mean()) if k else 0.0,
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(support[i])}
            for i, name in enumerate(names)
        },
        "confusion": confusion.tolist(),
        "examples": n,
    }


def plot_confusion(confusion: Sequence[Sequence[int]], names: Sequence[str], path: str | Path, *,
                   title: str = "") -> Path:
    """Draw the confusion matrix (counts, rows = true) as a PNG at `path`; written whole or not at all."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install matplotlib") from None
    m = np.asarray(confusion)
    k = len(names)
    # A Figure with its own Agg canvas, not pyplot: no global backend switch, no figure registry to leak.
    fig = Figure(figsize=(1.6 + 0.7 * k, 1.2 + 0.7 * k), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(m, cmap="Blues", vmin=0)
    ax.set_xticks(range(k), labels=list(names), rotation=45 if max(map(len, names), default=0) > 6 else 0)
    ax.set_yticks(range(k), labels=list(names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    top = m.max() if m.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{m[i, j]:,}", ha="center", va="center",
                    color="white" if top and m[i, j] > top / 2 else "black")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path
