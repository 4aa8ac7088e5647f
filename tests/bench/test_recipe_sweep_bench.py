"""bench/recipe_sweep.py on two seconds-long variants: speeds measured, steps fitted to the budget, a table.

    pytest tests/bench/test_recipe_sweep_bench.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "recipe_sweep.py"


@pytest.mark.slow  # four gpt2 train subprocesses on a tiny model
def test_two_tiny_variants_get_steps_by_their_speed_and_a_row_each(tmp_path: Path, shared_data: Path) -> None:
    tiny = (f"data.source={shared_data / 'douban_movie_reviews_zh.jsonl'} data.val_fraction=0.1 "
            "data.tokenizer.vocab_size=300 model.n_layer=1 model.n_head=2 train.seq_len=16 "
            "train.micro_batch_size=2 train.dtype=fp32 eval.steps=2 sample.max_new_tokens=4")
    results = tmp_path / "sweep.json"
    runs = tmp_path / "runs"
    r = subprocess.run([sys.executable, str(BENCH), "--seconds", "0.05", "--results", str(results), "--out", str(runs),
                        "--variant", f"adamw:{tiny} model.n_embd=32 optim.name=adamw",
                        "--variant", f"muon:{tiny} model.n_embd=32 optim.name=muon", "--steps", "muon=3"],
                       capture_output=True, text=True, timeout=600, cwd=REPO,
                       env={**os.environ, "GPT2_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stdout + r.stderr
    record = json.loads(results.read_text())
    assert set(record["variants"]) == {"adamw", "muon"} and record["seconds"] == 0.05
    adamw = record["variants"]["adamw"]  # probed: its speed fits its steps into the budget
    assert adamw["tok_per_s"] > 0 and adamw["steps"] == max(1, int(0.05 * adamw["tok_per_s"] / 32))
    assert record["variants"]["muon"]["steps"] == 3  # given: not probed
    assert (runs / "speed-adamw").is_dir() and not (runs / "speed-muon").exists()
    for name, v in record["variants"].items():
        assert v["tokens"] == v["steps"] * 32 and 0 < v["val_bpb"] < 20
        assert f"| {name} |" in r.stdout
    assert record["variants"]["muon"]["optimizer"].startswith("Muon")
