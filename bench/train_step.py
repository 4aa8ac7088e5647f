"""Training-step throughput: our GPT2LMHeadModel against transformers.GPT2LMHeadModel, side by side.

    python bench/train_step.py                       # tiny and gpt2 (124M) at T=256, fp32 and bf16
    python bench/train_step.py --models gpt2 --dtypes fp32 --steps 5 --optimizer
    python bench/train_step.py --attention             # SDPA against the math path, bf16, by sequence length
    python bench/train_step.py --attention --dtypes fp32   # the same in fp32
    python bench/train_step.py --models gpt2 --dtypes fp32 --optimizer --profile 20   # where our step's time goes
    python bench/train_step.py --device cuda --models gpt2 --dtypes bf16 --seq-len 1024 --batch 16 --optimizer \
        --tf32 --compile --no-hf --json /tmp/step.jsonl      # on a GPU: MFU against the datasheet peak

Without --optimizer a step is the model's forward + backward; with it, ours is `Trainer.train_step` itself,
the code `gpt2 train` runs (reading its micro-batches from random shards, autocast, backward, clipping, the
spike guard, gpt2.train.optim's AdamW), built through the same config and Trainer as a run; HF runs
forward, backward, clipping and torch.optim.AdamW on model.parameters(), as HF-based training scripts do.

Both models get the same config, the same weights and the same batch; steps alternate between them
(ours, HF, ours, HF, ...) so machine noise hits both alike, and the median step time is reported.
Ours runs the step `gpt2 train` runs: forward with targets and the fused LM-head loss
(return_logits=False), then backward. HF runs `model(x, labels=x).loss.backward()`. bf16 means
torch.autocast(bfloat16) around the forward for both, weights kept in fp32, as mixed-precision
training does. Achieved GFLOP/s counts matmul FLOPs (gpt2.model.info.flops_per_token) and is compared
with this machine's matmul peak, measured here on large square matmuls in the same dtype; on CUDA, with
the datasheet bf16 peak (gpt2.train.metrics.peak_flops: GPU_BF16_PEAK, half of it for TF32), i.e. MFU.
`--compile` wraps both models in torch.compile (the warm-up step then includes compilation); `--tf32`
lets fp32 matmuls use TF32 (`torch.backends.cuda.matmul.allow_tf32`), as `gpt2 train` does on CUDA;
the optimizer is gpt2.train.optim's AdamW, fused on CUDA. `--no-hf` times ours alone.

`gpt2 train` on a CPU has glibc keep freed memory instead of returning large blocks to the kernel
(gpt2.common.keep_freed_memory); by default (`--malloc kept`) this process does the same, so both
models run as they would in training. `--malloc default` measures with glibc's own settings.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from gpt2 import GPT2Config, GPT2LMHeadModel
from gpt2.model.hf import to_hf_state_dict
from gpt2.model.info import flops_per_token
from gpt2.train.metrics import measure_matmul_peak, peak_flops

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DEFAULT_DTYPES = "fp32,bf16"


def matmul_peak(dtype: torch.dtype, device: torch.device) -> float:
    """GFLOP/s peak in `dtype`: this CPU's matmul measured now, or a GPU's datasheet figure (as MFU uses)."""
    if device.type == "cuda":
        peak = peak_flops(device, dtype)
        if peak is None:
            raise SystemExit(f"no datasheet peak for {torch.cuda.get_device_name(device)}; add it to GPU_BF16_PEAK")
        return peak / 1e9
    return measure_matmul_peak(dtype) / 1e9


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_pair(preset: str, seq_len: int, *, with_hf: bool = True):
    config = GPT2Config.from_preset(preset, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    config.n_positions = max(config.n_positions, seq_len)
    torch.manual_seed(0)
    ours = GPT2LMHeadModel(config).train()
    if not with_hf:
        return config, ours, None
    import transformers

    d = config.to_hf_dict()
    d.pop("pad_vocab_size_multiple")
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**d)).train()
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(ours), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    hf.tie_weights()
    return config, ours, hf


def training_step(model, forward, opt, x: torch.Tensor, targets: torch.Tensor, dtype_name: str, *, hf: bool):
    """One step as training takes it: forward (autocast in bf16), backward, clip + optimizer when given."""

    def step() -> float:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=dtype_name == "bf16"):
            loss = forward(x, labels=x).loss if hf else forward(x, targets=targets, return_logits=False).loss
        loss.backward()
        if opt is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        for p in model.parameters():
            p.grad = None
        return loss.item()

    return step


def trainer_for(preset: str, *, seq_len: int, batch: int, dtype_name: str, device: torch.device, compile: bool,
                tmp: Path) -> Any:
    """The Trainer `gpt2 train` builds (AdamW, the recipe's clipping, spike guard, loader, autocast), on random
    shards in llm.c's format (bench/synthetic_shards.py), so its own `train_step` is what gets timed."""
    from synthetic_shards import write_synthetic_shards

    from gpt2.config import load_config
    from gpt2.tokenizer import train_bpe
    from gpt2.train.loop import LanguageModelTask, Trainer

    # A small tokenizer and random shards below its vocabulary; model.vocab_size keeps the preset's width of
    # the embedding and the LM head, so the step costs what the preset's costs (ids do not change FLOPs).
    tok = train_bpe(["the quick brown fox jumps over the lazy dog"] * 8, vocab_size=300,
                    special_tokens=["<|endoftext|>"], progress=False)
    tok.save(tmp / "tokenizer")
    preset_config = GPT2Config.from_preset(preset)
    shards = write_synthetic_shards(tmp / "shards", train_tokens=max(200_000, 4 * batch * (seq_len + 1) * 64),
                                    val_tokens=20_000, vocab=tok.n_vocab, doc_len=seq_len * 4)
    cfg = load_config(None, [
        f"model.preset={preset}", f"model.vocab_size={preset_config.vocab_size}",
        f"model.n_positions={max(seq_len, preset_config.n_positions)}", "model.dropout=0.0",
        f"data.dir={shards}", f"data.tokenizer.name={tmp / 'tokenizer'}", "optim.name=adamw",
        "optim.warmup_steps=0", f"train.seq_len={seq_len}", f"train.micro_batch_size={batch}",
        f"train.global_batch_tokens={batch * seq_len}", f"train.dtype={dtype_name}", f"train.device={device}",
        f"train.compile={str(compile).lower()}", f"train.out_dir={tmp / 'run'}", "train.max_steps=1000000",
        "eval.interval=0", "checkpoint.interval=0",
    ])
    return Trainer(cfg, LanguageModelTask(cfg), resume=None, progress=False)


def run(preset: str, *, seq_len: int, batch: int, steps: int, dtype_name: str, optimizer: bool,
        device: torch.device | None = None, compile: bool = False, with_hf: bool = True) -> dict:
    device = device or torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        return _run(preset, seq_len=seq_len, batch=batch, steps=steps, dtype_name=dtype_name, optimizer=optimizer,
                    device=device, compile=compile, with_hf=with_hf, tmp=Path(tmp))


def _run(preset: str, *, seq_len: int, batch: int, steps: int, dtype_name: str, optimizer: bool,
         device: torch.device, compile: bool, with_hf: bool, tmp: Path) -> dict:
    config, ours, hf = build_pair(preset, seq_len, with_hf=with_hf)
    trainer = None
    if optimizer:  # ours is the trainer's own step; HF gets the trainer's weights
        trainer = trainer_for(preset, seq_len=seq_len, batch=batch, dtype_name=dtype_name, device=device,
                              compile=compile, tmp=tmp)
        ours = trainer.model
        assert ours.config.vocab_size == config.vocab_size and ours.config.n_embd == config.n_embd
        if hf is not None:
            missing, unexpected = hf.load_state_dict(to_hf_state_dict(ours), strict=False)
            assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
            hf.tie_weights()
    ours.to(device)
    if hf is not None:
        hf.to(device)
    opt_hf = None
    if optimizer and hf is not None:
        opt_hf = torch.optim.AdamW(hf.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                   fused=device.type == "cuda" or None)
    fwd_ours = torch.compile(ours) if compile and trainer is None else ours
    fwd_hf = torch.compile(hf) if compile and hf is not None else hf
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, config.vocab_size, (batch, seq_len), generator=g)
    targets = torch.cat([x[:, 1:], torch.full((batch, 1), -100)], dim=1)
    x, targets = x.to(device), targets.to(device)

    if trainer is not None:
        lr = trainer.cfg.optim.lr

        def step_ours() -> float:
            return trainer.train_step(lr)[0]
    else:
        step_ours = training_step(ours, fwd_ours, None, x, targets, dtype_name, hf=False)
    step_hf = training_step(hf, fwd_hf, opt_hf, x, targets, dtype_name, hf=True) if hf is not None else None

    # warm-up (allocator, oneDNN primitives, compilation); twice when compiled (the first backward compiles too)
    sides = [("ours", step_ours)] + ([("hf", step_hf)] if hf is not None else [])
    losses = {name: [fn() for _ in range(2 if compile else 1)][-1] for name, fn in sides}
    times: dict[str, list[float]] = {name: [] for name, _ in sides}
    for _ in range(steps):
        for name, fn in sides:
            sync(device)
            t = time.perf_counter()
            fn()  # .item() on the loss waits for the GPU
            times[name].append(time.perf_counter() - t)
    tokens = batch * seq_len
    flops = flops_per_token(config, seq_len, training=True) * tokens
    med = {k: statistics.median(v) for k, v in times.items()}
    nan = float("nan")
    return {
        "preset": preset,
        "dtype": dtype_name,
        "device": str(device),
        "compile": compile,
        "tok_s_ours": tokens / med["ours"],
        "tok_s_hf": tokens / med["hf"] if "hf" in med else nan,
        "ratio": med["hf"] / med["ours"] if "hf" in med else nan,
        "gflops_ours": flops / med["ours"] / 1e9,
        "gflops_hf": flops / med["hf"] / 1e9 if "hf" in med else nan,
        # the trainer reads its own (random) batches, so its loss is comparable only without --optimizer
        "loss_diff": abs(losses["ours"] - losses["hf"]) if "hf" in losses and trainer is None else nan,
    }


MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear"}


def profile_table(preset: str, *, seq_len: int, batch: int, dtype_name: str, optimizer: bool, top: int) -> None:
    """Where our step's time goes: torch.profiler over one step (after a warm-up), the top ops by self time."""
    from torch.profiler import ProfilerActivity, profile

    config, ours, _ = build_pair(preset, seq_len, with_hf=False)
    opt = None
    if optimizer:
        from gpt2.config import OptimConfig
        from gpt2.train.optim import build_optimizer

        opt = build_optimizer(ours, OptimConfig(), device=torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, config.vocab_size, (batch, seq_len), generator=g)
    targets = torch.cat([x[:, 1:], torch.full((batch, 1), -100)], dim=1)

    step = training_step(ours, ours, opt, x, targets, dtype_name, hf=False)
    step()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    wall = time.perf_counter() - t0
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
    print(f"{preset} {dtype_name}, batch {batch} × T {seq_len}, one profiled step: {wall:.2f} s wall; "
          f"self time in matmul ops {100 * matmul / total:.1f}%, elsewhere {100 * (total - matmul) / total:.1f}%\n")
    print("| op | calls | self time | share |\n|---|---:|---:|---:|")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]:
        print(f"| {e.key} | {e.count} | {e.self_cpu_time_total / 1e6:.3f} s | {100 * e.self_cpu_time_total / total:.1f}% |")


