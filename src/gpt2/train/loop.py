"""The trainer: one loop for pretraining and every fine-tune, single process or under torchrun.

    gpt2 train                                         # the default recipe, configs/shakespeare-cpu.yaml
    gpt2 train configs/shakespeare-cpu.yaml train.max_steps=50
    torchrun --nproc_per_node=2 -m gpt2 train configs/shakespeare-cpu.yaml
    gpt2 train --resume runs/shakespeare-cpu           # continue exactly where it stopped

`run(cfg, task)` trains any task (task.py: what a batch is, what its loss is, how it is evaluated);
`train(cfg)` is pretraining, the language-model task. A step reads its micro-batches first and counts
their targets over every micro-step and rank, so the optimizer sees the sum of the per-target losses
divided by that global count (`accumulate`): padding, masks and uneven batches never change how much
a target weighs. Each micro-batch then runs forward under autocast and backward (DDP syncs gradients
only on the last micro-step: `require_backward_grad_sync` is set before that forward, the fix of
build-nanogpt PR #30); then the guards (a non-finite loss or gradient norm, or a loss spike far outside
its running statistics, skips the update, as llm.c does), clipping, the learning rate of the schedule,
and the optimizer (AdamW, or Muon with AdamW: optim.py). Throughput is timed per step, outside
evaluation, sampling and checkpointing.
Everything needed to continue bit for bit (model, optimizer, schedule, data position, the RNG states of
every rank, the guard's statistics, the best checkpoint so far) goes into each checkpoint; see
checkpointer.py (a state dict per component) and checkpoint.py (the files).
"""

from __future__ import annotations

import contextlib
import math
import platform
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gpt2.common import (
    cache_dir,
    destroy_distributed,
    init_distributed,
    keep_freed_memory,
    pick_device,
    resolve_checkpoint,
    resolve_dtype,
    seed_everything,
)
from gpt2.config import RunConfig, to_yaml
from gpt2.model.info import flops_per_token
from gpt2.train import distributed as dist_utils
from gpt2.train.checkpoint import checkpoint_name, clean_stale, load_trainer_state
from gpt2.train.checkpointer import Checkpointer, LoopClock, RNGState
from gpt2.train.evaluators import EvalContext, Evaluator, sample_text
from gpt2.train.metrics import MetricsLogger, peak_flops
from gpt2.train.optim import LRSchedule, build_optimizer, describe, set_lr
from gpt2.train.task import Batch, LanguageModelTask, Task

__all__ = ["SpikeGuard", "TrainResult", "TrainingStopped", "accumulate", "run", "sample_text", "train"]


class TrainingStopped(RuntimeError):
    """The run stopped itself for a reason the user must see (e.g. too many skipped updates)."""


@dataclass
class TrainResult:
    """What a finished (or interrupted) run leaves behind."""

    run_dir: Path
    step: int
    tokens: int
    last_checkpoint: Path | None
    losses: list[float] = field(default_factory=list)  # the train loss of every step this process ran
    val_loss: float | None = None
    val_bpb: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # the final evaluation, as the task reports it
    best_checkpoint: Path | None = None
    samples: list[str] = field(default_factory=list)
    interrupted: bool = False
    skipped: int = 0


# ------------------------------------------------------------------------------------------ helpers
def _git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class _StopSignal:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint at the end of the step and exits cleanly."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class SpikeGuard:
    """Decides whether to skip an update: non-finite loss/grad norm, or a loss spike (mean + k·std of recent steps)."""

    def __init__(self, *, factor: float, window: int = 50, min_history: int = 20) -> None:
        self.factor, self.min_history = factor, min_history
        self.history: deque[float] = deque(maxlen=window)
        self.in_row = 0

    def check(self, loss: float, grad_norm: float) -> str | None:
        """A reason to skip, or None to apply the update."""
        if not math.isfinite(loss):
            return f"non-finite loss ({loss})"
        if not math.isfinite(grad_norm):
            return f"non-finite gradient norm ({grad_norm})"
        if self.factor > 0 and len(self.history) >= self.min_history:
            mean = sum(self.history) / len(self.history)
            std = math.sqrt(sum((x - mean) ** 2 for x in self.history) / len(self.history))
            if loss > mean + self.factor * max(std, 1e-3):
                return f"loss spike ({loss:.4f} > running mean {mean:.4f} + {self.factor:g}·std {std:.4f})"
        return None

    def record(self, loss: float, skipped: bool) -> None:
        self.in_row = self.in_row + 1 if skipped else 0
        if not skipped:
            self.history.append(loss)

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "in_row": self.in_row}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history.clear()
        self.history.extend(state["history"])
        self.in_row = state["in_row"]


