"""bench/vs_nanogpt.py: the split it hands nanoGPT is the run's own, control tokens removed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_split_is_the_recipes_with_control_tokens_removed(shared_data: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GPT2_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(REPO)  # the recipe names ../shared/data relative to the repository
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import vs_nanogpt
    finally:
        sys.path.remove(str(REPO / "bench"))
    from gpt2.data.prepare import is_val_document

    train, val = vs_nanogpt.run_split(None, "douban-zh")
    rows = [json.loads(line) for line in (shared_data / "douban_movie_reviews_zh.jsonl").open(encoding="utf-8")]
    assert len(train) + len(val) == len(rows) == 1223
    assert 0.07 < len(val) / len(rows) < 0.13  # a tenth, by hash
    assert not any("<|" in d for d in train + val)
    # The held-out reviews are those whose controlled document ("<|stars=N|>" + text) hashes below 0.1.
    expected = [r["text"] for r in rows if is_val_document(f"<|stars={r['stars']}|>{r['text']}", 0.1)]
    assert val == expected


def test_ours_is_the_runs_own_final_evaluation_without_its_shards(tmp_path: Path) -> None:
    """A finished run is scored from its end record, so a run whose cache is gone (bench/default_run.py's
    temporary one) is scored before nanoGPT trains, not refused after."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import vs_nanogpt
    finally:
        sys.path.remove(str(REPO / "bench"))
    records = [{"kind": "start"}, {"kind": "val", "val_bpb": 2.5}, {"kind": "end", "step": 9, "val_bpb": 1.7953}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert vs_nanogpt._ours(tmp_path) == 1.7953
