"""Helpers for the training tests: override lists and subprocess runners."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


# A training process that SIGKILLs itself right after the checkpoint of step {step} is published, as a
# crash or an OOM killer would: format it with step, recipe and overrides and run it with run_python.
KILL_AFTER_SAVE = """
import os, signal
import gpt2.train.checkpointer as checkpointer
import gpt2.train.loop as loop
from gpt2.config import load_config
orig = checkpointer.save_checkpoint
def save_then_die(run_dir, step, **kw):
    path = orig(run_dir, step, **kw)
    if step == {step}:
        os.kill(os.getpid(), signal.SIGKILL)
    return path
checkpointer.save_checkpoint = save_then_die
loop.train(load_config({recipe!r}, {overrides!r}), progress=False)
"""


def overrides(corpus: Path, out: Path, *extra: str) -> list[str]:
    return [f"train.out_dir={out}", f"data.source={corpus}", "data.delimiter=blank", "data.val_fraction=0.1",
            "data.workers=1", "train.threads=1", *extra]


def run_python(code: str, env: dict[str, str], *, check: bool = False, timeout: int = 300) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
    if check and r.returncode != 0:
        raise AssertionError(r.stderr[-3000:])
    return r


def run_cli(args: list[str], env: dict[str, str], *, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpt2", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


def copy_gpt2_vocab(shared_data: Path, cache: Path) -> None:
    dest = cache / "tokenizers" / "gpt2"
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("encoder.json", "vocab.bpe", "gpt2.tiktoken"):
        if not (dest / name).exists():
            shutil.copy(shared_data / "gpt2" / name, dest / name)
