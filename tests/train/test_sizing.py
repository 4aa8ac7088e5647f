"""model.preset=auto (gpt2.train.sizing): the budget and the machine's speed given, the shape it picks; what is
given explicitly wins; a run records the pick and trains that shape."""

from __future__ import annotations

import json

import pytest
import yaml
from train_helpers import overrides

from gpt2.config import load_config
from gpt2.errors import UserError
from gpt2.train.sizing import LADDER, Rung, apply, pick, size_model

# A ladder of the test's own, so the mechanics are checked whatever the fitted table says.
BIG = Rung(shape=(6, 6, 384), dropout=0.1, weight_decay=1.0, min_passes=6.0)
MID = Rung(shape=(4, 4, 256), dropout=0.1, weight_decay=0.5, min_passes=3.0)
SMALL = Rung(shape=(4, 4, 192), dropout=0.0, weight_decay=0.1, min_passes=0.0)
TEST_LADDER = (BIG, MID, SMALL)
SPEEDS = {BIG: 4_000.0, MID: 10_000.0, SMALL: 16_000.0}  # tokens/s


@pytest.mark.parametrize("scale, expected", [(0.25, SMALL), (0.6, MID), (1.0, MID), (3.0, BIG)])
def test_pick_takes_the_largest_rung_whose_own_speed_plans_enough_passes(scale, expected) -> None:
    speeds = {r: v * scale for r, v in SPEEDS.items()}
    plan = pick(speeds, seconds=500, train_tokens=1_000_000, ladder=TEST_LADDER)
    assert plan.rung == expected
    assert plan.planned_tokens == pytest.approx(speeds[expected] * 500)
    assert plan.passes == pytest.approx(speeds[expected] * 500 / 1_000_000)
    assert plan.passes >= expected.min_passes or expected is SMALL
    assert "passes" in plan.reason and plan.record()["n_embd"] == expected.shape[2]


def test_the_fitted_ladder_on_the_machines_measured() -> None:
    """The default run's budget (8.75 minutes) and training split (1.57M tokens), at the rates the sweeps
    measured: a 2-core AVX2 CPU in fp32 keeps the small undropped model; a native-bf16 CPU gets more."""
    seconds, train_tokens = 525, 1_570_000
    slow = pick({r: 4_241.0 for r in LADDER}, seconds=seconds, train_tokens=train_tokens)  # Zen 3 fp32
    fast = pick({r: 17_000.0 for r in LADDER}, seconds=seconds, train_tokens=train_tokens)  # Zen 5 bf16
    assert slow.rung == LADDER[-1] and slow.rung.dropout == 0.0 and slow.rung.shape == (4, 4, 192)
    assert fast.rung != slow.rung and fast.rung.shape == (6, 5, 160) and fast.rung.weight_decay == 0.5
    assert LADDER[-1].min_passes == 0.0  # the last rung takes every plan


def test_without_a_time_budget_the_plan_is_the_steps_and_nothing_is_timed() -> None:
    cfg = load_config(None, ["model.preset=auto", "train.max_minutes=null", "train.max_steps=100"])

    def never(rung):
        raise AssertionError("timed a rung for a run planned on steps")

    model, optim, plan = size_model(cfg, train_tokens=1_000_000, time_rung=never, ladder=TEST_LADDER)
    per_step = cfg.train.micro_batch_size * cfg.train.seq_len
    assert plan.planned_tokens == 100 * per_step and plan.tok_per_s == {}
    assert plan.rung == SMALL and (model.n_layer, model.n_head, model.n_embd) == SMALL.shape
    assert optim.weight_decay == SMALL.weight_decay


def test_explicit_model_fields_win_over_the_pick() -> None:
    cfg = load_config(None, ["model.preset=auto", "model.n_embd=320", "model.dropout=0", "train.max_minutes=5",
                             "optim.weight_decay=0.2"])
    model, optim, plan = size_model(cfg, train_tokens=100_000, time_rung=lambda r: SPEEDS[r], ladder=TEST_LADDER)
    assert plan.rung == BIG  # 2.1M tokens/s·s over 100K tokens: many passes
    assert model.n_embd == 320 and model.dropout == 0.0 and optim.weight_decay == 0.2  # given
    assert (model.n_layer, model.n_head) == BIG.shape[:2]  # picked
    assert model.preset == "mini"


