"""trainer_state.pt cannot run code: it holds tensors and plain values, is read with weights_only=True,
a crafted one is refused in one line without running anything, and one written before the change (numpy's
RNG state as a numpy array) still resumes bit for bit.

    python -m pytest -q tests/train/test_trainer_state.py
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import REPO, overrides

from gpt2.train.checkpoint import TRAINER_STATE, load_trainer_state, numpy_rng_state
from gpt2.train.metrics import read_metrics

TINY = str(REPO / "configs" / "tiny-test.yaml")
pytestmark = pytest.mark.slow  # a 4-step run and a subprocess per crafted file


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r["kind"] == "train"}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, corpus, train_cache) -> Path:
    """4 steps of the tiny run with dropout (so the RNG states matter), a checkpoint after steps 2 and 4."""
    out = tmp_path_factory.mktemp("state") / "full"
    env = dict(os.environ, GPT2_CACHE=str(train_cache), OMP_NUM_THREADS="1")
    args = overrides(corpus, out, "model.dropout=0.1", "train.max_steps=4", "checkpoint.interval=2",
                     "checkpoint.keep_last=3", "eval.interval=0", "sample.interval=0")
    r = subprocess.run([sys.executable, "-m", "gpt2", "train", TINY, *args], capture_output=True, text=True,
                       env=env, timeout=900, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def rewound(full: Path, dest: Path) -> Path:
    """A copy of the run as it stood after step 2: step-000004 and the later metrics gone."""
    shutil.copytree(full, dest)
    shutil.rmtree(dest / "step-000004")
    (dest / "latest").write_text("step-000002\n")
    kept = [line for line in (dest / "metrics.jsonl").read_text().splitlines() if json.loads(line).get("step", 0) <= 2]
    (dest / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    return dest


def test_a_checkpoint_holds_only_tensors_and_plain_values(full_run) -> None:
    path = full_run / "step-000002" / TRAINER_STATE
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    state = torch.load(path, map_location="cpu", weights_only=True)  # no allowlist at all
    numpy_rng = state["rng"][0]["numpy"]
    assert numpy_rng["bit_generator"] == "MT19937" and numpy_rng["key"].shape == (624,)
    assert isinstance(state["rng"][0]["python"], tuple) and state["optimizer"]["state"]


class _CreatesAFile:
    """Unpickled, it opens (creates) a file: what an attacker's __reduce__ would do with os.system instead."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


@pytest.mark.parametrize("container", ["torch.save", "raw pickle"])
def test_a_crafted_trainer_state_is_refused_in_one_line_and_runs_nothing(container, full_run, tmp_path,
                                                                          train_cache) -> None:
    run = rewound(full_run, tmp_path / "crafted")
    marker = tmp_path / "pwned"
    state_file = run / "step-000002" / TRAINER_STATE
    state = load_trainer_state(run / "step-000002")
    state["rng"][0]["python"] = _CreatesAFile(marker)
    if container == "torch.save":
        torch.save(state, state_file)
    else:
        state_file.write_bytes(pickle.dumps(state))
    before = (run / "metrics.jsonl").read_text()
    env = dict(os.environ, GPT2_CACHE=str(train_cache), OMP_NUM_THREADS="1")
    env.pop("GPT2_DEBUG", None)
    r = subprocess.run([sys.executable, "-m", "gpt2", "train", "--resume", str(run),
                        f"train.out_dir={run}"], capture_output=True,
                       text=True, env=env, timeout=900, cwd=REPO)
    assert r.returncode == 2, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: refusing to load"), r.stderr[-3000:]
    assert "io.open" in lines[0] or container == "raw pickle", lines[0]  # the global it would have called
    assert "Traceback" not in r.stderr and "weights_only=False" not in r.stderr
    assert not marker.exists()  # nothing ran
    assert (run / "metrics.jsonl").read_text() == before and not (run / "step-000004").exists()
    # ... and the file was a real threat: unpickled without restriction, it creates the file
    if container == "torch.save":
        torch.load(state_file, weights_only=False)
    else:
        pickle.loads(state_file.read_bytes())
    assert marker.exists()


