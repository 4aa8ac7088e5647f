"""`gpt2 train` end to end on a tiny config: exact resume, kills, DDP, guards, signals, bad configs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import KILL_AFTER_SAVE, REPO, copy_gpt2_vocab, overrides, run_python

from gpt2.config import load_config
from gpt2.train.metrics import read_metrics

pytestmark = pytest.mark.slow


def train_losses(run_dir: Path) -> dict[int, float]:
    """step → train loss, from metrics.jsonl (JSON floats round-trip exactly, so equality is bit-exact)."""
    out: dict[int, float] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("kind") == "train":
            out[r["step"]] = r["loss"]
    return out


KILL_DURING_SAVE = """
import os, signal, torch
import gpt2.train.loop as loop
from gpt2.config import load_config
from gpt2.train.metrics import read_metrics
orig = torch.save
def save_and_die_midway(obj, f, *a, **kw):
    if ".step-{step:06d}." in str(f):      # inside the temporary directory of that checkpoint
        open(f, "wb").write(b"half a file")
        os.kill(os.getpid(), signal.SIGKILL)
    return orig(obj, f, *a, **kw)
torch.save = save_and_die_midway
loop.train(load_config({recipe!r}, {overrides!r}), progress=False)
"""

TINY = str(REPO / "configs" / "tiny-test.yaml")


def test_exact_resume_after_sigkill_and_kill_during_checkpoint(tmp_path, corpus, env, gpt2_main) -> None:
    """The kills are processes of their own; the uninterrupted run and the resumes run in this one."""
    common = ["train.max_steps=8", "checkpoint.interval=4", "eval.interval=4"]
    full = tmp_path / "full"
    r = gpt2_main("train", TINY, *overrides(corpus, full, *common), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    reference = train_losses(full)
    assert sorted(reference) == list(range(1, 9))

    # 1. SIGKILL right after the step-4 checkpoint, then resume to step 8.
    killed = tmp_path / "killed"
    ov = overrides(corpus, killed, *common)
    r = run_python(KILL_AFTER_SAVE.format(step=4, recipe=TINY, overrides=ov), env)
    assert r.returncode == -signal.SIGKILL
    assert (killed / "latest").read_text().strip() == "step-000004"
    r = gpt2_main("train", "--resume", str(killed), f"train.out_dir={killed}", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = train_losses(killed)
    for s in range(5, 9):
        assert resumed[s] == reference[s], (s, resumed[s], reference[s])  # bit for bit

    # 2. SIGKILL in the middle of writing the step-8 checkpoint: step 4 stays intact and loadable.
    torn = tmp_path / "torn"
    ov = overrides(corpus, torn, *common)
    r = run_python(KILL_DURING_SAVE.format(step=8, recipe=TINY, overrides=ov), env)
    assert r.returncode == -signal.SIGKILL
    assert (torn / "latest").read_text().strip() == "step-000004"
    assert not (torn / "step-000008").exists()
    from gpt2 import GPT2LMHeadModel

    GPT2LMHeadModel.from_pretrained(torn / "step-000004")
    r = gpt2_main("train", "--resume", str(torn), f"train.out_dir={torn}", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert train_losses(torn)[8] == reference[8]
    assert not list(torn.glob(".step-*"))  # the torn temporary directory was cleaned up
    # what the run leaves behind
    for name in ("metrics.jsonl", "loss.png", "run.yaml", "latest"):
        assert (full / name).is_file(), name
    assert list((full / "tensorboard").glob("events.out.tfevents.*"))
    ckpt = full / "step-000008"
    for name in ("config.json", "model.safetensors", "run.yaml", "trainer_state.pt", "tokenizer.json"):
        assert (ckpt / name).is_file(), name


def test_ddp_two_processes_match_one_process(tmp_path, corpus, env, shared_data, gpt2_main) -> None:
    hellaswag = shared_data / "hellaswag_val_sample1000.jsonl"
    common = ["train.max_steps=6", "checkpoint.interval=0", "eval.interval=0", "train.micro_batch_size=4",
              "train.global_batch_tokens=256",  # 4 × 32 × 2: two micro-steps in one process, one per rank in two
              f"eval.hellaswag={hellaswag}", "eval.hellaswag_interval=3", "eval.hellaswag_limit=9"]
    one = tmp_path / "one"
    r = gpt2_main("train", TINY, *overrides(corpus, one, *common), env=env)  # one process: this one
    assert r.returncode == 0, r.stderr[-3000:]
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gpt2",
           "train", TINY, *overrides(corpus, two, *common)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = train_losses(one), train_losses(two)
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for s in a:
        assert abs(a[s] - b[s]) <= 1e-5, (s, a[s], b[s])
    start = json.loads((two / "metrics.jsonl").read_text().splitlines()[0])
    assert start["world_size"] == 2 and start["grad_accum"] == 1
    # HellaSwag during training: the ranks split the 9 examples (5 + 4) and sum their counts.
    hs_one, hs_two = ([r for r in read_metrics(d) if r["kind"] == "hellaswag"] for d in (one, two))
    assert [r["step"] for r in hs_one] == [r["step"] for r in hs_two] == [3, 6]
    for r1, r2 in zip(hs_one, hs_two):
        assert r1["hellaswag_examples"] == r2["hellaswag_examples"] == 9
        assert (r1["hellaswag_acc"], r1["hellaswag_acc_norm"]) == (r2["hellaswag_acc"], r2["hellaswag_acc_norm"])
    # `gpt2 eval` on the run: its own val shards by default, the same HellaSwag numbers as the last
    # in-training pass, and an eval record appended to the run's metrics.jsonl.
    r = gpt2_main("eval", str(one), "--hellaswag", str(hellaswag), "--limit", "9", "--json", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    ev = json.loads(r.stdout)
    assert ev["data"] == json.loads((one / "metrics.jsonl").read_text().splitlines()[0])["shards"]
    assert ev["step"] == 6 and ev["tokens"] > 0 and ev["bits_per_byte"] > 0
    assert (ev["hellaswag_acc"], ev["hellaswag_acc_norm"]) == (hs_one[-1]["hellaswag_acc"],
                                                               hs_one[-1]["hellaswag_acc_norm"])
    recorded = read_metrics(one)[-1]
    assert recorded["kind"] == "eval" and recorded["bits_per_byte"] == ev["bits_per_byte"]
    # the 2-process checkpoint is a plain single-process model
    from gpt2 import GPT2LMHeadModel

    m1 = GPT2LMHeadModel.from_pretrained(one / "step-000006")
    m2 = GPT2LMHeadModel.from_pretrained(two / "step-000006")
    for (k, p), q in zip(m1.state_dict().items(), m2.state_dict().values()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=k)


def test_sigterm_saves_a_checkpoint_and_exits(tmp_path, corpus, env) -> None:
    code = """
