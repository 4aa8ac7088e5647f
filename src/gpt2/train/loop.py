"""The training loop: one loop for pretraining and fine-tuning, single process or under torchrun.

    gpt2 train                                         # the default recipe, configs/shakespeare-cpu.yaml
    gpt2 train configs/shakespeare-cpu.yaml train.max_steps=50
    torchrun --nproc_per_node=2 -m gpt2 train configs/shakespeare-cpu.yaml
    gpt2 train --resume runs/shakespeare-cpu           # continue exactly where it stopped

A step: for each micro-batch, forward under autocast with the fused LM-head loss, backward (DDP syncs
gradients only on the last micro-step: `require_backward_grad_sync` is set before that forward, the fix
of build-nanogpt PR #30); then the guards (a non-finite loss or gradient norm, or a loss spike far
outside its running statistics, skips the update, as llm.c does), clipping, the learning rate of the
schedule, and the optimizer (AdamW, or Muon with AdamW: optim.py). Throughput is timed per step,
outside evaluation, sampling and checkpointing.
Everything needed to continue bit for bit (model, optimizer, schedule, data position, the RNG states of
every rank, the guard's statistics) goes into each checkpoint; see checkpoint.py.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import random
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpt2.common import (
    destroy_distributed,
    init_distributed,
    keep_freed_memory,
    pick_device,
    resolve_dtype,
    seed_everything,
)
from gpt2.config import RunConfig, to_yaml
from gpt2.errors import UserError
from gpt2.model.gpt2 import GPT2LMHeadModel
from gpt2.model.info import flops_per_token
from gpt2.train import distributed as dist_utils
from gpt2.train.checkpoint import (
    checkpoint_name,
    clean_stale,
    load_trainer_state,
    resolve_checkpoint,
    save_checkpoint,
)
from gpt2.train.metrics import MetricsLogger, peak_flops
from gpt2.train.optim import LRSchedule, build_optimizer, describe, set_lr


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
    samples: list[str] = field(default_factory=list)
    interrupted: bool = False
    skipped: int = 0


# ------------------------------------------------------------------------------------------ helpers
def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


# --------------------------------------------------------------------------------------------- train
def train(cfg: RunConfig, *, resume: str | Path | None = None, progress: bool | None = None) -> TrainResult:
    """Run training as `cfg` says; resume from a run or checkpoint directory when given (or cfg.checkpoint.resume)."""
    from gpt2.data.loader import TokenLoader
    from gpt2.train.setup import build_model, bytes_per_token, ensure_shards, ensure_tokenizer

    t_start = time.time()
    device = pick_device(cfg.train.device)
    rank, local_rank, world_size, device = init_distributed(device)
    master = rank == 0
    progress = master and (sys.stderr.isatty() if progress is None else progress)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if device.type == "cpu":
        keep_freed_memory()  # steps reuse memory instead of page-faulting fresh blocks (gpt2.common)
    dtype, dtype_reason = resolve_dtype(cfg.train.dtype, device)
    mode: dist_utils.Mode = "single" if world_size == 1 else cfg.train.distributed  # type: ignore[assignment]
    run_dir = Path(cfg.train.out_dir)

    # Batch geometry: global batch = micro_batch × seq_len × world_size × grad_accum.
    T, B = cfg.train.seq_len, cfg.train.micro_batch_size
    per_micro = B * T * world_size
    global_tokens = cfg.train.global_batch_tokens or per_micro
    if global_tokens % per_micro != 0:
        raise UserError(
            f"train.global_batch_tokens={global_tokens} is not a multiple of micro_batch_size × seq_len × "
            f"processes = {B} × {T} × {world_size} = {per_micro}; pick a multiple, e.g. {per_micro * max(1, round(global_tokens / per_micro))}"
        )
    grad_accum = global_tokens // per_micro

    # Resolve a checkpoint to continue from before anything is built.
    resume = resume or cfg.checkpoint.resume
    ckpt = resolve_checkpoint(resume) if resume else None
    state = load_trainer_state(ckpt) if ckpt else None
    sharded_resume = ckpt is not None and dist_utils.is_sharded(ckpt)

    # Data: rank 0 trains the tokenizer and prepares the shards first; then the first process of every
    # other node (whose cache may be its own disk), then everyone else reads the cache. Both steps are
    # deterministic, so a node that builds its own copy gets the same tokenizer and the same shards.
    for turn in ("rank0", "node", "rest"):
        mine = {"rank0": master, "node": local_rank == 0 and not master, "rest": local_rank != 0}[turn]
        if mine:
            tokenizer = ensure_tokenizer(cfg.data, progress=progress)
            shard_dir = ensure_shards(cfg.data, tokenizer, progress=progress)
        if world_size > 1:
            torch.distributed.barrier()
    val_bytes_per_token = bytes_per_token(shard_dir, tokenizer) if master else None


    # Model (same init on every rank), then per-rank RNG for dropout.
    seed_everything(cfg.train.seed)
    model = build_model(cfg.model, cfg.train, vocab_size=tokenizer.n_vocab, eot=tokenizer.eot_token)
    if ckpt is not None and not sharded_resume:  # a sharded checkpoint is read after wrapping, below
        model = GPT2LMHeadModel.from_pretrained(
            ckpt, resid_pdrop=cfg.model.dropout, embd_pdrop=cfg.model.dropout, attn_pdrop=cfg.model.dropout,
            pad_vocab_size_multiple=model.config.pad_vocab_size_multiple,
        )
    model.to(device).train()
    seed_everything(cfg.train.seed + rank)

    train_loader = TokenLoader(shard_dir, split="train", batch_size=B, seq_len=T, rank=rank, world_size=world_size,
                               shuffle=True, seed=cfg.train.seed)
    val_loader = TokenLoader(shard_dir, split="val", batch_size=B, seq_len=T, rank=rank, world_size=world_size,
                             shuffle=False, drop_last=False)
    # The optimizer is built on the wrapped model: FSDP2 replaces every parameter with a sharded one.
    wrapped = dist_utils.wrap_model(model, mode=mode, device=device, compile=cfg.train.compile)
    optimizer = build_optimizer(model, cfg.optim, device=device)
    schedule = LRSchedule(cfg.optim, max_steps=cfg.train.max_steps)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    guard = SpikeGuard(factor=cfg.train.spike_factor)
    if cfg.checkpoint.sharded and mode != "fsdp":
        raise UserError("checkpoint.sharded=true needs train.distributed=fsdp under torchrun; without FSDP every "
                        "checkpoint is one HF directory already")

    step, tokens_seen = 0, 0
    if state is not None:
        assert ckpt is not None
        dist_utils.check_layout(state, world_size=world_size, grad_accum=grad_accum, mode=mode, checkpoint=ckpt)
        if state.get("optim_name", "adamw") != cfg.optim.name:
            raise UserError(f"{ckpt} was trained with optim.name={state.get('optim_name', 'adamw')}; resume with "
                            f"that optimizer, or start a new run from its weights with model.init_from={ckpt}")
        if sharded_resume:
            dist_utils.load_sharded(ckpt, model, optimizer)
        else:
            dist_utils.load_full_optimizer_state(model, optimizer, state["optimizer"], mode=mode)
        schedule.load_state_dict(state["schedule"])
        train_loader.load_state_dict(state["train_loader"])
        guard.load_state_dict(state["guard"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"][rank])
        step, tokens_seen = state["step"], state["tokens"]

    autocast = (
        torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    )
    flops_step = flops_per_token(model.config, T, training=True) * global_tokens
    peak = peak_flops(device, dtype) if master else None
    logger = MetricsLogger(run_dir, enabled=master)
    if master:
        run_dir.mkdir(parents=True, exist_ok=True)
        clean_stale(run_dir)
        (run_dir / "run.yaml").write_text(to_yaml(cfg), encoding="utf-8")
        logger.log({
            "kind": "start", "time": t_start, "resumed_from": str(ckpt) if ckpt else None, "step": step,
            "git_commit": _git_commit(), "torch": torch.__version__, "python": platform.python_version(),
            "device": str(device), "dtype": str(dtype).removeprefix("torch."), "dtype_reason": dtype_reason,
            "distributed": mode, "world_size": world_size,
            "grad_accum": grad_accum, "global_batch_tokens": global_tokens,
            "parameters": model.num_parameters(), "tokenizer": repr(tokenizer), "shards": str(shard_dir),
            "optimizer": describe(optimizer),
        })
        print(f"dtype: {dtype_reason}", file=sys.stderr)
        print(f"run {run_dir} | {model.num_parameters():,} parameters | {device} "
              f"{str(dtype).removeprefix('torch.')} | "
              f"{world_size} process(es) × {grad_accum} micro-step(s) × {B}×{T} = {global_tokens:,} tokens/step | "
              f"{cfg.train.max_steps} steps" + (f" | resumed at step {step}" if step else ""), file=sys.stderr)
        print(f"optimizer: {describe(optimizer)}", file=sys.stderr)

    result = TrainResult(run_dir=run_dir, step=step, tokens=tokens_seen, last_checkpoint=ckpt)

    def evaluate() -> tuple[float, float | None]:
        model.eval()
        val_loader.reset()
        total, count = torch.zeros((), device=device, dtype=torch.float64), torch.zeros((), device=device,
                                                                                        dtype=torch.float64)
        limit = cfg.eval.steps or len(val_loader)
        with torch.no_grad(), autocast:
            for _ in range(min(limit, len(val_loader))):
                x, y = val_loader.next_batch()
                if x.shape[0] == 0 and mode != "fsdp":  # FSDP: every rank runs every forward (all-gathers)
                    continue
                x, y = x.to(device), y.to(device)
                loss = model(x, targets=y, return_logits=False).loss
                total += loss.double() * y.numel()
                count += y.numel()
        if world_size > 1:
            torch.distributed.all_reduce(total)
            torch.distributed.all_reduce(count)
        dist_utils.reshard_after_eval(model, mode=mode)
        model.train()
        val = (total / count.clamp(min=1)).item()
        bpb = val / math.log(2) / val_bytes_per_token if val_bytes_per_token else None
        return val, bpb

    # HellaSwag examples are read (and checked) before the first step, so a bad file fails at once.
    hellaswag_examples = None
    if cfg.eval.hellaswag:
        from gpt2.eval.hellaswag import evaluate_hellaswag, load_examples

        hellaswag_examples = load_examples(cfg.eval.hellaswag, limit=cfg.eval.hellaswag_limit or None)

    def hellaswag() -> None:
        if hellaswag_examples is None:
            return
        # DDP: each rank scores its share of the examples and the counts are summed. FSDP: rank 0 scores
        # them all on the gathered weights (the scorer runs the body and the head separately, and ranks
        # scoring different shares would make different numbers of FSDP forwards).
        scorer = dist_utils.plain_model(model, mode=mode, rank=rank, device=device) if mode == "fsdp" else model
        if scorer is None:
            return
        share = (0, 1) if mode == "fsdp" else (rank, world_size)
        with autocast:
            hs = evaluate_hellaswag(scorer, tokenizer, hellaswag_examples, rank=share[0], world_size=share[1])
        if master:
            logger.log({"kind": "hellaswag", "step": step, "tokens": tokens_seen, "hellaswag_acc": hs.acc,
                        "hellaswag_acc_norm": hs.acc_norm, "hellaswag_examples": hs.examples})

    def checkpoint() -> Path | None:
        rng = [None] * world_size
        if world_size > 1:
            torch.distributed.all_gather_object(rng, _rng_state())
        else:
            rng = [_rng_state()]
        trainer_state = {
            "step": step, "tokens": tokens_seen, "schedule": schedule.state_dict(),
            "train_loader": train_loader.state_dict(), "guard": guard.state_dict(), "scaler": scaler.state_dict(),
            "rng": rng, "world_size": world_size, "grad_accum": grad_accum, "distributed": mode,
            "optim_name": cfg.optim.name,
            "loop_seconds": time.time() - t_loop,  # t_loop is set before the first checkpoint
        }
        common = dict(trainer_state=trainer_state, tokenizer=tokenizer, run_yaml=to_yaml(cfg),
                      keep_last=cfg.checkpoint.keep_last)
        if cfg.checkpoint.sharded:  # every rank writes its shards; rank 0 adds the rest and publishes
            tmp = dist_utils.shared_tmp_dir(run_dir, checkpoint_name(step), rank=rank)
            dist_utils.save_sharded(tmp, model, optimizer)
            path = save_checkpoint(run_dir, step, model=None, config=model.config, tmp=tmp, **common) if master else None
            torch.distributed.barrier()
        else:
            trainer_state["optimizer"] = dist_utils.full_optimizer_state(model, optimizer, mode=mode)
            to_save = dist_utils.plain_model(model, mode=mode, rank=rank)
            path = save_checkpoint(run_dir, step, model=to_save, **common) if master else None
        if master:
            result.last_checkpoint = path
        return path

    def sample() -> list[str]:
        plain = dist_utils.plain_model(model, mode=mode, rank=rank, device=device)  # FSDP: all ranks gather
        if plain is None:
            return []
        texts = sample_text(plain, tokenizer, cfg)
        logger.log({"kind": "sample", "step": step, "samples": texts})
        return texts

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.train.max_steps, initial=step, unit="step", dynamic_ncols=True, file=sys.stderr)
    timed_steps, timed_seconds, last_val = 0, 0.0, None
    # train.max_minutes budgets the loop itself (evaluations included, setup and the final evaluation
    # not); the time already spent before a resume counts, so a resumed run keeps its schedule.
    budget = 60 * cfg.train.max_minutes if cfg.train.max_minutes else None
    loop_seconds = state.get("loop_seconds", 0.0) if state is not None else 0.0
    t_loop = time.time() - loop_seconds
    with _StopSignal() as stop:
        while step < cfg.train.max_steps:
            t0 = time.perf_counter()
            time_fraction = None
            if budget is not None:
                time_fraction = (time.time() - t_loop) / budget
                if world_size > 1:  # every rank must use the same rate: take rank 0's clock
                    tf = torch.tensor([time_fraction], dtype=torch.float64, device=device)
                    torch.distributed.broadcast(tf, 0)
                    time_fraction = tf.item()
            lr = schedule(step, time_fraction=time_fraction)
            set_lr(optimizer, lr)
            loss_sum = torch.zeros((), device=device)
            for micro in range(grad_accum):
                x, y = train_loader.next_batch()
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                dist_utils.set_grad_sync(wrapped, model, mode=mode, sync=micro == grad_accum - 1)
                with autocast:
                    loss = wrapped(x, targets=y, return_logits=False).loss
                scaler.scale(loss / grad_accum).backward()
                loss_sum += loss.detach()
            if world_size > 1:
                torch.distributed.all_reduce(loss_sum, op=torch.distributed.ReduceOp.SUM)
            loss_value = loss_sum.item() / (grad_accum * world_size)
            scaler.unscale_(optimizer)
            # With no clipping, an infinite threshold measures the norm and scales by exactly 1. Under FSDP
            # the gradients are sharded DTensors and the norm comes back as one.
            max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
            grad_norm = dist_utils.scalar(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
            reason = guard.check(loss_value, grad_norm)
            if reason is None:
                scaler.step(optimizer)
            else:
                result.skipped += 1
                if master:
                    print(f"step {step + 1}: skipped the update: {reason}", file=sys.stderr)
                    logger.log({"kind": "skip", "step": step + 1, "reason": reason})
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            guard.record(loss_value, reason is not None)
            if guard.in_row >= cfg.train.max_skipped_in_row:
                raise TrainingStopped(
                    f"stopped at step {step + 1}: {guard.in_row} updates in a row were skipped (last: {reason}); "
                    "lower optim.lr, raise optim.warmup_steps or check the data, then resume from the last checkpoint"
                )
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            step += 1
            tokens_seen += global_tokens
            result.losses.append(loss_value)
            if step > 1 or state is not None:  # the first step pays for allocation and compilation
                timed_steps += 1
                timed_seconds += dt

            if master and (step % cfg.train.log_interval == 0 or step == cfg.train.max_steps):
                tok_s = global_tokens * timed_steps / timed_seconds if timed_seconds else float("nan")
                mfu = flops_step * timed_steps / timed_seconds / peak if (timed_seconds and peak) else None
                logger.log({"kind": "train", "step": step, "tokens": tokens_seen, "loss": loss_value, "lr": lr,
                            "grad_norm": grad_norm, "tok_per_s": tok_s, "mfu": mfu, "time": time.time() - t_start})
                eta = (cfg.train.max_steps - step) * timed_seconds / max(timed_steps, 1)
                if budget is not None:  # a time-budgeted run ends when its budget does, if that comes first
                    eta = min(eta, max(budget - (time.time() - t_loop), 0.0))
                line = dict(loss=f"{loss_value:.4f}", val=f"{last_val:.4f}" if last_val else "-",
                            tok_s=f"{tok_s:,.0f}", mfu=f"{100 * mfu:.0f}%" if mfu else "-", eta=f"{eta:,.0f}s")
                if bar is not None:
                    bar.set_postfix(line, refresh=False)
                else:
                    print(f"step {step}/{cfg.train.max_steps} " + " ".join(f"{k} {v}" for k, v in line.items()),
                          file=sys.stderr)
            if bar is not None:
                bar.update(1)

            last = step == cfg.train.max_steps
            out_of_time = budget is not None and time.time() - t_loop >= budget
            if world_size > 1 and budget is not None:  # stop together
                flag = torch.tensor([float(out_of_time)], device=device)
                torch.distributed.broadcast(flag, 0)
                out_of_time = bool(flag.item())
            stopping = stop.received is not None or out_of_time
            if cfg.eval.interval and step % cfg.eval.interval == 0 and not last and not stopping:
                last_val, bpb = evaluate()
                if master:
                    logger.log({"kind": "val", "step": step, "tokens": tokens_seen, "val_loss": last_val,
                                "val_bpb": bpb})
                    logger.plot()
            hs_interval = cfg.eval.hellaswag_interval or cfg.eval.interval
            if hs_interval and step % hs_interval == 0 and not last and not stopping:
                hellaswag()
            if cfg.sample.interval and step % cfg.sample.interval == 0 and not last and not stopping:
                sample()
            if cfg.checkpoint.interval and step % cfg.checkpoint.interval == 0 and not last and not stopping:
                checkpoint()
            if stopping:
                why = f"signal {signal.Signals(stop.received).name}" if stop.received else "train.max_minutes reached"
                if master:
                    print(f"\n{why}: saving a checkpoint at step {step}", file=sys.stderr)
                result.interrupted = stop.received is not None
                break

    if bar is not None:
        bar.close()
    result.step, result.tokens = step, tokens_seen
    result.val_loss, result.val_bpb = evaluate()
    if master:
        logger.log({"kind": "val", "step": step, "tokens": tokens_seen, "val_loss": result.val_loss,
                    "val_bpb": result.val_bpb})
        logger.plot()
    hellaswag()
    checkpoint()
    if not result.interrupted:
        result.samples = sample()
    if master:
        logger.log({"kind": "end", "step": step, "tokens": tokens_seen, "seconds": time.time() - t_start,
                    "val_loss": result.val_loss, "val_bpb": result.val_bpb, "skipped": result.skipped})
    logger.close()
    destroy_distributed()
    return result


def sample_text(model: GPT2LMHeadModel, tokenizer: Any, cfg: RunConfig) -> list[str]:
    """Continue each configured prompt with the generation engine (its own seeded generators: the
    training RNG is not touched, so samples never change the losses that follow)."""
    from gpt2.generate import SampleConfig, generate

    s = cfg.sample
    # leave at least half the context for the prompt (truncated from the left if longer)
    max_new = min(s.max_new_tokens, model.config.n_positions // 2)
    config = SampleConfig(max_new_tokens=max_new, temperature=s.temperature, top_k=s.top_k or None,
                          seed=cfg.train.seed, long_prompt="truncate")
    model.eval()
    try:
        # pack=False: no packed copy of the weights, which change after every step anyway
        gens = generate(model, tokenizer, list(s.prompts), config, pack=False)
    finally:
        model.train()
    return [prompt + g.text for prompt, g in zip(s.prompts, gens)]


def main(argv: list[str] | None = None) -> int:
    from gpt2.config import load_config

    argv = sys.argv[1:] if argv is None else argv
    recipe = argv[0] if argv and "=" not in argv[0] else None
    result = train(load_config(recipe, argv[1:] if recipe else argv))
    print(f"done: step {result.step}, val loss {result.val_loss:.4f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
