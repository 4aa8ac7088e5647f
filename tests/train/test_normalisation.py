"""Loss normalisation: the step's gradient is the sum of per-target losses over the whole global batch
divided by its count, however the batch is split into micro-steps and processes.

Variable-length examples are right-padded (for the language model, padding and a masked prefix are not
targets; for classification, examples carry class weights, and with finetune.every_token_weight each example's
per-token loss is a mean over its own tokens), so every micro-batch counts a different
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

# One script for every task: build the model and the 16 padded examples from fixed seeds, give this
# process its share of them in 2 micro-batches, run the trainer's accumulate under DDP, save the gradients.
# Both tasks in one torchrun launch (a launch is three interpreters importing torch).
WORKER = r"""
import sys, torch
sys.path.insert(0, {tests!r})
from normalisation_cases import build, grads
from gpt2.train.loop import accumulate
out, micro, tasks = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
torch.distributed.init_process_group("gloo")
world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
results = {{}}
for task_name in tasks:
    task, model, batch = build(task_name)
    wrapped = torch.nn.parallel.DistributedDataParallel(model)
    n = batch[0].shape[0] // world
    mine = tuple(t[rank * n:(rank + 1) * n] for t in batch)
    step = accumulate(task, wrapped, model, [tuple(t.chunk(micro)[i] for t in mine) for i in range(micro)],
                      mode="ddp", world_size=world, device=torch.device("cpu"))
    results[task_name] = {{"grads": grads(model), "loss": step.loss, "count": step.count}}
if rank == 0:
    torch.save(results, out)
torch.distributed.destroy_process_group()
"""

TASKS = ["lm", "classify", "classify-every"]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> dict[str, dict]:
    """task → the gradients of 2 processes × 2 micro-steps of B (DDP under torchrun), every task at once."""
    tmp = tmp_path_factory.mktemp("normalisation")
    script = tmp / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent)))
    out = tmp / "ddp.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(script), str(out), "2", *TASKS], capture_output=True, text=True, env=env, timeout=300,
                       cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    return torch.load(out)


def run_here(task: str, micro: int) -> dict:
    """What the worker script does in one process (world size 1), in this one: no interpreter to start."""
    from normalisation_cases import build, grads

    from gpt2.train.loop import accumulate

    t, model, batch = build(task)
    step = accumulate(t, model, model, [tuple(x.chunk(micro)[i] for x in batch) for i in range(micro)],
                      mode="single", world_size=1, device=torch.device("cpu"))
    return {"grads": grads(model), "loss": step.loss, "count": step.count}


def assert_same(a: dict, b: dict) -> None:
    assert a["count"] == b["count"]
    assert abs(a["loss"] - b["loss"]) <= 1e-6, (a["loss"], b["loss"])
    for k in a["grads"]:
        torch.testing.assert_close(a["grads"][k], b["grads"][k], atol=1e-6, rtol=0, msg=k)


@pytest.mark.parametrize("task", TASKS)
def test_micro_steps_and_processes_give_the_gradient_of_one_batch(task, two_processes) -> None:
    from normalisation_cases import build, grads

    one = run_here(task, micro=1)  # 1 micro-step of 4B
    assert_same(one, run_here(task, micro=4))  # 4 micro-steps of B
    assert_same(one, two_processes[task])  # 2 processes × 2 micro-steps of B

    # The test can fail: the mean of per-micro-batch means (what the loop did before) is another gradient here.
    t, model, batch = build(task)
    for part in zip(*(x.chunk(4) for x in batch)):
        (t.loss_sum(model, part) / t.count(part) / 4).backward()
    naive = grads(model)
    assert max((naive[k] - one["grads"][k]).abs().max().item() for k in naive) > 1e-4