import os, signal
import gpt2.train.loop as loop
from gpt2.config import load_config
from gpt2.train.metrics import read_metrics
orig = loop.LRSchedule.__call__
def lr(self, step, **kw):
    if step == 2:
        os.kill(os.getpid(), signal.SIGTERM)
    return orig(self, step, **kw)
loop.LRSchedule.__call__ = lr
r = loop.train(load_config({recipe!r}, {overrides!r}), progress=False)
raise SystemExit(130 if r.interrupted else 0)
"""
    out = tmp_path / "term"
    ov = overrides(corpus, out, "train.max_steps=50", "checkpoint.interval=0")
    r = run_python(code.format(recipe=TINY, overrides=ov), env)
    assert r.returncode == 130, r.stderr[-2000:]
    assert "signal SIGTERM: saving a checkpoint at step 3" in r.stderr
    assert (out / "latest").read_text().strip() == "step-000003"


def test_nan_loss_is_skipped_and_reported_then_too_many_stop_the_run(tmp_path, corpus, env, monkeypatch) -> None:
    from gpt2.model.gpt2 import GPT2LMHeadModel
    from gpt2.train import TrainingStopped, train

    monkeypatch.setenv("GPT2_CACHE", env["GPT2_CACHE"])
    calls = {"n": 0}
    orig = GPT2LMHeadModel.forward
    bad = {3}

    def forward(self, *a, **kw):
        out = orig(self, *a, **kw)
        if self.training:
            calls["n"] += 1
            if calls["n"] in bad or "all" in bad:
                out = out._replace(loss=out.loss * float("nan"))
        return out

    monkeypatch.setattr(GPT2LMHeadModel, "forward", forward)
    cfg = load_config(TINY, overrides(corpus, tmp_path / "nan", "train.max_steps=6", "checkpoint.interval=0",
                                      "eval.interval=0"))
    result = train(cfg, progress=False)
    assert result.skipped == 1
    skips = [json.loads(x) for x in (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["kind"] == "skip"]
    assert skips == [{"kind": "skip", "step": 3, "reason": "non-finite loss (nan)"}]
    assert all(torch.isfinite(p).all() for p in GPT2LMHeadModel.from_pretrained(result.last_checkpoint).parameters())

    bad.add("all")
    cfg = load_config(TINY, overrides(corpus, tmp_path / "nan2", "train.max_steps=20", "train.max_skipped_in_row=3"))
    with pytest.raises(TrainingStopped, match="3 updates in a row were skipped"):
        train(cfg, progress=False)


@pytest.mark.parametrize(
    "args,message",
    [
        (["train.nope=1"], "unknown config key 'train.nope'"),
        (["train.max_steps=abc"], "bad value for config key 'train.max_steps'"),
        (["train.global_batch_tokens=100"], "train.global_batch_tokens=100 is not a multiple of"),
        (["optim.schedule=step"], "optim.schedule='step'"),
        (["train.max_steps"], "is not key=value"),
        (["model.n_positions=16"], "train.seq_len=32 is longer than model.n_positions=16"),
    ],
)
def test_bad_configs_get_one_clear_line(args, message, tmp_path, corpus, env, gpt2_main) -> None:
    r = gpt2_main("train", TINY, *overrides(corpus, tmp_path / "bad", *args), env=env)
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "bad").exists()  # refused before anything was written


def test_missing_recipe_is_a_clear_error(env, gpt2_main) -> None:
    r = gpt2_main("train", "no-such-recipe.yaml", env=env)
    assert r.returncode == 2 and "no config file 'no-such-recipe.yaml'" in r.stderr


def test_fineweb_recipe_parses_and_starts_on_tiny_shapes(tmp_path, corpus, env, shared_data, train_cache,
                                                          gpt2_main) -> None:
    copy_gpt2_vocab(shared_data, train_cache)
    out = tmp_path / "fw"
    r = gpt2_main("train", "gpt2-124m-fineweb", "model.preset=tiny", "train.seq_len=32", "train.micro_batch_size=2",
                  "train.global_batch_tokens=128", "train.max_steps=2", "train.compile=false", "eval.steps=1",
                  "checkpoint.interval=0", f"train.out_dir={out}", f"data.source={corpus}", "data.delimiter=blank",
                  "data.val_fraction=0.1", "data.workers=1", "train.threads=1", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    start = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert start["grad_accum"] == 2 and start["dtype"] == "bfloat16"
    cfg = json.loads((out / "step-000002" / "config.json").read_text())
    assert cfg["vocab_size"] == 50257 and cfg["pad_vocab_size_multiple"] == 128


def test_every_shipped_recipe_parses() -> None:
    for path in sorted((REPO / "configs").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.train.max_steps >= 1, path
