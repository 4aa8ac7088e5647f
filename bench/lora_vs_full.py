"""LoRA against full fine-tuning, side by side: trainable parameters, peak memory (RSS) and step time.

    python bench/lora_vs_full.py                          # GPT-2 124M shapes, B 4 × T 256, fp32, 2 repeats
    python bench/lora_vs_full.py --rank 8 --targets c_attn --steps 4 --repeats 1
    python bench/lora_vs_full.py --dtype bf16             # autocast bf16 (emulated, and said so, without AVX-512 BF16)
    python bench/lora_vs_full.py --preset tiny --seq-len 32 --steps 1 --warmup 1 --repeats 1 --out /tmp/l.json

Two configurations, on the same random-weight model (fixed seed) and the same random token batches:
`full` trains every parameter; `lora` injects adapters (gpt2.model.lora.inject_lora: rank 16, alpha 16,
on c_attn, attn.c_proj, c_fc and mlp.c_proj by default), which freezes the base, tied embedding / LM head
included. Each configuration runs in a subprocess of its own, so the peak RSS it reports is its own, and
the two alternate (full, lora, full, lora, ... for --repeats) so machine noise hits both alike.

The step timed is the trainer's own: a real gpt2.train.loop.Trainer is built around a synthetic
language-model task (random tokens in place of shards; LanguageModelTask's loss), so its set-up applies
as in `gpt2 train` (keep_freed_memory on a CPU, resolve_dtype and autocast, build_optimizer's AdamW from
RunConfig().optim) and each timed call is `Trainer.train_step`: accumulate (forward with the fused LM-head
loss, backward), clip_grad_norm_, the optimizer step, zero_grad. After --warmup steps, --steps are timed;
the median and min step time, the trainable and total parameters (lora.trainable_parameters), the RSS
right after the model is built, the peak RSS before the first step and at the end
(getrusage(RUSAGE_SELF).ru_maxrss) are reported. Each worker also checks what LoRA's speed rests on:
no frozen parameter holds a .grad after backward, and the optimizer holds exactly the trainable ones.

On a busy machine, pass --threads 1: with two OpenMP threads on two shared cores, every op waits at a barrier
for a descheduled thread, a fixed cost per op that is not the step's own. LoRA's adapters add some 290 small
matmuls a step, so it pays most: a (512, 16) @ (16, 768) matmul took 23 ms with 2 threads and 0.6 ms with 1 on
this project's 2-core AMD EPYC under a load of 7 (and the busy-machine ratio read low).

The table and a one-line verdict against the bar (LoRA ≥ 1.3× faster per step by median step time, and
less peak RSS) are printed; everything, with the CPU, torch version and threads, goes to
bench/results/lora-vs-full.json (--out to change).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ("full", "lora")
SPEEDUP_BAR = 1.3  # the acceptance item: LoRA at least 1.3× faster per step


# ------------------------------------------------------------------------------------------ memory
def rss_mb() -> float:
    """This process's resident set size now, in MB (/proc/self/statm; the peak is ru_maxrss)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def peak_rss_mb() -> float:
    """Peak RSS of this process so far, in MB (ru_maxrss is KB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


# ------------------------------------------------------------------------------------------ worker
def lora_trainable_formula(config: Any, *, rank: int, targets: tuple[str, ...]) -> int:
    """LoRA's trainable count from its formula: rank × (in + out) for each adapted layer of each block."""
    C, inner = config.n_embd, config.inner_dim
    shape = {"c_attn": (C, 3 * C), "attn.c_proj": (C, C), "c_fc": (C, inner), "mlp.c_proj": (inner, C)}
    return config.n_layer * sum(rank * sum(shape[t]) for t in targets)


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One configuration in this process: build the trainer, warm up, time `Trainer.train_step`."""
    from gpt2.config import load_config
    from gpt2.model.config import GPT2Config
    from gpt2.model.gpt2 import GPT2LMHeadModel
    from gpt2.model.lora import LoRAConfig, inject_lora, trainable_parameters
    from gpt2.train.evaluators import TokenValidation
    from gpt2.train.loop import Trainer
    from gpt2.train.task import LanguageModelTask

    targets = tuple(args.targets.split(","))
    memory: dict[str, float] = {}

    class RandomBatches:
        """The loader's interface over random tokens: x (B, T), y = x shifted by one (B, T)."""

        def __init__(self, vocab_size: int, seed: int) -> None:
            self.vocab_size = vocab_size
            self.g = torch.Generator().manual_seed(seed)

        def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
            tokens = torch.randint(0, self.vocab_size, (args.batch, args.seq_len + 1), generator=self.g)
            return tokens[:, :-1], tokens[:, 1:]  # (B, T), (B, T)

        def state_dict(self) -> dict[str, Any]:
            return {}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            pass

    class SyntheticLMTask(LanguageModelTask):
        """LanguageModelTask (its geometry, count and loss_sum) with random tokens and a preset's random weights."""

        def prepare(self, *, progress: bool) -> None:
            pass

        def ready(self, *, master: bool) -> None:
            pass

        def build_model(self, checkpoint: Path | None) -> torch.nn.Module:
            # dropout off in both: it would only add noise (and LoRA's own dropout is --lora-dropout)
            config = GPT2Config.from_preset(args.preset, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
            config.n_positions = max(config.n_positions, args.seq_len)
            model = GPT2LMHeadModel(config)  # seeded by the trainer (train.seed) just before
            if args.worker == "lora":
                inject_lora(model, LoRAConfig(rank=args.rank, alpha=args.alpha, dropout=args.lora_dropout,
                                              targets=targets))
            memory["rss_after_build_mb"] = rss_mb()
            return model

        def train_loader(self, *, rank: int, world_size: int) -> RandomBatches:
            return RandomBatches(self.vocab_size, seed=args.seed + 1)

        def start_record(self) -> dict[str, Any]:
            return {"synthetic": True, "config": args.worker}

        def evaluators(self, *, rank: int, world_size: int) -> list[Any]:
            # the bench times train_step alone and never evaluates: a validation with no data, never run
            return [TokenValidation(self.cfg, loader=None, bytes_per_token=None)]

        @property
        def vocab_size(self) -> int:
            return GPT2Config.from_preset(args.preset).vocab_size

    with tempfile.TemporaryDirectory(prefix="lora-bench-") as run_dir:
        cfg = load_config(None, [
            f"train.out_dir={run_dir}", "train.device=cpu", f"train.dtype={args.dtype}",
            f"train.seq_len={args.seq_len}", f"train.micro_batch_size={args.batch}",
            f"train.max_steps={args.warmup + args.steps}", f"train.seed={args.seed}",
            *([f"train.threads={args.threads}"] if args.threads else []),
        ])
        if args.malloc == "default":
            os.environ["GPT2_KEEP_FREED_MEMORY"] = "0"  # read by keep_freed_memory, which the trainer calls
        trainer = Trainer(cfg, SyntheticLMTask(cfg), resume=None, progress=False)
        model, optimizer = trainer.model, trainer.optimizer
        trainable, total = trainable_parameters(model)
        in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
        requiring = {id(p) for p in model.parameters() if p.requires_grad}
        memory["rss_before_steps_mb"] = rss_mb()
        memory["peak_rss_before_steps_mb"] = peak_rss_mb()

        # Which parameters receive a gradient: a hook on every trainable one (a frozen leaf cannot get one
        # from autograd at all; the check after backward below makes sure nothing else gave it one).
        got_grad: set[int] = set()
        hooks = [p.register_post_accumulate_grad_hook(lambda p: got_grad.add(id(p)))
                 for p in model.parameters() if p.requires_grad]
        frozen_with_grad = 0

        def count_frozen_grads(opt: torch.optim.Optimizer, *a: Any, **k: Any) -> None:
            nonlocal frozen_with_grad
            frozen_with_grad = max(frozen_with_grad, sum(1 for p in model.parameters()
                                                         if not p.requires_grad and p.grad is not None))

        pre_step = optimizer.register_step_pre_hook(count_frozen_grads)  # after backward and clipping

        times: list[float] = []
        losses: list[float] = []
        for step in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            loss, _grad_norm, skipped, _tokens = trainer.train_step(trainer.schedule(step))
            dt = time.perf_counter() - t0
            if skipped is not None:
                raise SystemExit(f"{args.worker}: step {step} skipped its update: {skipped}")
            losses.append(loss)
            if step >= args.warmup:
                times.append(dt)
            if step == 0:
                for h in hooks:
                    h.remove()
                pre_step.remove()
        memory["peak_rss_mb"] = peak_rss_mb()
        params = {id(p): p.numel() for p in model.parameters()}

    from gpt2.common import cpu_has_fast_bf16

    return {
        "config": args.worker,
        "preset": args.preset,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "dtype": str(trainer.dtype).removeprefix("torch."),
        "dtype_reason": trainer.dtype_reason,
        "cpu_fast_bf16": cpu_has_fast_bf16(),
        "threads": torch.get_num_threads(),
        "malloc": args.malloc,
        "lora": ({"rank": args.rank, "alpha": args.alpha, "dropout": args.lora_dropout, "targets": list(targets)}
                 if args.worker == "lora" else None),
        "optimizer": type(optimizer).__name__,
        "trainable_params": trainable,
        "total_params": total,
        # numels of: what the optimizer steps, what received a gradient; both must be what requires grad
        "optimizer_params": sum(params[i] for i in in_optimizer),
        "params_with_grad": sum(params[i] for i in got_grad),
        "optimizer_holds_only_trainable": in_optimizer == requiring,
        "grads_only_on_trainable": got_grad == requiring,
        "frozen_params_with_grad": frozen_with_grad,
        "lora_formula_params": (lora_trainable_formula(model.config, rank=args.rank, targets=targets)
                                if args.worker == "lora" else None),
        "step_times_s": times,
        "step_median_s": statistics.median(times),
        "step_min_s": min(times),
        "tokens_per_step": args.batch * args.seq_len,
        "losses": losses,
        **memory,
    }


# ------------------------------------------------------------------------------------------ driver
def cpu_record() -> dict[str, Any]:
    """The CPU (lscpu's model name and torch's capability, as bench/finetune_classify.py reports it) and
    the flags CPU matmul speed depends on."""
    from common import cpu_name  # bench/ is sys.path[0] when this file runs as a script

    from gpt2.common import cpu_has_fast_bf16

    try:
        flags = next((line.split(":", 1)[1].split() for line in
                      subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
                      if line.startswith("Flags:")), [])
    except OSError:
        flags = []
    return {"name": cpu_name(), "cores": os.cpu_count(), "avx2": "avx2" in flags,
            "avx512f": "avx512f" in flags, "fast_bf16": cpu_has_fast_bf16()}


def worker_argv(args: argparse.Namespace, config: str, out: Path) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", config, "--worker-out", str(out),
            "--preset", args.preset, "--batch", str(args.batch), "--seq-len", str(args.seq_len),
            "--warmup", str(args.warmup), "--steps", str(args.steps), "--dtype", args.dtype,
            "--seed", str(args.seed), "--rank", str(args.rank), "--alpha", str(args.alpha),
            "--lora-dropout", str(args.lora_dropout), "--targets", args.targets, "--malloc", args.malloc]
    return argv + (["--threads", str(args.threads)] if args.threads else [])