# ------------------------------------------------------------------------------------- the step's loss
@dataclass
class StepLoss:
    loss: float  # the global batch's loss: sum of per-target losses / their global count
    count: float  # counted targets in the global batch (tokens, examples or class weights)
    tokens: int  # forward tokens of the global batch (throughput)


def accumulate(task: Task, wrapped: torch.nn.Module, model: torch.nn.Module, batches: list[Batch], *,
               mode: str, world_size: int, device: torch.device, autocast: Any = None,
               scaler: torch.amp.GradScaler | None = None) -> StepLoss:
    """Forward and backward over one step's micro-batches (this rank's); gradients = d(global loss)/dθ.

    The count of every micro-batch of every rank is known before the first forward (the batches are
    read first and the counts all-reduced), so each backward runs on loss_sum × world_size / count:
    DDP and FSDP average the gradients over the ranks, which brings the factor back to 1 / count.
    """
    local = torch.tensor([sum(task.count(b) for b in batches), sum(task.tokens(b) for b in batches)],
                         dtype=torch.float64, device=device)
    if world_size > 1:
        torch.distributed.all_reduce(local)
    count, tokens = local.tolist()
    scale = world_size / max(count, 1e-12)
    total = torch.zeros((), device=device, dtype=torch.float32)
    autocast = autocast if autocast is not None else contextlib.nullcontext()
    for micro, batch in enumerate(batches):
        batch = tuple(t.to(device, non_blocking=True) for t in batch)
        dist_utils.set_grad_sync(wrapped, model, mode=mode, sync=micro == len(batches) - 1)  # type: ignore[arg-type]
        with autocast:
            loss_sum = task.loss_sum(wrapped, batch)
        scaled = loss_sum * scale
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        total += loss_sum.detach().float()
    if world_size > 1:
        torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
    return StepLoss(loss=total.item() / max(count, 1e-12), count=count, tokens=int(tokens))


# ------------------------------------------------------------------------------------------ entry points
def train(cfg: RunConfig, *, resume: str | Path | None = None, progress: bool | None = None) -> TrainResult:
    """Pretraining (or continued pretraining) as `cfg` says: the language-model task through the trainer.
    Resumes from a run or checkpoint directory when given (or cfg.checkpoint.resume)."""
    return run(cfg, LanguageModelTask(cfg), resume=resume, progress=progress)


def run(cfg: RunConfig, task: Task, *, resume: str | Path | None = None, progress: bool | None = None) -> TrainResult:
    """Train `task` as `cfg` says (gpt2 train, gpt2 finetune …); see the module docstring."""
    return Trainer(cfg, task, resume=resume, progress=progress).fit()


