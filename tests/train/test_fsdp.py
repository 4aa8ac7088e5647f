"""FSDP2 under torchrun on CPU (gloo): the losses of one process (FSDP on two nodes on loopback), gathered
and sharded checkpoints, exact resume after a kill, consolidation."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from train_helpers import REPO, overrides

from gpt2 import GPT2LMHeadModel
from gpt2.train.metrics import read_metrics

pytestmark = pytest.mark.slow

TINY = str(REPO / "configs" / "tiny-test.yaml")
# 4 × 32 tokens per micro-batch: two micro-steps in one process, one per rank in two.
# eval.steps=0: the whole val split, so one and two processes score the same windows.
COMMON = ["train.max_steps=6", "checkpoint.interval=3", "eval.interval=3", "eval.steps=0", "train.micro_batch_size=4",
          "train.global_batch_tokens=256", "sample.interval=3"]

# Rank 0 SIGKILLs itself right after the step-3 checkpoint is published; torchrun then ends rank 1.
KILL_AFTER_SAVE = """
import os, signal, sys
import gpt2.train.checkpointer as checkpointer
import gpt2.train.loop as loop
from gpt2.config import load_config
orig = checkpointer.save_checkpoint
def save_then_die(run_dir, step, **kw):
    path = orig(run_dir, step, **kw)
    if step == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return path
