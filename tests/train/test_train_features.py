"""Training features that had no test: the spike guard, model.init_from, torch.compile, the progress
line's ETA under a time budget, and the CLI's exit codes (2 user error, 1 stopped run, 130 interrupted,
a traceback for a bug)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from train_helpers import REPO, overrides, run_python

from gpt2.config import load_config
from gpt2.train.loop import SpikeGuard
from gpt2.train.metrics import read_metrics

pytestmark = pytest.mark.slow

TINY = str(REPO / "configs" / "tiny-test.yaml")


def train_records(run_dir) -> list[dict]:
    return [r for r in read_metrics(run_dir) if r["kind"] == "train"]


def test_spike_guard_unit() -> None:
    guard = SpikeGuard(factor=3.0, window=50, min_history=20)
    for i in range(19):
        assert guard.check(3.0 + 0.01 * (i % 3), 1.0) is None
        guard.record(3.0 + 0.01 * (i % 3), skipped=False)
    assert guard.check(100.0, 1.0) is None  # too little history to judge yet
    guard.record(3.0, skipped=False)
    reason = guard.check(3.5, 1.0)
    assert reason is not None and reason.startswith("loss spike (3.5000 > running mean")
    assert guard.check(3.02, 1.0) is None  # within mean + 3·std
    guard.record(3.5, skipped=True)
    assert guard.in_row == 1 and len(guard.history) == 20  # a skipped loss joins no statistics
    assert SpikeGuard(factor=0.0).check(1e9, 1.0) is None  # factor 0 turns the spike test off


def test_a_loss_spike_skips_the_update(tmp_path, corpus, env, monkeypatch) -> None:
    from gpt2.model.gpt2 import GPT2LMHeadModel
    from gpt2.train import train

    monkeypatch.setenv("GPT2_CACHE", env["GPT2_CACHE"])
    calls = {"n": 0}
    orig = GPT2LMHeadModel.forward

    def forward(self, *a, **kw):
        out = orig(self, *a, **kw)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 24:  # step 24's loss ×50: far outside the running statistics
                out = out._replace(loss=out.loss * 50.0)
        return out

    monkeypatch.setattr(GPT2LMHeadModel, "forward", forward)
    run_dir = tmp_path / "spike"
    cfg = load_config(TINY, overrides(corpus, run_dir, "train.max_steps=26", "train.spike_factor=4",
                                      "checkpoint.interval=0", "eval.interval=0", "sample.interval=0"))
    result = train(cfg, progress=False)
    assert result.skipped == 1
    skips = [r for r in read_metrics(run_dir) if r["kind"] == "skip"]
    assert len(skips) == 1 and skips[0]["step"] == 24 and skips[0]["reason"].startswith("loss spike")


def test_init_from_starts_from_the_checkpoint_weights(tmp_path, corpus, env, monkeypatch) -> None:
    from gpt2 import GPT2LMHeadModel
    from gpt2.data.loader import TokenLoader
    from gpt2.train import train

    monkeypatch.setenv("GPT2_CACHE", env["GPT2_CACHE"])
    quiet = ["checkpoint.interval=0", "eval.interval=0", "sample.interval=0"]
    base = train(load_config(TINY, overrides(corpus, tmp_path / "base", "train.max_steps=30", *quiet)), progress=False)
    cont = tmp_path / "cont"
    train(load_config(TINY, overrides(corpus, cont, "train.max_steps=1", f"model.init_from={base.last_checkpoint}",
                                      *quiet)), progress=False)
    fresh = tmp_path / "fresh"
    train(load_config(TINY, overrides(corpus, fresh, "train.max_steps=1", *quiet)), progress=False)
    # step 1's loss is the base model's loss on the run's first batch
    start = read_metrics(cont)[0]
    loader = TokenLoader(start["shards"], split="train", batch_size=4, seq_len=32, shuffle=True, seed=1337)
    x, y = loader.next_batch()
    model = GPT2LMHeadModel.from_pretrained(base.last_checkpoint).train()
    expected = model(x, targets=y, return_logits=False).loss.item()
    got = train_records(cont)[0]["loss"]
    assert abs(got - expected) <= 1e-6, (got, expected)
    assert train_records(fresh)[0]["loss"] > got + 0.3  # a fresh init is far worse on the same batch


def test_compile_gives_the_losses_of_eager(tmp_path, corpus, env, monkeypatch) -> None:
    from gpt2.train import train

    monkeypatch.setenv("GPT2_CACHE", env["GPT2_CACHE"])
    quiet = ["train.max_steps=3", "checkpoint.interval=0", "eval.interval=0", "sample.interval=0"]
    eager = train(load_config(TINY, overrides(corpus, tmp_path / "eager", *quiet)), progress=False)
    compiled = train(load_config(TINY, overrides(corpus, tmp_path / "compiled", "train.compile=true", *quiet)),
                     progress=False)
    assert len(eager.losses) == len(compiled.losses) == 3
    torch.testing.assert_close(torch.tensor(compiled.losses), torch.tensor(eager.losses), atol=1e-4, rtol=1e-4)
    assert compiled.val_loss == pytest.approx(eager.val_loss, abs=1e-4)


def test_eta_follows_the_time_budget(tmp_path, corpus, env, gpt2_main) -> None:
    out = tmp_path / "eta"
    r = gpt2_main("train", TINY, *overrides(corpus, out, "train.max_minutes=0.1", "train.max_steps=1000000",
                                            "checkpoint.interval=0", "eval.interval=0", "sample.interval=0"), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    etas = [float(m.replace(",", "")) for m in re.findall(r" eta ([\d,.]+)s", r.stderr)]
    assert len(etas) > 3
    assert max(etas) <= 6.5, etas[:5]  # the 6-second budget, not a million steps' worth


# ------------------------------------------------------------------------------------ exit codes
STOPPED_RUN = """
import sys
from gpt2.model.gpt2 import GPT2LMHeadModel
orig = GPT2LMHeadModel.forward
def forward(self, *a, **kw):
    out = orig(self, *a, **kw)
    return out._replace(loss=out.loss * float("nan")) if self.training else out
