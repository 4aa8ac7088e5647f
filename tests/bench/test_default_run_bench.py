"""bench/default_run.py on a seconds-long run: empty cache, one table row, a JSON record with what the run chose.

    pytest tests/bench/test_default_run_bench.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "default_run.py"


@pytest.mark.slow  # a gpt2 train subprocess (torch import, tokenizer training on 1 MB, 3 steps)
def test_tiny_run_from_an_empty_cache_prints_a_row_and_writes_the_record(tmp_path: Path, shared_data: Path) -> None:
    results = tmp_path / "record.json"
    tiny = [f"data.source={shared_data / 'douban_movie_reviews_zh.jsonl'}", "data.val_fraction=0.1",  # 1,223 documents
            "data.tokenizer.vocab_size=300", "model.n_layer=1", "model.n_head=2", "model.n_embd=32",
            "train.seq_len=16", "train.micro_batch_size=2", "train.max_steps=3", "train.max_minutes=null",
            "train.threads=1", "train.dtype=fp32", "eval.steps=2", "checkpoint.interval=0",
            "sample.max_new_tokens=4"]
    r = subprocess.run([sys.executable, str(BENCH), "--results", str(results), *tiny], capture_output=True,
                       text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    row = next(line for line in r.stdout.splitlines() if line.startswith("| ") and "float32" in line)
    record = json.loads(results.read_text())
    assert record["cache"] == "empty" and record["dtype"].endswith("float32")
    assert record["steps"] == 3 and record["tokens"] == 3 * 2 * 16
    assert 0 < record["before_first_step_s"] < record["wall_s"] and 0 < record["trainer_s"] < record["wall_s"]
    assert record["tok_per_s"] > 0
    assert 0 < record["val_bpb"] < 20 and f"{record['val_bpb']:.3f}" in row
    assert record["cpu"] in row and record["samples"]


def test_a_failing_run_exits_non_zero_with_its_output(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(BENCH), "--results", str(tmp_path / "r.json"), "model.n_layer=0"],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode != 0 and "gpt2 train exited with 2" in r.stderr
    assert not (tmp_path / "r.json").exists()