checkpointer.save_checkpoint = save_then_die
loop.train(load_config({recipe!r}, {overrides!r}), progress=False)
"""


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r["kind"] == "train"}


def torchrun(args: list[str], env: dict[str, str], *, nproc: int = 2, extra: list[str] | None = None,
             timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", *(extra or ["--standalone"]), f"--nproc_per_node={nproc}",
           *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)


def gpt2_train(run_dir: Path, corpus: Path, *extra: str) -> list[str]:
    return ["-m", "gpt2", "train", TINY, *overrides(corpus, run_dir, *COMMON, *extra)]


def kill_after_step_3(tmp_path: Path, run_dir: Path, corpus: Path, env: dict[str, str], *extra: str) -> None:
    script = tmp_path / f"kill-{run_dir.name}.py"
    script.write_text(KILL_AFTER_SAVE.format(recipe=TINY, overrides=overrides(corpus, run_dir, *COMMON, *extra)))
    r = torchrun([str(script)], env)
    assert r.returncode != 0 and f"exitcode  : -{int(signal.SIGKILL)}" in r.stderr, r.stderr[-3000:]
    assert (run_dir / "latest").read_text().strip() == "step-000003"
    assert not (run_dir / "step-000006").exists()


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, *, exact: bool) -> None:
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        if exact:
            assert torch.equal(p, q), k
        else:
            torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=k)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes_on_loopback(args: list[str], env: dict[str, str]) -> None:
    """torchrun --nnodes=2 with the c10d rendezvous, both "nodes" on this machine (one process each)."""
    port = _free_port()
    rdzv = ["--nnodes=2", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=gpt2-test"]
    cmd = [sys.executable, "-m", "torch.distributed.run", *rdzv, "--nproc_per_node=1", *args]
    nodes = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
             for _ in range(2)]
    outs = [n.communicate(timeout=600) for n in nodes]
    for n, (_, err) in zip(nodes, outs):
        assert n.returncode == 0, err[-3000:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus, train_cache, shared_data) -> tuple[Path, Path]:
    """One process (this one: no interpreter to start), and FSDP over two processes, uninterrupted, with
    HellaSwag scored at steps 3 and 6. The two FSDP processes are two torchrun "nodes" on loopback: one
    launch is both the 2-process reference and the multi-node test."""
    from gpt2.config import load_config
    from gpt2.train import train

    env = dict(os.environ, GPT2_CACHE=str(train_cache), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    hs = ["eval.hellaswag=" + str(shared_data / "hellaswag_val_sample1000.jsonl"), "eval.hellaswag_limit=6"]
    tmp = tmp_path_factory.mktemp("fsdp-reference")
    one, fsdp = tmp / "one", tmp / "fsdp"
    with pytest.MonkeyPatch.context() as m:  # this run also prepares the cache the FSDP processes read
        m.setenv("GPT2_CACHE", str(train_cache))
        train(load_config(TINY, overrides(corpus, one, *COMMON, *hs)), progress=False)
    two_nodes_on_loopback(gpt2_train(fsdp, corpus, "train.distributed=fsdp", *hs), env)
    return one, fsdp


def test_fsdp_on_two_nodes_matches_one_process_and_its_checkpoint_loads(reference) -> None:
    one, fsdp = reference
    # 1. the losses of one process with the same global batch
    a, b = losses(one), losses(fsdp)
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for s in a:
        assert abs(a[s] - b[s]) <= 1e-5, (s, a[s], b[s])
    start = read_metrics(fsdp)[0]
    assert (start["distributed"], start["world_size"], start["grad_accum"]) == ("fsdp", 2, 1)
    val = {r["step"]: r["val_loss"] for r in read_metrics(fsdp) if r["kind"] == "val"}
    val_one = {r["step"]: r["val_loss"] for r in read_metrics(one) if r["kind"] == "val"}
    assert sorted(val) == [3, 6] and all(abs(val[s] - val_one[s]) <= 1e-5 for s in val)
    samples = [r for r in read_metrics(fsdp) if r["kind"] == "sample"]
    assert [r["step"] for r in samples] == [3, 6] and all(r["samples"] for r in samples)

    # 2. the gathered step-3 checkpoint is a plain HF directory: one process and transformers load it
    ours = GPT2LMHeadModel.from_pretrained(fsdp / "step-000003")
    assert_same_weights(ours, GPT2LMHeadModel.from_pretrained(one / "step-000003"), exact=False)
    hf = transformers.GPT2LMHeadModel.from_pretrained(fsdp / "step-000003")
    ids = torch.randint(0, ours.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours.eval()(ids).logits[..., : ours.config.vocab_size],
                                   atol=1e-4, rtol=1e-4)


def test_fsdp_hellaswag_during_training_matches_one_process(reference) -> None:
    one, fsdp = reference  # rank 0 scores every example on the gathered weights
    a = [r for r in read_metrics(one) if r["kind"] == "hellaswag"]
    b = [r for r in read_metrics(fsdp) if r["kind"] == "hellaswag"]
    assert [r["step"] for r in a] == [r["step"] for r in b] == [3, 6]
    for r1, r2 in zip(a, b):
        assert r1["hellaswag_examples"] == r2["hellaswag_examples"] == 6
        assert (r1["hellaswag_acc"], r1["hellaswag_acc_norm"]) == (r2["hellaswag_acc"], r2["hellaswag_acc_norm"])


def test_resume_from_a_gathered_checkpoint_is_exact(tmp_path, env, reference) -> None:
    """The reference run as a kill after step 3 leaves it (its step-3 checkpoint, `latest` naming it), resumed
    under FSDP: steps 4-6 and the final weights bit for bit. (A real SIGKILL is the sharded test's.)"""
    fsdp = reference[1]
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    shutil.copytree(fsdp / "step-000003", stopped / "step-000003")
    (stopped / "latest").write_text("step-000003\n")
    r = torchrun(["-m", "gpt2", "train", "--resume", str(stopped), f"train.out_dir={stopped}"], env)
    assert r.returncode == 0, r.stderr[-3000:]
    resumed, b = losses(stopped), losses(fsdp)
    assert sorted(resumed) == [4, 5, 6]
    for s in (4, 5, 6):
        assert resumed[s] == b[s], (s, resumed[s], b[s])
    assert_same_weights(GPT2LMHeadModel.from_pretrained(stopped / "step-000006"),
                        GPT2LMHeadModel.from_pretrained(fsdp / "step-000006"), exact=True)


def test_sharded_checkpoint_killed_resumed_and_consolidated(tmp_path, corpus, env, reference, gpt2_main) -> None:
    """Sharded checkpoints (DCP): killed after step 3, resumed from its shards, then consolidated."""
    fsdp = reference[1]
    b = losses(fsdp)
    sharded = tmp_path / "sharded"
    kill_after_step_3(tmp_path, sharded, corpus, env, "train.distributed=fsdp", "checkpoint.sharded=true")
    assert (sharded / "step-000003" / "sharded" / ".metadata").is_file()
    assert not (sharded / "step-000003" / "model.safetensors").exists()
    r = torchrun(["-m", "gpt2", "train", "--resume", str(sharded)], env)
    assert r.returncode == 0, r.stderr[-3000:]
    for s in (4, 5, 6):
        assert losses(sharded)[s] == b[s], s
    r = gpt2_main("generate", str(sharded / "step-000003"), "Hi", env=env)  # not loadable as it is: say how
    assert r.returncode == 2 and "gpt2 checkpoint consolidate" in r.stderr, r.stderr[-2000:]
    out = tmp_path / "consolidated"
    r = gpt2_main("checkpoint", "consolidate", str(sharded / "step-000003"), str(out), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_weights(GPT2LMHeadModel.from_pretrained(out), GPT2LMHeadModel.from_pretrained(fsdp / "step-000003"),
                        exact=True)
    transformers.GPT2LMHeadModel.from_pretrained(out)
    # a gathered checkpoint needs no consolidation: one clear line
    r = gpt2_main("checkpoint", "consolidate", str(fsdp / "step-000003"), str(tmp_path / "x"), env=env)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "not a sharded checkpoint" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