def test_apply_sets_the_rungs_weight_decay_and_dropout_where_unset() -> None:
    cfg = load_config(None, ["model.preset=auto"])
    model, optim = apply(cfg.model, cfg.optim, MID)
    assert optim.weight_decay == MID.weight_decay and optim.decay() == 0.5
    assert model.pdrops() == {"resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1}


def test_rungs_that_differ_only_in_weight_decay_are_timed_once() -> None:
    a = Rung(shape=(4, 4, 192), dropout=0.0, weight_decay=0.5, min_passes=3.0)
    b = Rung(shape=(4, 4, 192), dropout=0.0, weight_decay=0.1, min_passes=0.0)
    timed = []
    cfg = load_config(None, ["model.preset=auto", "train.max_minutes=1"])
    size_model(cfg, train_tokens=10_000, time_rung=lambda r: timed.append(r) or 1_000.0, ladder=(a, b))
    assert timed == [a]


def test_auto_with_init_from_is_refused_in_one_line() -> None:
    cfg = load_config("shakespeare-cpu", ["model.preset=auto", "model.init_from=gpt2"])
    with pytest.raises(UserError, match="init_from"):
        size_model(cfg, train_tokens=1000, time_rung=lambda r: 1.0)


def test_a_run_times_the_rungs_records_the_pick_and_trains_it(tmp_path, corpus, env, monkeypatch) -> None:
    """A real `preset: auto` run: each rung timed here, the pick in the start record and in run.yaml, and
    the saved model has that shape and dropout; a resume builds the same model from its checkpoint."""
    from gpt2.train import loop, sizing

    monkeypatch.setenv("GPT2_CACHE", env["GPT2_CACHE"])
    small_ladder = (Rung(shape=(2, 2, 64), dropout=0.1, weight_decay=0.1, min_passes=1e9),
                    Rung(shape=(1, 2, 32), dropout=0.05, weight_decay=0.7, min_passes=0.0))
    monkeypatch.setattr(sizing, "LADDER", small_ladder)
    out = tmp_path / "run"
    # warm-up over the first 3 of 4 steps: the clock-driven decay (train.max_minutes) touches no loss logged
    cfg = load_config("tiny-test", overrides(corpus, out, "model.preset=auto", "train.max_minutes=0.2",
                                             "train.max_steps=4", "optim.warmup_steps=3"))
    loop.train(cfg, progress=False)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    start = next(r for r in records if r["kind"] == "start")
    sized = start["sizing"]
    assert (sized["n_layer"], sized["n_head"], sized["n_embd"], sized["dropout"]) == (1, 2, 32, 0.05)
    assert sized["weight_decay"] == 0.7
    assert set(sized["tok_per_s"]) == {"2x2x64 dropout 0.1 wd 0.1", "1x2x32 dropout 0.05 wd 0.7"}
    assert all(v > 0 for v in sized["tok_per_s"].values())
    saved = yaml.safe_load((out / "run.yaml").read_text())
    assert saved["optim"]["weight_decay"] == 0.7
    saved = saved["model"]
    assert (saved["preset"], saved["n_layer"], saved["n_embd"], saved["dropout"]) == ("mini", 1, 32, 0.05)
    config = json.loads((out / "step-000004" / "config.json").read_text())
    assert (config["n_layer"], config["n_embd"], config["resid_pdrop"], config["attn_pdrop"]) == (1, 32, 0.05, 0.05)
    # The same run from its run.yaml (the shape named, nothing timed) trains the same losses, bit for bit.
    again = tmp_path / "again"
    loop.train(load_config(out / "run.yaml", [f"train.out_dir={again}"]), progress=False)

    def losses(run):
        return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                if r["kind"] == "train"]
    assert losses(again) == losses(out) and len(losses(out)) == 4