def attention_table(steps: int, dtype_name: str = "bf16") -> None:
    """Causal attention forward + backward: F.scaled_dot_product_attention against the math path (q kᵀ,
    mask, softmax, @ v as batched matmuls), which the model takes on a CPU in bf16 for up to 512 keys."""
    import torch.nn.functional as F

    def sdpa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def math_path(q, k, v):
        T = q.size(-2)
        att = (q @ k.transpose(-2, -1)) * q.size(-1) ** -0.5
        return att.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf")).softmax(-1) @ v

    dtype = DTYPES[dtype_name]
    print(f"| batch × heads × T × 64, {dtype_name} | SDPA ms | math ms | SDPA / math |")
    print("|---|---:|---:|---:|")
    for B, H, T in ((16, 4, 256), (4, 12, 256), (4, 12, 512), (2, 12, 768), (4, 12, 1024)):
        q, k, v = (torch.randn(B, H, T, 64, dtype=dtype, requires_grad=True) for _ in range(3))
        grad = torch.randn(B, H, T, 64, dtype=dtype)
        times: dict[str, list[float]] = {"sdpa": [], "math": []}
        for i in range(steps + 1):
            for name, fn in (("sdpa", sdpa), ("math", math_path)):
                t = time.perf_counter()
                fn(q, k, v).backward(grad)
                if i:  # the first round warms up
                    times[name].append(time.perf_counter() - t)
        s, m = (statistics.median(times[n]) * 1e3 for n in ("sdpa", "math"))
        print(f"| {B} × {H} × {T} | {s:.1f} | {m:.1f} | {s / m:.2f}× |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="tiny,gpt2", help="comma-separated presets")
    p.add_argument("--dtypes", default=DEFAULT_DTYPES, help="comma-separated: fp32, bf16")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=5, help="timed steps per model (after one warm-up)")
    p.add_argument("--optimizer", action="store_true", help="time the full training step (clip + AdamW too)")
    p.add_argument("--malloc", choices=["kept", "default"], default="kept",
                   help="kept: glibc keeps freed memory for reuse, as `gpt2 train` sets up on a CPU "
                   "(gpt2.common.keep_freed_memory), for both models; default: glibc's own settings")
    p.add_argument("--attention", action="store_true", help="only time attention: SDPA against the math path")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--tf32", action="store_true", help="let fp32 matmuls use TF32 on CUDA (as gpt2 train does)")
    p.add_argument("--no-hf", dest="hf", action="store_false", help="time ours only (no transformers model)")
    p.add_argument("--json", default=None, metavar="PATH", help="also append each result as a JSON line here")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="instead of timing, profile one step of ours (CPU) and print its top N ops by self time")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA device here (torch {torch.__version__})")
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.malloc == "kept" and device.type == "cpu":
        from gpt2.common import keep_freed_memory

        keep_freed_memory()
    if args.attention:  # bf16 unless --dtypes names others
        for d in (args.dtypes.split(",") if args.dtypes != DEFAULT_DTYPES else ["bf16"]):
            attention_table(args.steps, d)
        return
    if args.profile:
        for preset in args.models.split(","):
            for d in args.dtypes.split(","):
                profile_table(preset, seq_len=args.seq_len, batch=args.batch, dtype_name=d,
                              optimizer=args.optimizer, top=args.profile)
        return
    dtypes = args.dtypes.split(",")
    peaks = {d: matmul_peak(DTYPES[d], device) for d in dtypes}
    what = "forward + backward + clip + AdamW" if args.optimizer else "forward + backward"
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}; batch {args.batch} × T {args.seq_len}; step = {what}; "
          f"compile {args.compile}; tf32 {args.tf32}; malloc {args.malloc}")
    source = "datasheet" if device.type == "cuda" else "2048² matmul"
    print(f"matmul peak ({source}): " + ", ".join(f"{d} {peaks[d]:.0f} GFLOP/s" for d in dtypes))
    print()
    header = "| model | dtype | ours tok/s | HF tok/s | ours / HF | ours GFLOP/s (% peak) | HF GFLOP/s (% peak) |"
    print(header)
    print("|---|---|---:|---:|---:|---:|---:|")
    for preset in args.models.split(","):
        for d in dtypes:
            r = run(preset, seq_len=args.seq_len, batch=args.batch, steps=args.steps, dtype_name=d,
                    optimizer=args.optimizer, device=device, compile=args.compile, with_hf=args.hf)
            r.update(mfu_ours=r["gflops_ours"] / peaks[d], batch=args.batch, seq_len=args.seq_len, tf32=args.tf32)
            if args.json:
                import json

                with open(args.json, "a") as f:
                    f.write(json.dumps(r) + "\n")
            print(
                f"| {preset} | {d} | {r['tok_s_ours']:.0f} | {r['tok_s_hf']:.0f} | {r['ratio']:.2f}× "
                f"| {r['gflops_ours']:.0f} ({100 * r['gflops_ours'] / peaks[d]:.0f}%) "
                f"| {r['gflops_hf']:.0f} ({100 * r['gflops_hf'] / peaks[d]:.0f}%) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