GPT2LMHeadModel.forward = forward
from gpt2.cli import main
sys.exit(main({args!r}))
"""

def test_user_mistake_is_2_and_one_line_and_a_bug_keeps_its_traceback(tmp_path, corpus, env, gpt2_main,
                                                                        capsys, monkeypatch) -> None:
    """What gpt2.cli.main makes of each: in this process (the process boundary is test_exit_codes' part)."""
    import gpt2.train.loop as loop

    # a user mistake: 2 and one line
    r = gpt2_main("train", TINY, *overrides(corpus, tmp_path / "bad", "train.nope=1"), env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert [x for x in r.stderr.splitlines() if x.startswith("error:")] == [r.stderr.strip().splitlines()[-1]]
    assert "unknown config key 'train.nope'" in r.stderr
    # a bug: the exception leaves main (so Python prints its traceback, exit status 1), after a line saying
    # it is one and without an `error:` line
    def broken(self, step, **kw):
        raise KeyError(0)  # an internal bug, e.g. a lookup that should never miss

    monkeypatch.setattr(loop.LRSchedule, "__call__", broken)
    monkeypatch.setenv("GPT2_CACHE", env["GPT2_CACHE"])
    from gpt2.cli import main

    capsys.readouterr()
    with pytest.raises(KeyError, match="0"):
        main(["train", TINY, *overrides(corpus, tmp_path / "bug", "checkpoint.interval=0", "eval.interval=0",
                                        "sample.interval=0")])
    err = capsys.readouterr().err
    assert "this is a bug" in err and "error: 0" not in err, err[-2000:]


def test_exit_codes(tmp_path, corpus, env) -> None:
    """Through a real process: 1 for a run that stopped itself, 130 for Ctrl-C."""
    quiet = ["checkpoint.interval=0", "eval.interval=0", "sample.interval=0"]
    # a run that stops itself (too many skipped updates): 1
    args = ["train", TINY, *overrides(corpus, tmp_path / "stopped", "train.max_skipped_in_row=2", *quiet)]
    r = run_python(STOPPED_RUN.format(args=args), env)
    assert r.returncode == 1 and "error: stopped at step 2: 2 updates in a row were skipped" in r.stderr, r.stderr
    # interrupted with Ctrl-C: a checkpoint, then 130
    out = tmp_path / "interrupted"
    cmd = [sys.executable, "-m", "gpt2", "train", TINY,
           *overrides(corpus, out, "train.max_steps=1000000", "train.log_interval=1", *quiet)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    deadline = time.time() + 240
    while time.time() < deadline and not ((out / "metrics.jsonl").is_file() and train_records(out)):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err[-2000:]
    assert "signal SIGINT: saving a checkpoint" in err and (out / "latest").is_file()
