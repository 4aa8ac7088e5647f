"""bench/lora_vs_full.py at tiny shapes: it runs end to end, writes its JSON, and counts LoRA's parameters right.

    pytest tests/bench/test_lora_bench.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "lora_vs_full.py"
# One step of each configuration, one thread (the workers are subprocesses; on a busy 2-core machine two
# OpenMP threads per worker wait on each other far longer than the tiny step takes).
TINY = ["--preset", "tiny", "--seq-len", "32", "--batch", "2", "--warmup", "1", "--steps", "1", "--repeats", "1",
        "--threads", "1"]


def bench(*args: str, out: Path) -> tuple[subprocess.CompletedProcess, dict]:
    r = subprocess.run([sys.executable, str(BENCH), *TINY, *args, "--out", str(out)], capture_output=True,
                       text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    return r, json.loads(out.read_text())


@pytest.mark.slow  # three subprocesses, each importing torch: several seconds
def test_tiny_run_writes_the_fields_and_lora_counts_by_its_formula(tmp_path: Path) -> None:
    r, record = bench("--rank", "4", "--targets", "c_attn,mlp.c_proj", out=tmp_path / "lora.json")
    assert "| full |" in r.stdout and "| lora |" in r.stdout and "verdict: " in r.stdout
    for key in ("cpu", "torch", "threads", "settings", "summary", "runs", "comparison", "git_commit"):
        assert key in record, key
    assert {"name", "avx2", "fast_bf16"} <= set(record["cpu"])
    full, lora = record["summary"]["full"], record["summary"]["lora"]
    for s in (full, lora):
        for key in ("trainable_params", "total_params", "step_median_s", "step_min_s", "rss_after_build_mb",
                    "peak_rss_before_steps_mb", "peak_rss_mb"):
            assert s[key] > 0, key
        assert s["checks_ok"] and s["frozen_params_with_grad"] == 0
        assert s["optimizer_params"] == s["params_with_grad"] == s["trainable_params"]
    assert full["trainable_params"] == full["total_params"]
    # tiny: 2 blocks, n_embd 64, MLP 256 wide; r × (in + out) per adapted layer:
    # c_attn 64 → 192 and mlp.c_proj 256 → 64
    expected = 2 * 4 * ((64 + 192) + (256 + 64))
    assert lora["trainable_params"] == lora["lora_formula_params"] == expected == 4608
    assert lora["total_params"] == full["total_params"] + expected
    comparison = record["comparison"]
    assert comparison["speedup_full_over_lora"] > 0 and isinstance(comparison["passed"], bool)


@pytest.mark.slow
def test_bf16_runs_on_any_cpu(tmp_path: Path) -> None:
    """--dtype bf16 must not fail where bf16 is emulated (AVX2 only): it runs and says which it was."""
    r, record = bench("--dtype", "bf16", "--configs", "lora", out=tmp_path / "bf16.json")
    lora = record["summary"]["lora"]
    assert lora["dtype"] == "bfloat16" and lora["step_median_s"] > 0
    assert "comparison" not in record
    if not record["cpu"]["fast_bf16"]:
        assert "emulates" in lora["dtype_reason"] and "note: no native bf16" in r.stdout
