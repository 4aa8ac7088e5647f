"""Recipes as a library concept: names resolve in gpt2.config, runs resume from their run.yaml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import gpt2.config as config
from gpt2 import cli
from gpt2.config import available_recipes, load_config, load_run_config, to_yaml
from gpt2.errors import UserError


def test_load_config_takes_a_recipe_name() -> None:
    by_name = load_config("shakespeare-cpu", ["train.max_steps=3"])
    by_path = load_config(config.RECIPES_DIR / "shakespeare-cpu.yaml", ["train.max_steps=3"])
    assert by_name == by_path and by_name.train.max_steps == 3
    # the recipe really was read: its values differ from the bare dataclass defaults somewhere
    assert by_name != load_config(None, ["train.max_steps=3"])
    assert load_config("shakespeare-cpu.yaml") == load_config("shakespeare-cpu")


def test_unknown_recipe_lists_the_available_ones() -> None:
    assert {"shakespeare-cpu", "gpt2-124m-fineweb", "tiny-test"} <= set(available_recipes())
    with pytest.raises(UserError, match=r"unknown recipe 'shakespeare-gpu'; recipes: .*shakespeare-cpu") as e:
        load_config("shakespeare-gpu")
    assert all(name in str(e.value) for name in available_recipes())
    with pytest.raises(FileNotFoundError, match="no config file 'missing/x.yaml'"):
        load_config("missing/x.yaml")


def test_gpt2_train_print_config_prints_a_named_recipe(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "gpt2", "train", "shakespeare-cpu", "train.max_steps=7", "--print-config"],
                       capture_output=True, text=True, cwd=tmp_path)  # cwd: names must not depend on it
    assert r.returncode == 0, r.stderr
    assert r.stdout == to_yaml(load_config("shakespeare-cpu", ["train.max_steps=7"]))
    assert "max_steps: 7" in r.stdout


def _fake_run(tmp_path: Path) -> Path:
    """A run directory as the trainer leaves it: step dirs with run.yaml, a `latest` pointer."""
    run = tmp_path / "run"
    for step, max_steps in ((2, 11), (4, 13)):
        ck = run / f"step-{step:06d}"
        ck.mkdir(parents=True)
        (ck / "trainer_state.pt").write_bytes(b"")
        (ck / "run.yaml").write_text(to_yaml(load_config("tiny-test", [f"train.max_steps={max_steps}"])))
    (run / "latest").write_text("step-000004\n")
    return run


def test_load_run_config_reads_the_latest_checkpoints_run_yaml(tmp_path: Path) -> None:
    run = _fake_run(tmp_path)
    cfg = load_run_config(run)
    assert cfg.train.max_steps == 13 and cfg == load_config("tiny-test", ["train.max_steps=13"])
    assert load_config(resume=run) == cfg
    assert load_run_config(run / "step-000002").train.max_steps == 11
    assert load_run_config(run, ["train.max_steps=20"]).train.max_steps == 20
    with pytest.raises(FileNotFoundError, match="no run.yaml"):
        load_run_config(tmp_path / "nothing-here")


def test_cli_train_resume_alone_uses_the_runs_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _fake_run(tmp_path)
    seen = {}

    class Stop(Exception):
        pass

    def fake_train(cfg, *, resume=None):
        seen.update(cfg=cfg, resume=resume)
        raise Stop

    import gpt2.train

    monkeypatch.setattr(gpt2.train, "train", fake_train)
    with pytest.raises(Stop):
        cli.main(["train", "--resume", str(run), "train.log_interval=3"])
    assert seen["resume"] == str(run)
    assert seen["cfg"] == load_run_config(run, ["train.log_interval=3"])
    with pytest.raises(Stop):
        cli.main(["train", "tiny-test", "train.max_steps=5"])
    assert seen["cfg"] == load_config("tiny-test", ["train.max_steps=5"])


def test_a_negative_every_token_weight_is_a_one_line_error() -> None:
    from gpt2.config import validate

    validate(load_config("finetune-imdb"))  # the recipe's 1.0 passes
    with pytest.raises(UserError, match=r"finetune.every_token_weight=-0.5 must be 0 \(off\) or positive"):
        validate(load_config("finetune-imdb", ["finetune.every_token_weight=-0.5"]))
