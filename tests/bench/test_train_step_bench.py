"""bench/train_step.py --optimizer times the trainer's own step, not a copy of it.

    pytest tests/bench/test_train_step_bench.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import train_step

    return train_step


def test_the_timed_step_is_trainer_train_step(bench, tmp_path, monkeypatch) -> None:
    from gpt2.train.loop import Trainer

    calls = []
    real = Trainer.train_step

    def counted(self, lr):
        calls.append(lr)
        return real(self, lr)

    monkeypatch.setattr(Trainer, "train_step", counted)
    r = bench.run("tiny", seq_len=32, batch=2, steps=2, dtype_name="fp32", optimizer=True, with_hf=True)
    assert len(calls) == 1 + 2  # the warm-up and the timed steps all went through Trainer.train_step
    assert r["tok_s_ours"] > 0 and r["tok_s_hf"] > 0


def test_the_trainer_runs_the_presets_shapes(bench, tmp_path) -> None:
    trainer = bench.trainer_for("tiny", seq_len=32, batch=2, dtype_name="fp32", device=torch.device("cpu"),
                                compile=False, tmp=tmp_path)
    config = trainer.model.config
    assert (config.n_layer, config.n_embd, config.vocab_size) == (2, 64, 512)  # the tiny preset, its vocab
    before = [p.detach().clone() for p in trainer.model.parameters()]
    loss, *_ = trainer.train_step(trainer.cfg.optim.lr)
    assert loss == pytest.approx(torch.log(torch.tensor(512.0)).item(), rel=0.2)  # random init, random ids
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert sys.modules["train_step"] is bench
