"""Small shared helpers: device and dtype choice, seeding, rank-aware printing, atomic file writes.

Nothing here imports the rest of the package, so every module may use it.

    python -c "from gpt2.common import pick_device; print(pick_device())"
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from gpt2.errors import UserError, UserFileNotFoundError

if TYPE_CHECKING:  # torch costs ~1 s to import; tokenizer and data workers use this module without it
    import torch

DeviceName = Literal["auto", "cpu", "cuda", "mps"]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def cache_dir() -> Path:
    """Where downloaded files (vocabularies, corpora, weights) are kept: $GPT2_CACHE or ~/.cache/gpt2-scratch."""
    return Path(os.environ.get("GPT2_CACHE", Path.home() / ".cache" / "gpt2-scratch")).expanduser()


def pick_device(name: str = "auto") -> torch.device:
    """Resolve "auto" to the best device present; refuse a device that is not there."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name!r} asked for, but CUDA is not available here; use device=cpu or auto")
    return device


# Every choice the package makes from the CPU's bf16 ability (train.dtype=auto, optim.muon_ns_dtype=auto)
# goes through cpu_has_fast_bf16; GPT2_CPU_BF16 overrides what it finds, so one machine can take either
# branch (the test suite pins it to 0 and sets 1 where it checks the native-bf16 branch).
CPU_BF16_ENV = "GPT2_CPU_BF16"


def native_bf16_in_cpuinfo(cpuinfo: str) -> bool:
    """Whether /proc/cpuinfo's text lists a native bf16 matmul instruction (AVX-512 BF16 or AMX BF16)."""
    flags = {word for line in cpuinfo.splitlines() if line.startswith("flags") for word in line.split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX). Without it PyTorch emulates bf16
    matmuls, slower than fp32 (measured: bench/train_step.py on an AVX2-only AMD EPYC).
    GPT2_CPU_BF16=1 or 0 says yes or no whatever the CPU (set: what this machine has is not asked)."""
    forced = os.environ.get(CPU_BF16_ENV, "")
    if forced:
        if forced not in ("0", "1"):
            raise UserError(f"{CPU_BF16_ENV}={forced!r}: use 1 (take the CPU as having native bf16), 0, or unset it")
        return forced == "1"
    try:
        return native_bf16_in_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False


def resolve_dtype(name: str, device: torch.device) -> tuple[torch.dtype, str]:
    """The training dtype for `name` (auto, fp32, bf16, fp16) on `device`, and why, in words for the log.

    auto: bf16 where the device runs it natively (a CPU with AVX-512 BF16/AMX, an Ampere+ GPU), else fp16
    on CUDA, else fp32. An explicit bf16 runs anywhere (emulated, slower, on a CPU without bf16 matmuls)."""
    import torch

    if name == "fp32":
        return torch.float32, "fp32 as asked"
    if name == "bf16":
        if device.type == "cpu" and not cpu_has_fast_bf16():
            return torch.bfloat16, ("bf16 as asked; this CPU has no AVX-512 BF16/AMX, so PyTorch emulates bf16 "
                                    "matmuls, far slower than fp32 (train.dtype=auto picks fp32 here)")
        return torch.bfloat16, "bf16 as asked"
    if name == "fp16":
        if device.type != "cuda":
            raise UserError("train.dtype=fp16 needs a CUDA device (its grad scaler is CUDA's); use bf16 or fp32")
        return torch.float16, "fp16 as asked (with a grad scaler)"
    if name != "auto":
        raise UserError(f"train.dtype={name!r} is not one of auto, fp32, bf16, fp16")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "auto: bf16, this GPU supports it"
        return torch.float16, "auto: fp16, this GPU has no bf16"
    if device.type == "cpu":
        if cpu_has_fast_bf16():
            return torch.bfloat16, "auto: bf16, this CPU has native bf16 matmuls (AVX-512 BF16/AMX)"
        return torch.float32, "auto: fp32, this CPU has no AVX-512 BF16/AMX (bf16 would be emulated, slower)"
    return torch.float32, f"auto: fp32 on {device.type}"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) from one number."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rank() -> int:
    """This process's rank under torchrun (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


