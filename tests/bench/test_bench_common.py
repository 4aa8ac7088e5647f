"""bench/common.py: the Markdown tables and JSON records every bench script prints and writes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _common():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import common
    finally:
        sys.path.remove(str(REPO / "bench"))
    return common


def test_markdown_table_aligns_and_totals_the_timed_steps() -> None:
    common = _common()
    assert common.markdown_table(["a", "b", "c"], [[1, "x", 2.5]], "lrl").splitlines() == [
        "| a | b | c |", "| --- | ---: | --- |", "| 1 | x | 2.5 |"]
    steps = [{"step": "pretrain", "command": "gpt2 train", "wall_s": 90.0, "cpu_s": 170.0},
             {"step": "fine-tune", "command": "gpt2 finetune classify", "wall_s": 30.0, "cpu_s": 58.0}]
    lines = common.steps_table(steps).splitlines()
    assert lines[2] == "| pretrain | `gpt2 train` | 1.5 min | 2.8 min |"
    assert lines[-1] == "| total |  | 2.0 min | 3.8 min |"
    assert "total" not in common.steps_table(steps[:1])  # one step needs no total


def test_write_results_renames_a_complete_record_into_place(tmp_path) -> None:
    common = _common()
    path = tmp_path / "results" / "x.json"
    common.write_results(path, {"accuracy": 0.5})
    assert json.loads(path.read_text()) == {"accuracy": 0.5}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]  # no temporary left behind
