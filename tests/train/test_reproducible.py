"""A run is a function of its config and seed, whatever the cache holds: cold and warm caches, a resume on
a fresh machine (empty cache) after SIGKILL, bf16 resume, and resume of a time-budgeted run."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from train_helpers import KILL_AFTER_SAVE, REPO, overrides, run_cli, run_python

from gpt2.train.metrics import read_metrics

pytestmark = pytest.mark.slow

TINY = str(REPO / "configs" / "tiny-test.yaml")
# dropout on, two micro-steps per step (gradient accumulation), a checkpoint after step 3
COMMON = ["model.dropout=0.1", "train.micro_batch_size=4", "train.global_batch_tokens=256", "train.max_steps=6",
          "checkpoint.interval=3", "eval.interval=3", "sample.interval=3"]

def records(run_dir: Path, kind: str = "train") -> list[dict]:
    return [r for r in read_metrics(run_dir) if r["kind"] == kind]


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(run_dir)}


def with_cache(env: dict[str, str], cache: Path) -> dict[str, str]:
    return dict(env, GPT2_CACHE=str(cache))


def test_cold_and_warm_cache_and_resume_on_an_empty_cache_are_bit_identical(tmp_path, corpus, env) -> None:
    cold_cache = tmp_path / "cache-cold"
    cold = tmp_path / "cold"
    r = run_cli(["train", TINY, *overrides(corpus, cold, *COMMON)], with_cache(env, cold_cache))
    assert r.returncode == 0, r.stderr[-3000:]
    # the cold run measured this CPU's matmul peak (for MFU) and trained the tokenizer: both now cached
    assert (cold_cache / "cpu_peak_flops.json").is_file() and list((cold_cache / "tokenizers").iterdir())
    warm = tmp_path / "warm"
    r = run_cli(["train", TINY, *overrides(corpus, warm, *COMMON)], with_cache(env, cold_cache))
    assert r.returncode == 0, r.stderr[-3000:]
    reference = losses(cold)
    assert sorted(reference) == list(range(1, 7))
    assert losses(warm) == reference  # bit for bit: JSON floats round-trip exactly
    assert records(warm, "sample")[-1]["samples"] == records(cold, "sample")[-1]["samples"]

    # Killed after step 3 on one machine, resumed on a "new" one: an empty cache, so the tokenizer,
    # the shards and the CPU peak are all rebuilt after the RNG state has been restored.
    killed = tmp_path / "killed"
    ov = overrides(corpus, killed, *COMMON)
    r = run_python(KILL_AFTER_SAVE.format(step=3, recipe=TINY, overrides=ov), with_cache(env, tmp_path / "cache-a"))
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    fresh = tmp_path / "cache-b"
    r = run_cli(["train", "--resume", str(killed)], with_cache(env, fresh))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (fresh / "cpu_peak_flops.json").is_file()  # the peak really was measured in the resumed process
    assert losses(killed) == reference


def test_bf16_resume_is_exact(tmp_path, corpus, env, gpt2_main) -> None:
    """bf16 autocast (emulated where the CPU lacks AVX-512 BF16: it must run anyway), killed and resumed.
    The kill is a process of its own; the uninterrupted run and the resume run in this one (a run on
    another process and cache is the test above)."""
    bf16 = [*COMMON, "train.dtype=bf16", "sample.interval=0"]
    full = tmp_path / "full"
    r = gpt2_main("train", TINY, *overrides(corpus, full, *bf16), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "dtype: bf16 as asked" in r.stderr
    assert read_metrics(full)[0]["dtype"] == "bfloat16"
    killed = tmp_path / "killed"
    r = run_python(KILL_AFTER_SAVE.format(step=3, recipe=TINY, overrides=overrides(corpus, killed, *bf16)), env)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    r = gpt2_main("train", "--resume", str(killed), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert losses(killed) == losses(full)


KILL_HALF_WAY = """
import os, signal
import gpt2.train.checkpointer as checkpointer
import gpt2.train.loop as loop
from gpt2.config import load_config
orig = checkpointer.save_checkpoint
def save_then_die(run_dir, step, **kw):
    path = orig(run_dir, step, **kw)
    if kw["trainer_state"]["loop_seconds"] >= {after_s}:
        print("killed at step", step, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    return path
checkpointer.save_checkpoint = save_then_die
loop.train(load_config({recipe!r}, {overrides!r}), progress=False)
"""


def test_resume_of_a_time_budgeted_run_keeps_its_clock(tmp_path, corpus, env, gpt2_main) -> None:
    """train.max_minutes: the time spent before a kill counts after the resume, so the run ends when the
    budget does (not a whole budget later) and the LR keeps decaying from where it was."""
    import torch

    budget_s = 12.0
    run_dir = tmp_path / "timed"
    ov = overrides(corpus, run_dir, f"train.max_minutes={budget_s / 60}", "train.max_steps=100000",
                   "checkpoint.interval=1", "eval.interval=0", "sample.interval=0", "optim.warmup_steps=1")
    r = run_python(KILL_HALF_WAY.format(after_s=budget_s / 2, recipe=TINY, overrides=ov), env)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    killed_at = int(r.stdout.split("killed at step")[1])
    state = torch.load(run_dir / f"step-{killed_at:06d}" / "trainer_state.pt", weights_only=True)
    spent = state["loop_seconds"]
    assert spent >= budget_s / 2
    lr_before = next(x["lr"] for x in records(run_dir) if x["step"] == killed_at)
    r = gpt2_main("train", "--resume", str(run_dir), env=env)  # in this process
    assert r.returncode == 0, r.stderr[-3000:]
    assert "train.max_minutes reached" in r.stderr
    after = [x for x in records(run_dir) if x["step"] > killed_at]
    assert len(after) > 1, "the resumed run made too few steps"
    # the resumed loop ran for what was left of the budget (plus slack), not for a whole new budget
    resumed_s = after[-1]["time"] - after[0]["time"]
    assert resumed_s <= budget_s - spent + 2.0, (resumed_s, spent)
    # the LR continued its decay instead of starting again near the peak
    assert after[0]["lr"] <= lr_before and after[-1]["lr"] < lr_before
    assert json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["kind"] == "end"
