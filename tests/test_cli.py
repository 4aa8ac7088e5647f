"""The `gpt2` command line: help, model info and a bad input through a real subprocess; the rest of model
info and argparse's refusals in this process (gpt2.cli.main, the same code)."""

from __future__ import annotations

import json
import subprocess
import sys


def gpt2(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpt2", *args], capture_output=True, text=True, timeout=120, **kw)


def test_help_lists_the_verbs() -> None:
    r = gpt2("--help")
    assert r.returncode == 0
    for verb in ("model", "tokenizer", "data", "train", "generate", "chat", "eval", "classify", "finetune", "serve"):
        assert verb in r.stdout


def test_model_info_preset_and_json(gpt2_main) -> None:
    r = gpt2("model", "info", "gpt2")
    assert r.returncode == 0, r.stderr
    assert "124,439,808" in r.stdout
    r = gpt2_main("model", "info", "gpt2-xl", "--seq-len", "256", "--json")
    info = json.loads(r.stdout)
    assert info["parameters"] == 1_557_611_200
    assert info["training_flops_per_token"] == 3 * info["forward_flops_per_token"]


def test_model_info_of_a_saved_directory(tmp_path, gpt2_main) -> None:
    from gpt2 import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config.from_preset("tiny", vocab_size=1000)).save_pretrained(tmp_path / "m")
    r = gpt2_main("model", "info", str(tmp_path / "m"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["vocab_size"] == 1000


def test_bad_input_is_one_line_and_exit_2() -> None:
    r = gpt2("model", "info", "gpt5")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: ")
    assert "gpt5" in r.stderr


def test_finetune_needs_an_objective(gpt2_main) -> None:
    r = gpt2_main("finetune")
    assert r.returncode == 2
    assert "classify" in r.stderr