# ----------------------------------------------------------------------------------------- the trainer
class Trainer:
    """Sets a run up (__init__), then `fit` runs its steps, evaluations and checkpoints."""

    def __init__(self, cfg: RunConfig, task: Task, *, resume: str | Path | None, progress: bool | None) -> None:
        self.cfg, self.task = cfg, task
        self.t_start = time.time()
        device = pick_device(cfg.train.device)
        self.rank, self.local_rank, self.world_size, self.device = init_distributed(device)
        self.master = self.rank == 0
        self.progress = self.master and (sys.stderr.isatty() if progress is None else progress)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if self.device.type == "cpu":
            keep_freed_memory()  # steps reuse memory instead of page-faulting fresh blocks (gpt2.common)
        self.dtype, self.dtype_reason = resolve_dtype(cfg.train.dtype, self.device)
        self.mode: dist_utils.Mode = "single" if self.world_size == 1 else cfg.train.distributed  # type: ignore[assignment]
        self.run_dir = Path(cfg.train.out_dir)

        # Batch geometry: a step = micro-batch × processes × accumulation.
        self.geometry = task.geometry(self.world_size)
        self.grad_accum = self.geometry.per_step // (self.geometry.per_micro * self.world_size)

        # Resolve a checkpoint to continue from before anything is built.
        resume = resume or cfg.checkpoint.resume
        self.ckpt = resolve_checkpoint(resume) if resume else None
        self.state = load_trainer_state(self.ckpt) if self.ckpt else None
        sharded_resume = self.ckpt is not None and dist_utils.is_sharded(self.ckpt)

        self._prepare_in_turns()
        task.ready(master=self.master)

        # Model (same init on every rank), then per-rank RNG for dropout.
        seed_everything(cfg.train.seed)
        # a sharded checkpoint is read after wrapping, below
        self.model = task.build_model(self.ckpt if not sharded_resume else None)
        self.model.to(self.device).train()
        seed_everything(cfg.train.seed + self.rank)

        self.train_loader = task.train_loader(rank=self.rank, world_size=self.world_size)
        self.evaluators = task.evaluators(rank=self.rank, world_size=self.world_size)
        if not self.evaluators or self.evaluators[0].kind != "val":
            raise TypeError(f"{type(task).__name__}.evaluators() must list its validation (kind 'val') first")
        # The optimizer is built on the wrapped model: FSDP2 replaces every parameter with a sharded one.
        self.wrapped = dist_utils.wrap_model(self.model, mode=self.mode, device=self.device, compile=cfg.train.compile)
        self.optimizer = build_optimizer(self.model, cfg.optim, device=self.device)
        self.schedule = LRSchedule(cfg.optim, max_steps=cfg.train.max_steps)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)
        self.guard = SpikeGuard(factor=cfg.train.spike_factor)
        self.clock = LoopClock()
        components = {"schedule": self.schedule, "train_loader": self.train_loader, "guard": self.guard,
                      "scaler": self.scaler, "rng": RNGState(self.rank, self.world_size)}
        self.checkpointer = Checkpointer(cfg, task, components=components, run_dir=self.run_dir, mode=self.mode,
                                         rank=self.rank, world_size=self.world_size, grad_accum=self.grad_accum)
        self.step, self.tokens_seen = 0, 0
        self.best: dict[str, Any] | None = None  # {"value", "step", "checkpoint"} of the best evaluation so far
        if self.state is not None:
            assert self.ckpt is not None
            self.checkpointer.restore(self.state, self.ckpt, self.model, self.optimizer, sharded=sharded_resume)
            self.load_state_dict(self.state)
        # train.max_minutes budgets the loop itself (evaluations included, setup and the final evaluation
        # not); the time already spent before a resume counts (LoopClock), so a resumed run keeps its schedule.
        self.budget = 60 * cfg.train.max_minutes if cfg.train.max_minutes else None
        self.bar: Any = None
        self.timed_steps, self.timed_seconds, self.timed_tokens = 0, 0.0, 0
        self.last_val: float | None = None
        self.said_stale_peak = False
        self.autocast = (torch.autocast(self.device.type, dtype=self.dtype) if self.dtype != torch.float32
                         else contextlib.nullcontext())
        # training FLOPs per forward token (MFU): every task trains a GPT-2 body at train.seq_len
        self.flops_per_token = flops_per_token(self.model.config, cfg.train.seq_len, training=True)
        self.peak = peak_flops(self.device, self.dtype) if self.master else None
        self.logger = MetricsLogger(self.run_dir, enabled=self.master)
        self.result = TrainResult(run_dir=self.run_dir, step=self.step, tokens=self.tokens_seen,
                                  last_checkpoint=self.ckpt)
        if self.master:
            self._announce()

    # ----------------------------------------------------------------------------------- set-up
    def _prepare_in_turns(self) -> None:
        """Rank 0 prepares the task's data first (tokenizer, shards); then the first process of every other
        node (whose cache may be its own disk), then everyone else reads the cache. Preparation is
        deterministic, so a node that builds its own copy gets the same tokenizer and the same data."""
        for turn in ("rank0", "node", "rest"):
            mine = {"rank0": self.master, "node": self.local_rank == 0 and not self.master,
                    "rest": self.local_rank != 0}[turn]
            if mine:
                self.task.prepare(progress=self.progress)
            if self.world_size > 1:
                torch.distributed.barrier()

    def state_dict(self) -> dict[str, Any]:
        """The trainer's own progress, for a checkpoint (its components' states are the Checkpointer's)."""
        return {"step": self.step, "tokens": self.tokens_seen, "best": self.best, "loop_seconds": self.clock.seconds()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.tokens_seen = state["step"], state["tokens"]
        self.best = state.get("best")
        self.clock.load(state.get("loop_seconds", 0.0))

    def _announce(self) -> None:
        cfg, g, model = self.cfg, self.geometry, self.model
        # a tied matrix counts once (parameters() yields it once); frozen parameters do not train
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        self.run_dir.mkdir(parents=True, exist_ok=True)
        clean_stale(self.run_dir)
        (self.run_dir / "run.yaml").write_text(to_yaml(cfg), encoding="utf-8")
        dtype = str(self.dtype).removeprefix("torch.")
        self.logger.log({
            "kind": "start", "time": self.t_start, "resumed_from": str(self.ckpt) if self.ckpt else None,
            "step": self.step, "task": self.task.name,
            "git_commit": _git_commit(), "torch": torch.__version__, "python": platform.python_version(),
            "device": str(self.device), "dtype": dtype, "dtype_reason": self.dtype_reason,
            "distributed": self.mode, "world_size": self.world_size,
            "grad_accum": self.grad_accum, "global_batch_tokens" if g.unit == "tokens" else f"global_batch_{g.unit}":
            g.per_step, "parameters": model.num_parameters(), "trainable_parameters": trainable,
            **self.task.start_record(),
            "optimizer": describe(self.optimizer),
        })
        micro = (f"{cfg.train.micro_batch_size}×{cfg.train.seq_len}" if g.unit == "tokens"
                 else f"{g.per_micro}")
        print(f"dtype: {self.dtype_reason}", file=sys.stderr)
        if trainable < total:
            print(f"trainable: {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%)", file=sys.stderr)
        print(f"run {self.run_dir} | {model.num_parameters():,} parameters | {self.device} {dtype} | "
              f"{self.world_size} process(es) × {self.grad_accum} micro-step(s) × {micro} = {g.per_step:,} {g.unit}/step | "
              f"{cfg.train.max_steps} steps" + (f" | resumed at step {self.step}" if self.step else ""), file=sys.stderr)
        print(f"optimizer: {describe(self.optimizer)}", file=sys.stderr)

    # ------------------------------------------------------------------------------ evaluations
    def _context(self) -> EvalContext:
        return EvalContext(model=self.model, mode=self.mode, rank=self.rank, world_size=self.world_size,
                           device=self.device, autocast=self.autocast, step=self.step, run_dir=self.run_dir)

    def _measure(self, evaluator: Evaluator) -> dict[str, Any] | None:
        """Run one evaluator on the model in eval mode and log its record (rank 0)."""
        self.model.eval()
        metrics = evaluator(self._context())
        dist_utils.reshard_after_eval(self.model, mode=self.mode)
        self.model.train()
        if self.master and metrics is not None:
            self.logger.log({"kind": evaluator.kind, "step": self.step, "tokens": self.tokens_seen, **metrics})
            if evaluator.kind == "val":
                self.logger.plot()
        return metrics

    def evaluate(self) -> dict[str, Any]:
        """The validation evaluator's metrics (the same on every rank)."""
        metrics = self._measure(self.evaluators[0])
        assert metrics is not None, "a validation evaluator reports on every rank"
        return metrics

    def _improves(self, metrics: dict[str, Any]) -> bool:
        """Whether this evaluation beats the best so far on the task's best_metric (same answer on every rank:
        the metrics are all-reduced)."""
        if self.task.best_metric is None:
            return False
        name, direction = self.task.best_metric
        value = metrics[name]
        if self.best is not None and not (value > self.best["value"] if direction == "max" else value < self.best["value"]):
            return False
        self.best = {"metric": name, "value": value, "step": self.step, "checkpoint": checkpoint_name(self.step)}
        return True

    def _evaluate_others(self, *, final: str | None = None) -> list[dict[str, Any]]:
        """The evaluators after the validation: those due at this step, or at the end (`final`: "hellaswag"
        runs before the last checkpoint, "sample" after it). Returns what they reported."""
        out = []
        for ev in self.evaluators[1:]:
            due = ev.kind == final if final else bool(ev.interval) and self.step % ev.interval == 0
            if due and (m := self._measure(ev)) is not None:
                out.append(m)
        return out

    def checkpoint(self) -> Path | None:
        path = self.checkpointer.save(self.step, self.model, self.optimizer, progress=self.state_dict())
        if self.master:
            self.result.last_checkpoint = path
        return path

    # -------------------------------------------------------------------------------------- steps
    def train_step(self, lr: float) -> tuple[float, float, str | None, int]:
        """One optimizer step: (loss, gradient norm, why the update was skipped or None, tokens)."""
        set_lr(self.optimizer, lr)
        batches = [self.train_loader.next_batch() for _ in range(self.grad_accum)]
        step_loss = accumulate(self.task, self.wrapped, self.model, batches, mode=self.mode,
                               world_size=self.world_size, device=self.device, autocast=self.autocast,
                               scaler=self.scaler)
        self.step_extra = self.task.step_metrics(world_size=self.world_size)
        self.scaler.unscale_(self.optimizer)
        # With no clipping, an infinite threshold measures the norm and scales by exactly 1. Under FSDP
        # the gradients are sharded DTensors and the norm comes back as one.
        max_norm = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else math.inf
        grad_norm = dist_utils.scalar(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        reason = self.guard.check(step_loss.loss, grad_norm)
        if reason is None:
            self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.guard.record(step_loss.loss, reason is not None)
        return step_loss.loss, grad_norm, reason, step_loss.tokens

    def _time_fraction(self) -> float | None:
        if self.budget is None:
            return None
        fraction = self.clock.seconds() / self.budget
        if self.world_size > 1:  # every rank must use the same rate: take rank 0's clock
            tf = torch.tensor([fraction], dtype=torch.float64, device=self.device)
            torch.distributed.broadcast(tf, 0)
            fraction = tf.item()
        return fraction

    def _out_of_time(self) -> bool:
        out = self.budget is not None and self.clock.seconds() >= self.budget
        if self.world_size > 1 and self.budget is not None:  # stop together
            flag = torch.tensor([float(out)], device=self.device)
            torch.distributed.broadcast(flag, 0)
            out = bool(flag.item())
        return out

    def _log_step(self, loss: float, lr: float, grad_norm: float) -> None:
        cfg = self.cfg
        tok_s = self.timed_tokens / self.timed_seconds if self.timed_seconds else float("nan")
        mfu = (self.flops_per_token * self.timed_tokens / self.timed_seconds / self.peak
               if (self.timed_seconds and self.peak) else None)
        if mfu is not None and mfu > 1.0:
            # A step cannot beat the matmul peak: the cached one was measured while the machine was busy.
            if not self.said_stale_peak:
                print(f"note: the cached matmul peak ({self.peak / 1e9:.0f} GFLOP/s) is below what training "
                      f"achieves, so MFU is not shown: it was measured on a busy machine; delete "
                      f"{cache_dir() / 'cpu_peak_flops.json'} to measure it again", file=sys.stderr)
                self.said_stale_peak = True
            mfu = None
        self.logger.log({"kind": "train", "step": self.step, "tokens": self.tokens_seen, "loss": loss, "lr": lr,
                         "grad_norm": grad_norm, "tok_per_s": tok_s, "mfu": mfu, "time": time.time() - self.t_start,
                         **self.step_extra})
        eta = (cfg.train.max_steps - self.step) * self.timed_seconds / max(self.timed_steps, 1)
        if self.budget is not None:  # a time-budgeted run ends when its budget does, if that comes first
            eta = min(eta, max(self.budget - self.clock.seconds(), 0.0))
        line = dict(loss=f"{loss:.4f}", val=f"{self.last_val:.4f}" if self.last_val else "-",
                    tok_s=f"{tok_s:,.0f}", mfu=f"{100 * mfu:.0f}%" if mfu else "-", eta=f"{eta:,.0f}s")
        if self.bar is not None:
            self.bar.set_postfix(line, refresh=False)
        else:
            print(f"step {self.step}/{cfg.train.max_steps} " + " ".join(f"{k} {v}" for k, v in line.items()),
                  file=sys.stderr)

    def _periodic(self, stopping: bool) -> None:
        """Evaluation, HellaSwag, samples and checkpoints that fall on this step (the last step has its own)."""
        cfg, step = self.cfg, self.step
        if step == cfg.train.max_steps or stopping:
            return
        new_best = False
        every = self.evaluators[0].interval
        if every and step % every == 0:
            metrics = self.evaluate()
            self.last_val = metrics["val_loss"]
            new_best = self._improves(metrics)
        self._evaluate_others()
        if (cfg.checkpoint.interval and step % cfg.checkpoint.interval == 0) or new_best:
            self.checkpoint()

    def fit(self) -> TrainResult:
        cfg, result = self.cfg, self.result
        if self.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=cfg.train.max_steps, initial=self.step, unit="step", dynamic_ncols=True,
                            file=sys.stderr)
        self.clock.start()
        with _StopSignal() as stop:
            while self.step < cfg.train.max_steps:
                t0 = time.perf_counter()
                lr = self.schedule(self.step, time_fraction=self._time_fraction())
                loss, grad_norm, reason, tokens = self.train_step(lr)
                if reason is not None:
                    result.skipped += 1
                    if self.master:
                        print(f"step {self.step + 1}: skipped the update: {reason}", file=sys.stderr)
                        self.logger.log({"kind": "skip", "step": self.step + 1, "reason": reason})
                if self.guard.in_row >= cfg.train.max_skipped_in_row:
                    raise TrainingStopped(
                        f"stopped at step {self.step + 1}: {self.guard.in_row} updates in a row were skipped (last: "
                        f"{reason}); lower optim.lr, raise optim.warmup_steps or check the data, then resume from "
                        "the last checkpoint"
                    )
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                self.step += 1
                self.tokens_seen += tokens
                result.losses.append(loss)
                if self.step > 1 or self.state is not None:  # the first step pays for allocation and compilation
                    self.timed_steps += 1
                    self.timed_seconds += dt
                    self.timed_tokens += tokens
                if self.master and (self.step % cfg.train.log_interval == 0 or self.step == cfg.train.max_steps):
                    self._log_step(loss, lr, grad_norm)
                if self.bar is not None:
                    self.bar.update(1)

                stopping = stop.received is not None or self._out_of_time()
                self._periodic(stopping)
                if stopping:
                    why = f"signal {signal.Signals(stop.received).name}" if stop.received else "train.max_minutes reached"
                    if self.master:
                        print(f"\n{why}: saving a checkpoint at step {self.step}", file=sys.stderr)
                    result.interrupted = stop.received is not None
                    break
        return self._finish()

    def _finish(self) -> TrainResult:
        result = self.result
        if self.bar is not None:
            self.bar.close()
        result.step, result.tokens = self.step, self.tokens_seen
        metrics = self.evaluate()
        result.metrics = metrics
        result.val_loss, result.val_bpb = metrics["val_loss"], metrics.get("val_bpb")
        self._improves(metrics)
        self._evaluate_others(final="hellaswag")
        self.checkpoint()
        if not result.interrupted:  # samples last, and not when stopping: a Ctrl-C exits at once
            result.samples = [t for m in self._evaluate_others(final="sample") for t in m["samples"]]
        if self.master:
            end = {"kind": "end", "step": self.step, "tokens": self.tokens_seen,
                   "seconds": time.time() - self.t_start, "val_loss": result.val_loss, "val_bpb": result.val_bpb,
                   "skipped": result.skipped}
            if self.best is not None:
                end["best"] = self.best
                result.best_checkpoint = self.run_dir / self.best["checkpoint"]
            self.logger.log(end)
        self.logger.close()
        destroy_distributed()
        return result