def print_result(result: Any, *, as_json: bool, render: Callable[[Any], str] | None = None,
                 one_line: bool = False) -> None:
    """The one way a verb prints what it measured or found: JSON for a program (`--json`: indented, or one line
    when it is one record among other lines of output), else `render(result)` for a person."""
    if as_json or render is None:
        print(json.dumps(result, indent=None if one_line else 2, ensure_ascii=False))
    else:
        print(render(result))


def print0(*args: object, **kwargs: object) -> None:
    """print() on rank 0 only, so torchrun runs do not repeat every line N times."""
    if rank() == 0:
        print(*args, **kwargs)  # type: ignore[call-overload]


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write a file under a temporary name in the same directory, then rename it into place.

    A crash mid-write leaves the old file (or none), never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """atomic_write_bytes for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str], *, tmp: Path | None = None) -> Iterator[Path]:
    """Yield a temporary sibling directory to fill; on success it replaces `path` whole.

    Used for checkpoints and saved models: readers see the old directory or the new one, never a mix.
    `tmp` is a temporary sibling made already (one that several processes have written into).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tmp is None:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------- distributed
def world() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment; (0, 0, 1) when run plainly."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init_distributed(device: torch.device) -> tuple[int, int, int, torch.device]:
    """Join the torchrun process group (NCCL on CUDA, gloo on CPU) and pick this rank's device.

    Returns (rank, local_rank, world_size, device). Without torchrun it does nothing.
    """
    import torch

    rank_, local_rank, world_size = world()
    if world_size == 1:
        return 0, 0, 1, device
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank_, local_rank, world_size, device


def destroy_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of handing large blocks back to the kernel.

    By default every allocation above a threshold (128 KB, adapting up to 32 MB) is a fresh mmap, and
    the kernel page-faults and zeroes it on first touch. A CPU training step allocates hundreds of MB of
    such short-lived tensors (the autocast copies of the weights, the (B·T, V) logits, the optimizer's
    temporaries), so every step paid for those page faults again: about a fifth of a GPT-2 124M bf16
    step on the development machine (bench/train_step.py --malloc). Here big blocks come from the heap,
    which is never trimmed: the process keeps its peak memory, and steps reuse it. This is what
    preloading jemalloc or tcmalloc buys, as PyTorch's CPU performance guide recommends.

    Linux/glibc only; returns whether it took effect. GPT2_KEEP_FREED_MEMORY=0 turns it off.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux") or os.environ.get("GPT2_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    # Trim threshold at its maximum (never give heap memory back), then no mmap for large blocks.
    return bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1)) and bool(mallopt(M_MMAP_MAX, 0))


# ------------------------------------------------------------------- run and checkpoint directories
# Where a run's checkpoints are, which is newest, and what its metrics.jsonl says: read by config (a
# run's run.yaml), the loader, eval and the trainer alike, so it lives below all of them
# (gpt2.train.checkpoint and gpt2.train.metrics write them).
_STEP_DIR = re.compile(r"^step-(\d{6,})$")
TRAINER_STATE = "trainer_state.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary, half-written ones are not listed)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and _STEP_DIR.match(p.name) and (p / TRAINER_STATE).is_file()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))  # type: ignore[union-attr]


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a run directory (via `latest`, else the newest) or a checkpoint itself."""
    path = Path(path)
    if (path / TRAINER_STATE).is_file():
        return path
    if not path.is_dir():
        raise UserFileNotFoundError(f"no run or checkpoint directory at {path}")
    latest = path / "latest"
    if latest.is_file():
        candidate = path / latest.read_text().strip()
        if (candidate / TRAINER_STATE).is_file():
            return candidate
    found = list_checkpoints(path)
    if not found:
        raise UserFileNotFoundError(f"{path} holds no complete checkpoint (step-NNNNNN/ with {TRAINER_STATE})")
    return found[-1]


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
