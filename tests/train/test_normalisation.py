"""Loss normalisation: the step's gradient is the sum of per-target losses over the whole global batch
divided by its count, however the batch is split into micro-steps and processes.

Variable-length examples are right-padded (for the language model, padding and a masked prefix are not
targets; for classification, examples carry class weights), so every micro-batch counts a different
number of targets: a mean of per-micro-batch means would weigh them
differently, and the test checks that it would fail here. fp32 throughout, ≤ 1e-6.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import REPO

# One script for every case: build the model and the 16 padded examples from fixed seeds, give this
# process its share of them in `micro` micro-batches, run the trainer's accumulate, save the gradients.
WORKER = r"""
import os, sys, torch
sys.path.insert(0, {tests!r})
from normalisation_cases import build, grads
from gpt2.train.loop import accumulate
task_name, micro, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
world = int(os.environ.get("WORLD_SIZE", "1"))
rank = int(os.environ.get("RANK", "0"))
if world > 1:
    torch.distributed.init_process_group("gloo")
task, model, batch = build(task_name)
wrapped = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
n = batch[0].shape[0] // world
mine = tuple(t[rank * n:(rank + 1) * n] for t in batch)
step = accumulate(task, wrapped, model, [tuple(t.chunk(micro)[i] for t in mine) for i in range(micro)],
                  mode="ddp" if world > 1 else "single", world_size=world, device=torch.device("cpu"))
if rank == 0:
    torch.save({{"grads": grads(model), "loss": step.loss, "count": step.count}}, out)
if world > 1:
    torch.distributed.destroy_process_group()
"""

TASKS = ["lm", "classify"]


def run_case(tmp_path: Path, task: str, micro: int, nproc: int) -> dict:
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent)))
    out = tmp_path / f"{task}-{micro}-{nproc}.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                if nproc > 1 else [sys.executable])
    r = subprocess.run([*launcher, str(script), task, str(micro), str(out)], capture_output=True, text=True,
                       env=env, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    return torch.load(out)


def assert_same(a: dict, b: dict) -> None:
    assert a["count"] == b["count"]
    assert abs(a["loss"] - b["loss"]) <= 1e-6, (a["loss"], b["loss"])
    for k in a["grads"]:
        torch.testing.assert_close(a["grads"][k], b["grads"][k], atol=1e-6, rtol=0, msg=k)


@pytest.mark.parametrize("task", TASKS)
def test_micro_steps_and_processes_give_the_gradient_of_one_batch(tmp_path, task) -> None:
    from normalisation_cases import build, grads

    from gpt2.train.loop import accumulate

    one = run_case(tmp_path, task, micro=1, nproc=1)  # 1 micro-step of 4B
    assert_same(one, run_case(tmp_path, task, micro=4, nproc=1))  # 4 micro-steps of B
    assert_same(one, run_case(tmp_path, task, micro=2, nproc=2))  # 2 processes × 2 micro-steps of B

    # The test can fail: the mean of per-micro-batch means (what the loop did before) is another gradient here.
    t, model, batch = build(task)
    for part in zip(*(x.chunk(4) for x in batch)):
        (t.loss_sum(model, part) / t.count(part) / 4).backward()
    naive = grads(model)
    assert max((naive[k] - one["grads"][k]).abs().max().item() for k in naive) > 1e-4
    # …and the same model through accumulate in this process agrees with the subprocesses
    model.zero_grad(set_to_none=True)
    accumulate(t, model, model, [batch], mode="single", world_size=1, device=torch.device("cpu"))
    assert_same(one, {"grads": grads(model), "loss": one["loss"], "count": t.count(batch)})
