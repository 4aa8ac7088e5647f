"""AdamW groups and the learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch

from gpt2 import GPT2Config, GPT2LMHeadModel
from gpt2.config import OptimConfig
from gpt2.train.optim import LRSchedule, build_optimizer, param_groups


def test_decay_only_on_matrices_and_tied_weight_once() -> None:
    model = GPT2LMHeadModel(GPT2Config.from_preset("tiny"))
    decay, no_decay = param_groups(model, 0.1)
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    n = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert n == model.num_parameters()
    opt = build_optimizer(model, OptimConfig(), device=torch.device("cpu"))
    assert opt.param_groups[0]["weight_decay"] == 0.1 and opt.param_groups[1]["weight_decay"] == 0.0


def test_schedule_warmup_cosine_floor_and_time_budget() -> None:
    s = LRSchedule(OptimConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=10), max_steps=110)
    assert s(0) == pytest.approx(0.1) and s(9) == pytest.approx(1.0)
    assert s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert s(110) == pytest.approx(0.1) and s(1000) == pytest.approx(0.1)
    # a clock running out first drives the decay: half the time used = half way down the cosine
    assert s(20, time_fraction=0.5) == pytest.approx(s(60))
    assert s(20, time_fraction=2.0) == pytest.approx(0.1)
    assert s(20, time_fraction=0.0) == pytest.approx(s(20))  # steps ahead of the clock win
    # right after warm-up the decay's progress is ~0: a clock reading behind the steps (11/110) changes nothing,
    # so a run that its steps end is the same whatever the machine's speed
    assert s(11, time_fraction=0.05) == s(11) and s(11, time_fraction=0.09) == s(11)
    assert s(11, time_fraction=0.2) == pytest.approx(s(10 + 20))  # a clock ahead of the steps still drives it
    with pytest.raises(ValueError, match="LR schedule differs"):
        s.load_state_dict({**s.state_dict(), "max_steps": 5})


def test_schedule_linear_warmup_straight_line_to_the_floor_and_time_budget() -> None:
    s = LRSchedule(OptimConfig(lr=2.0, min_lr_ratio=0.25, warmup_steps=4, schedule="linear"), max_steps=24)
    assert [s(k) for k in range(4)] == pytest.approx([0.5, 1.0, 1.5, 2.0])  # warm-up: lr × (step + 1) / 4
    assert s(4) == pytest.approx(2.0)  # the peak, then 20 steps down to 2.0 × 0.25
    assert s(9) == pytest.approx(0.5 + 0.75 * 1.5) and s(14) == pytest.approx(0.5 + 0.5 * 1.5)  # a quarter, half
    assert [s(k) - s(k + 1) for k in range(4, 24)] == pytest.approx([1.5 / 20] * 20)  # a straight line
    assert s(24) == pytest.approx(0.5) and s(1000) == pytest.approx(0.5)  # the floor, and it stays there
    assert s(5, time_fraction=0.5) == pytest.approx(s(14))  # a clock half used: half way down
    assert s(5, time_fraction=1.5) == pytest.approx(0.5)
    assert LRSchedule(OptimConfig(lr=2.0, min_lr_ratio=0.0, warmup_steps=4, schedule="linear"), max_steps=24)(24) == 0.0
    flat = LRSchedule(OptimConfig(lr=2.0, min_lr_ratio=1.0, warmup_steps=0, schedule="linear"), max_steps=24)
    assert [flat(k) for k in (0, 12, 24)] == pytest.approx([2.0, 2.0, 2.0])  # min_lr_ratio=1: no decay


def test_schedule_constant_after_warmup_ignores_the_floor_and_the_clock() -> None:
    s = LRSchedule(OptimConfig(lr=2.0, min_lr_ratio=0.25, warmup_steps=4, schedule="constant"), max_steps=24)
    assert [s(k) for k in range(4)] == pytest.approx([0.5, 1.0, 1.5, 2.0])  # the same warm-up
    assert [s(k) for k in (4, 14, 23, 24, 1000)] == [2.0] * 5  # no decay, min_lr_ratio unused
    assert s(10, time_fraction=1.0) == 2.0
    assert LRSchedule(OptimConfig(lr=2.0, warmup_steps=0, schedule="constant"), max_steps=24)(0) == 2.0