def run_worker(args: argparse.Namespace, config: str) -> dict[str, Any]:
    """One configuration in a fresh subprocess (its peak RSS is then its own); its record."""
    with tempfile.TemporaryDirectory(prefix="lora-bench-") as tmp:
        out = Path(tmp) / "result.json"
        r = subprocess.run(worker_argv(args, config, out), text=True, stdout=subprocess.PIPE,
                           stderr=None if args.verbose else subprocess.PIPE)
        if r.returncode != 0 or not out.exists():
            sys.stderr.write((r.stderr or "")[-4000:])
            raise SystemExit(f"the {config} worker failed with exit status {r.returncode}")
        return json.loads(out.read_text())


def git_commit() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        return r.stdout.strip() or None
    except OSError:
        return None


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One configuration over its repeats: every timed step pooled for the median and min; the largest peak."""
    times = [t for r in runs for t in r["step_times_s"]]
    first = runs[0]
    keys = ("trainable_params", "total_params", "optimizer_params", "params_with_grad", "optimizer_holds_only_trainable",
            "grads_only_on_trainable", "frozen_params_with_grad", "lora_formula_params", "lora", "dtype", "dtype_reason")
    return {
        **{k: first[k] for k in keys},
        "step_median_s": statistics.median(times),
        "step_min_s": min(times),
        "tokens_per_s": first["tokens_per_step"] / statistics.median(times),
        "rss_after_build_mb": statistics.median(r["rss_after_build_mb"] for r in runs),
        "peak_rss_before_steps_mb": max(r["peak_rss_before_steps_mb"] for r in runs),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "repeat_medians_s": [r["step_median_s"] for r in runs],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="gpt2", help="model shape (random weights): gpt2 = 124M; tiny for a smoke run")
    p.add_argument("--batch", type=int, default=4, help="micro-batch size B")
    p.add_argument("--seq-len", type=int, default=256, help="T")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (allocator, oneDNN, AdamW state)")
    p.add_argument("--steps", type=int, default=8, help="timed steps per configuration and repeat")
    p.add_argument("--repeats", type=int, default=2, help="rounds of (full, lora), alternating")
    p.add_argument("--configs", default="full,lora", help="comma-separated: full, lora")
    p.add_argument("--dtype", choices=["fp32", "bf16", "auto"], default="fp32",
                   help="train.dtype: weights stay fp32, bf16 is autocast (as gpt2 train); on a CPU without "
                   "AVX-512 BF16/AMX bf16 is emulated (slow) and the run says so")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank r")
    p.add_argument("--alpha", type=float, default=16, help="LoRA alpha (scaling alpha / r)")
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--targets", default="c_attn,attn.c_proj,c_fc,mlp.c_proj", help="LoRA targets, comma-separated")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument("--malloc", choices=["kept", "default"], default="kept",
                   help="kept: glibc keeps freed memory, as gpt2 train sets up on a CPU (gpt2.common.keep_freed_memory)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "lora-vs-full.json")
    p.add_argument("--verbose", action="store_true", help="show the workers' trainer output")
    p.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    p.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    # Checked here, before any worker starts, so a bad flag fails in one line
    from gpt2.model.lora import LoRAConfig

    LoRAConfig(rank=args.rank, alpha=args.alpha, dropout=args.lora_dropout, targets=tuple(args.targets.split(",")))
    configs = args.configs.split(",")
    if not configs or any(c not in CONFIGS for c in configs) or len(set(configs)) != len(configs):
        p.error(f"--configs {args.configs!r}: name full and/or lora, once each")
    if min(args.steps, args.repeats, args.batch, args.seq_len) < 1 or args.warmup < 0:
        p.error("--steps, --repeats, --batch and --seq-len must be ≥ 1, --warmup ≥ 0")

    if args.worker:
        args.worker_out.write_text(json.dumps(worker(args)))
        return 0

    from gpt2.common import resolve_dtype

    dtype, dtype_reason = resolve_dtype(args.dtype, torch.device("cpu"))
    cpu = cpu_record()
    threads = args.threads or torch.get_num_threads()
    print(f"{cpu['name']}, {cpu['cores']} cores; torch {torch.__version__}, {threads} threads; git {git_commit()}")
    print(f"{args.preset} shapes, random weights; B {args.batch} × T {args.seq_len}; dtype: {dtype_reason}")
    print(f"LoRA: rank {args.rank}, alpha {args.alpha:g}, dropout {args.lora_dropout:g}, targets {args.targets}; "
          f"{args.warmup} warm-up + {args.steps} timed steps × {args.repeats} repeat(s), alternating", flush=True)
    if dtype == torch.bfloat16 and not cpu["fast_bf16"]:
        print("note: no native bf16 here, so both configurations run emulated bf16 matmuls; the ratio still "
              "compares like with like, but fp32 is what this CPU trains in", flush=True)

    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    for i in range(args.repeats):
        for c in configs:
            t0 = time.time()
            r = run_worker(args, c)
            runs[c].append(r)
            print(f"  repeat {i + 1} {c}: median step {r['step_median_s']:.3f} s, peak RSS {r['peak_rss_mb']:,.0f} MB "
                  f"({time.time() - t0:.0f} s)", flush=True)
    summary = {c: summarise(rs) for c, rs in runs.items()}

    print()
    print("| config | trainable params | total params | median step s | min step s | tok/s "
          "| RSS after build MB | peak RSS MB | peak − before steps MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c, s in summary.items():
        print(f"| {c} | {s['trainable_params']:,} ({100 * s['trainable_params'] / s['total_params']:.2f}%) "
              f"| {s['total_params']:,} | {s['step_median_s']:.3f} | {s['step_min_s']:.3f} | {s['tokens_per_s']:,.0f} "
              f"| {s['rss_after_build_mb']:,.0f} | {s['peak_rss_mb']:,.0f} "
              f"| {s['peak_rss_mb'] - s['peak_rss_before_steps_mb']:,.0f} |")

    record: dict[str, Any] = {
        "bench": "lora_vs_full", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git_commit": git_commit(),
        "command": "python bench/lora_vs_full.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "cpu": cpu, "torch": torch.__version__, "python": platform.python_version(), "threads": threads,
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "worker_out", "out", "verbose")},
        "dtype_reason": dtype_reason, "bar": {"speedup": SPEEDUP_BAR, "less_peak_rss": True},
        "summary": summary, "runs": runs,
    }
    for c, s in summary.items():
        problems = []
        if s["frozen_params_with_grad"]:
            problems.append(f"{s['frozen_params_with_grad']} frozen parameters got a .grad")
        if not s["optimizer_holds_only_trainable"]:
            problems.append(f"the optimizer holds {s['optimizer_params']:,} parameters, not exactly the trainable ones")
        if not s["grads_only_on_trainable"]:
            problems.append(f"{s['params_with_grad']:,} parameters got gradients, not exactly the trainable ones")
        if problems:
            print(f"warning ({c}): " + "; ".join(problems))
        s["checks_ok"] = not problems
    if "full" in summary and "lora" in summary:
        full, lora = summary["full"], summary["lora"]
        speedup = full["step_median_s"] / lora["step_median_s"]
        saved = full["peak_rss_mb"] - lora["peak_rss_mb"]
        per_repeat = [f / l_ for f, l_ in zip(full["repeat_medians_s"], lora["repeat_medians_s"])]
        passed = speedup >= SPEEDUP_BAR and saved > 0
        record["comparison"] = {"speedup_full_over_lora": speedup, "speedup_per_repeat": per_repeat,
                                "peak_rss_saved_mb": saved, "passed": passed}
        print()
        print(f"full / lora median step time: {speedup:.2f}× (per repeat: "
              f"{', '.join(f'{x:.2f}×' for x in per_repeat)}); peak RSS: lora {saved:,.0f} MB less "
              f"({100 * saved / full['peak_rss_mb']:.0f}%)")
        print(f"verdict: {'PASS' if passed else 'FAIL'}: LoRA is {speedup:.2f}× faster per step "
              f"({'≥' if speedup >= SPEEDUP_BAR else '<'} {SPEEDUP_BAR}×) and uses {abs(saved):,.0f} MB "
              f"{'less' if saved > 0 else 'more'} peak RSS")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