def test_a_checkpoint_written_before_the_change_resumes_bit_for_bit(full_run, tmp_path, env, gpt2_main) -> None:
    """The old layout, written the old way: torch.save of the state with numpy's RNG state as
    np.random.get_state()'s tuple (a uint32 numpy array inside)."""
    run = rewound(full_run, tmp_path / "old")
    state_file = run / "step-000002" / TRAINER_STATE
    state = torch.load(state_file, weights_only=True)
    old_tuples = [numpy_rng_state(rng["numpy"]) for rng in state["rng"]]
    # numpy's state made distinct from what the run's seed gives, so the check at the end sees it restored
    old_tuples[0] = np.random.RandomState(777).get_state()
    for rng, old in zip(state["rng"], old_tuples):
        rng["numpy"] = old
    torch.save(state, state_file)
    unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(state_file))
    assert "numpy.ndarray" in unsafe  # really the old form: a plain weights_only load would refuse it
    with pytest.raises(pickle.UnpicklingError):
        torch.load(state_file, weights_only=True)

    np.random.seed(12345)  # anything but the saved state
    r = gpt2_main("train", "--resume", str(run), f"train.out_dir={run}", env=env)  # run.yaml names the original
    assert r.returncode == 0, r.stderr[-3000:]
    assert losses(run) == losses(full_run), r.stderr[-3000:]  # steps 3 and 4 as the uninterrupted run had them, exactly
    assert sorted(losses(run)) == [1, 2, 3, 4]
    # numpy's generator came back from the old array (training draws nothing from it)
    assert np.array_equal(np.random.get_state()[1], old_tuples[0][1])


def test_an_old_numpy_rng_state_that_is_not_mt19937_words_is_refused(full_run, tmp_path) -> None:
    run = rewound(full_run, tmp_path / "odd")
    state_file = run / "step-000002" / TRAINER_STATE
    state = torch.load(state_file, weights_only=True)
    state["rng"][0]["numpy"] = ("MT19937", np.zeros(3, dtype=np.uint32), 0, 0, 0.0)
    torch.save(state, state_file)
    from gpt2.errors import UserError

    with pytest.raises(UserError, match="not MT19937's 624 uint32 words"):
        load_trainer_state(run / "step-000002")
    state["rng"][0]["numpy"] = ("MT19937", np.zeros(624, dtype=np.float64), 0, 0, 0.0)  # a dtype not allowed
    torch.save(state, state_file)
    with pytest.raises(UserError, match="refusing to load"):
        load_trainer_state(run / "step-000002")


def test_a_checkpoint_written_before_fit_holds_what_the_resumed_one_held(full_run, tmp_path, corpus, train_cache,
                                                                           monkeypatch) -> None:
    """Checkpointing needs nothing that fit() sets: a trainer resumed from step 2 and checkpointed at once
    writes the step, the loop's seconds, and every component's state (schedule, loader, guard, scaler, the
    RNG of its rank) exactly as the checkpoint it resumed from holds them."""
    from gpt2.config import load_config
    from gpt2.train.loop import Trainer
    from gpt2.train.task import LanguageModelTask

    monkeypatch.setenv("GPT2_CACHE", str(train_cache))
    out = tmp_path / "again"
    cfg = load_config(TINY, overrides(corpus, out, "model.dropout=0.1", "train.max_steps=4", "eval.interval=0",
                                      "sample.interval=0"))
    trainer = Trainer(cfg, LanguageModelTask(cfg), resume=full_run / "step-000002", progress=False)
    path = trainer.checkpoint()
    trainer.logger.close()
    assert path == out / "step-000002"
    before = load_trainer_state(full_run / "step-000002")
    after = load_trainer_state(path)
    for key in ("step", "tokens", "loop_seconds", "schedule", "train_loader", "guard", "world_size", "grad_accum"):
        assert after[key] == before[key], key
    rng_after, rng_before = after["rng"][0], before["rng"][0]
    assert torch.equal(rng_after["torch"], rng_before["torch"])
    assert rng_after["python"] == rng_before["python"]
    assert torch.equal(rng_after["numpy"]["key"], rng_before["numpy"]["key"])
    assert rng_after["numpy"]["pos"] == rng_before["numpy"]["pos"]
