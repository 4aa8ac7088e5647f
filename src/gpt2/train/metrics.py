"""Training metrics: metrics.jsonl, TensorBoard events, the loss.png plot, and MFU against the device's peak.

    python -c "from gpt2.train.metrics import plot_losses; print(plot_losses('runs/shakespeare-cpu'))"   # redraw loss.png

MFU (model FLOPs utilisation, PaLM appendix B) = matmul FLOPs the model needs per second / the device's
peak. On GPUs the peak is the datasheet's dense bf16 figure; on CPUs, which have no datasheet figure
torch can see, it is measured once (a large matmul in the run's dtype) and cached per CPU model,
thread count and dtype, so MFU on a CPU reads "fraction of what this machine's matmul can do".
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from gpt2.common import atomic_write_text, cache_dir, read_metrics

# Dense bf16 tensor-core peaks from NVIDIA's datasheets (FLOP/s), matched against the device name.
GPU_BF16_PEAK = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "A10G": 125e12,
    "A10": 125e12,
    "L40S": 362e12,
    "L4": 121e12,
    "4090": 165e12,
    "3090": 71e12,
    "V100": 125e12,  # fp16; V100 has no bf16
    "T4": 65e12,  # fp16
}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_matmul_peak(dtype: torch.dtype, *, n: int = 2048, reps: int = 4, max_seconds: float = 0.5) -> float:
    """Best FLOP/s of a square matmul on the CPU in `dtype`, at sizes doubling from 256 up to n.

    The size stops growing once one product takes `max_seconds`: on a CPU without native bf16 (AVX2
    only), PyTorch emulates bf16 matmuls at about 1 GFLOP/s, where one 2048² product alone would take
    ~20 s. The operands come from a generator of their own: a measurement made on the first run on a
    machine (an empty cache) must not shift the global RNG, or that run's dropout masks would differ from
    every later run with the same seed, and a resume on a fresh machine would not be exact."""
    g = torch.Generator().manual_seed(0)
    best_rate, size = 0.0, 256
    while size <= n:
        a = torch.randn(size, size, generator=g).to(dtype)
        b = torch.randn(size, size, generator=g).to(dtype)
        t = time.perf_counter()
        a @ b  # warm-up (and the time check below)
        first = time.perf_counter() - t
        best = first
        for _ in range(reps if first < max_seconds else 0):
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
        best_rate = max(best_rate, 2 * size**3 / best)
        if first >= max_seconds:
            break
        size *= 2
    return best_rate


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The device's peak matmul FLOP/s in dtype: datasheet on known GPUs, measured and cached on CPUs."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in GPU_BF16_PEAK.items():
            if key in name:
                return flops if dtype != torch.float32 else flops / 2  # TF32 is about half on these parts
        return None
    if device.type != "cpu":
        return None
    # The model name alone does not tell machines apart ("AMD EPYC" is both a Zen 3 and a Zen 4 here):
    # the CPU's ISA level (torch's own dispatch capability) goes into the key too.
    isa = torch.backends.cpu.get_cpu_capability()
    key = f"{_cpu_name()}|{isa}|threads={torch.get_num_threads()}|{dtype}|torch={torch.__version__}"
    path = cache_dir() / "cpu_peak_flops.json"
    try:
        cache = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        cache = {}
    if key not in cache:
        cache[key] = measure_matmul_peak(dtype)
        atomic_write_text(path, json.dumps(cache, indent=2))
    return float(cache[key])


class MetricsLogger:
    """Appends one JSON object per record to metrics.jsonl and mirrors scalars to TensorBoard (rank 0 only)."""

    def __init__(self, run_dir: str | Path, *, enabled: bool = True, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            except ImportError:
                print("note: tensorboard is not installed; no event files (pip install tensorboard)", file=sys.stderr)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None and "step" in record:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k, v, record["step"])
            self.tb.flush()

    def plot(self) -> Path | None:
        """Redraw loss.png from metrics.jsonl."""
        return plot_losses(self.run_dir) if self.enabled else None

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def plot_losses(run_dir: str | Path) -> Path | None:
    """loss.png: train and val loss against tokens seen (and val bits per byte when known)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    records = read_metrics(run_dir)
    train = [(r["tokens"], r["loss"]) for r in records if r.get("kind") == "train"]
    val = [(r["tokens"], r["val_loss"]) for r in records if r.get("kind") == "val"]
    if not train and not val:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1)
    if val:
        ax.plot(*zip(*val), "o-", label="val loss", ms=3)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    bpb = [(r["tokens"], r["val_bpb"]) for r in records if r.get("kind") == "val" and r.get("val_bpb")]
    if bpb:
        ax.set_title(f"last val: {val[-1][1]:.3f} nats/token, {bpb[-1][1]:.3f} bits/byte")
    fig.tight_layout()
    out = Path(run_dir) / "loss.png"
    tmp = out.with_name(".loss.png.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)
    return out
