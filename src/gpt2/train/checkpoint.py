"""Checkpoints: one self-contained, HF-loadable directory per step, written atomically, the last k kept.

    gpt2 checkpoint list runs/default        # list a run's checkpoints

    runs/default/
      step-000200/   config.json  model.safetensors  tokenizer files  run.yaml  trainer_state.pt
      step-000400/   ...
      latest         a one-line file naming the newest complete checkpoint
      best           (tasks with a validation metric) the checkpoint that scored best; never pruned

A checkpoint is filled under a temporary name and renamed when whole, then `latest` is rewritten
(also by rename), so a kill at any moment leaves the previous checkpoint intact and `latest` pointing
at a complete one. `transformers.GPT2LMHeadModel.from_pretrained("runs/default/step-000400")` loads the
model as it is; trainer_state.pt holds what exact resumption needs (optimizer, schedule, step, tokens
seen, data position, RNG states of every rank).

trainer_state.pt holds only tensors and plain Python values (numpy's RNG state as a tensor and ints), and
is read with `torch.load(weights_only=True)`, which builds nothing else: a crafted file cannot run code.
A file written before that change holds numpy's RNG state as a numpy array; it is read through the same
restricted loader with exactly numpy's array-rebuilding types allowed (a uint32 array, nothing else), and
resumes as it did. There is no fallback to an unrestricted load.
"""

from __future__ import annotations

import pickle
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gpt2.common import TRAINER_STATE, atomic_directory, atomic_write_text, list_checkpoints

# Where a run's checkpoints are is read below every layer (gpt2.common); re-exported beside the writer.
from gpt2.common import resolve_checkpoint as resolve_checkpoint
from gpt2.errors import UserError


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model: torch.nn.Module | None,
    trainer_state: dict[str, Any],
    tokenizer: Any = None,
    run_yaml: str | None = None,
    keep_last: int = 3,
    config: Any = None,
    tmp: Path | None = None,
    best: dict[str, Any] | None = None,
    architecture: str = "GPT2LMHeadModel",
    write_model: Callable[[Path], None] | None = None,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write step-NNNNNN atomically, point `latest` at it, and delete all but the newest keep_last.

    A sharded checkpoint (gpt2.train.distributed) passes model=None with the model's `config` and
    `architecture` (its class name, for config.json), and the
    temporary directory `tmp` its ranks have already written their shards into. `best` (the trainer's
    best evaluation so far: metric, value, step, checkpoint) is marked when it is this step, and the
    checkpoint it names is never pruned; it is marked before pruning, so a kill leaves it named.
    `write_model(dir)` writes the model instead of `model.save_pretrained(dir)` (a LoRA run's adapter);
    `extra(dir)` adds files after the model and the tokenizer."""
    run_dir = Path(run_dir)
    final = run_dir / checkpoint_name(step)
    with atomic_directory(final, tmp=tmp) as tmp:
        if write_model is not None:
            write_model(tmp)
        elif model is not None:
            model.save_pretrained(tmp)  # type: ignore[operator]  # the model's own HF class and config
        else:
            config.save(tmp, architecture=architecture)
        if tokenizer is not None:
            tokenizer.save(tmp)
        if extra is not None:
            extra(tmp)
        if run_yaml is not None:
            (tmp / "run.yaml").write_text(run_yaml, encoding="utf-8")
        torch.save(_plain(trainer_state), tmp / TRAINER_STATE)
    atomic_write_text(run_dir / "latest", final.name + "\n")
    if best is not None and best["step"] == step:
        mark_best(run_dir, best)
    spare = run_dir / best["checkpoint"] if best is not None else best_checkpoint(run_dir)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        if old != spare:
            shutil.rmtree(old, ignore_errors=True)
    return final


def mark_best(run_dir: str | Path, best: dict[str, Any]) -> None:
    """Name the best checkpoint so far (`best` holds its directory name; best.json says why)."""
    import json

    run_dir = Path(run_dir)
    atomic_write_text(run_dir / "best.json", json.dumps(best) + "\n")
    atomic_write_text(run_dir / "best", best["checkpoint"] + "\n")


def best_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint `best` names, if there is one and it is complete."""
    marker = Path(run_dir) / "best"
    if not marker.is_file():
        return None
    path = Path(run_dir) / marker.read_text().strip()
    return path if (path / TRAINER_STATE).is_file() else None


def clean_stale(run_dir: str | Path) -> None:
    """Remove temporary directories a killed writer left behind (.step-NNNNNN.*.tmp)."""
    run_dir = Path(run_dir)
    if run_dir.is_dir():
        for p in run_dir.glob(".step-*.tmp"):
            shutil.rmtree(p, ignore_errors=True)


def plain_numpy_rng(state: tuple[Any, ...]) -> dict[str, Any]:
    """np.random.get_state()'s tuple as a tensor and plain values (weights_only=True reads those)."""
    import numpy as np

    name, key, pos, has_gauss, cached = state
    return {"bit_generator": str(name), "key": torch.from_numpy(np.asarray(key, dtype=np.uint32).astype(np.int64)),
            "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def numpy_rng_state(plain: dict[str, Any]) -> tuple[Any, ...]:
    """plain_numpy_rng's dict as np.random.set_state takes it."""
    import numpy as np

    key = plain["key"].numpy().astype(np.uint32)
    return plain["bit_generator"], key, plain["pos"], plain["has_gauss"], plain["cached_gaussian"]


def _plain(obj: Any) -> Any:
    """Numpy scalars (an evaluator's metric) as Python numbers, through dicts, lists and tuples."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if type(obj).__module__ == "numpy" and hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    return obj


def _old_numpy_rng_types() -> list[Any]:
    """What an old trainer_state.pt's numpy RNG state (a uint32 array) needs rebuilt, under the names numpy 1
    and 2 pickle them with: the array-rebuilding function, the array class, the dtype and its uint32 class."""
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1
        from numpy.core.multiarray import _reconstruct
    return [(_reconstruct, "numpy._core.multiarray._reconstruct"), (_reconstruct, "numpy.core.multiarray._reconstruct"),
            np.ndarray, np.dtype, np.dtypes.UInt32DType]


def load_trainer_state(checkpoint: str | Path) -> dict[str, Any]:
    """trainer_state.pt through torch's restricted unpickler (weights_only=True): tensors, plain values, and
    (old checkpoints) numpy's uint32 RNG array; anything else is refused in one line, never built."""
    path = Path(checkpoint) / TRAINER_STATE
    try:
        with torch.serialization.safe_globals(_old_numpy_rng_types()), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # e.g. "Detected pickle protocol 4": the error says it all
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        try:
            unsafe = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(path)) or "objects"
        except Exception:  # not a zip checkpoint: the names are not listed, the load was refused all the same
            unsafe = "objects"
        raise UserError(f"refusing to load {path}: it holds {unsafe} beyond tensors and plain values, which "
                        "could run code when read; resume only from run directories gpt2 train wrote") from None
    except Exception as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if not isinstance(state, dict) or not isinstance(state.get("rng"), list):
        raise UserError(f"cannot read {path}: not a trainer state (a dict with the RNG states of every rank)")
    for rng in state["rng"]:
        numpy_state = rng.get("numpy") if isinstance(rng, dict) else None
        if isinstance(numpy_state, tuple):  # written before the RNG state was stored as a tensor
            key = numpy_state[1]
            if getattr(key, "dtype", None) != "uint32" or getattr(key, "shape", None) != (624,):
                raise UserError(f"cannot read {path}: its numpy RNG state is not MT19937's 624 uint32 words")
            rng["numpy"] = plain_numpy_rng(numpy_state)
    return state
