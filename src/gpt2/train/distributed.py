"""What the trainer does differently under torchrun: DDP or FSDP2 wrapping, gradient sync, gathered and
sharded checkpoints.

    torchrun --nproc_per_node=2 -m gpt2 train tiny-test train.distributed=fsdp
    torchrun --nproc_per_node=2 -m gpt2 train tiny-test train.distributed=fsdp checkpoint.sharded=true
    gpt2 checkpoint consolidate runs/tiny-test/step-000008 out/tiny-hf     # sharded → one HF directory

The model stays a plain single-device module; DDP, FSDP2 (`fully_shard` on each block, then on the
root, which holds the embeddings, the tied head and the final norm) and torch.compile are applied from
outside, as torchtitan does. FSDP2 swaps every parameter for a sharded DTensor, so the optimizer is
built on the wrapped model, never before it.

Checkpoints under FSDP are gathered by default (full state on rank 0, one HF directory like any
other run's). With `checkpoint.sharded=true` each rank writes its own shards through
torch.distributed.checkpoint (DCP) into `step-NNNNNN/sharded/`, beside config.json, the tokenizer,
run.yaml and trainer_state.pt: nothing is ever gathered, so a model too large for one rank's memory
can still be saved, resumed on the same layout, and turned into an HF directory offline.
"""

from __future__ import annotations

import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist

from gpt2.errors import UserError, UserFileNotFoundError
from gpt2.model.gpt2 import GPT2LMHeadModel

Mode = Literal["single", "ddp", "fsdp"]
SHARDED_DIR = "sharded"


def wrap_model(model: GPT2LMHeadModel, *, mode: Mode, device: torch.device, compile: bool) -> torch.nn.Module:
    """DDP or FSDP2, then torch.compile if asked. Under FSDP the model object itself becomes the sharded
    module (fully_shard works in place), so `model` and the returned module share their parameters."""
    wrapped: torch.nn.Module = model
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.transformer.h:
            fully_shard(block)
        fully_shard(model)
    elif mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        wrapped = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if compile:
        wrapped = torch.compile(wrapped)
    return wrapped


def set_grad_sync(wrapped: torch.nn.Module, model: torch.nn.Module, *, mode: Mode, sync: bool) -> None:
    """Reduce gradients across ranks only on the last micro-step of an accumulation (both DDP and FSDP
    would otherwise all-reduce / reduce-scatter after every micro-step: same result, more traffic)."""
    if mode == "ddp":
        inner = getattr(wrapped, "_orig_mod", wrapped)  # under torch.compile the DDP module is inside
        inner.require_backward_grad_sync = sync
    elif mode == "fsdp":
        model.set_requires_gradient_sync(sync)  # type: ignore[operator]


def reshard_after_eval(model: torch.nn.Module, *, mode: Mode) -> None:
    """FSDP2 keeps the root's parameters gathered after a forward, expecting the backward that training
    runs next; after evaluation's forward-only passes no backward comes, so shard them again here (else
    model.parameters() would no longer be the sharded tensors the optimizer holds)."""
    if mode == "fsdp":
        model.reshard()  # type: ignore[operator]


def scalar(t: torch.Tensor) -> float:
    """A Python float from a tensor or a (replicated) DTensor such as FSDP's clipped gradient norm."""
    full = getattr(t, "full_tensor", None)
    return float((full() if full is not None else t).item())


# ------------------------------------------------------------------------------- gathered state (rank 0)
def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, mode: Mode) -> dict[str, Any]:
    """The optimizer state as one process would hold it: FSDP's shards are gathered (keys are parameter
    names, on the CPU, complete on rank 0 only); otherwise the optimizer's own state_dict()."""
    if mode != "fsdp":
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], *,
                              mode: Mode) -> None:
    """Inverse of full_optimizer_state: each rank keeps its own shard of the gathered state."""
    if mode != "fsdp":
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def model_class(model: torch.nn.Module) -> type[torch.nn.Module]:
    """The model's own class (GPT2LMHeadModel, GPT2ForSequenceClassification): fully_shard swaps a module's
    class for an FSDP subclass of it, created inside torch."""
    return next(c for c in type(model).__mro__ if c.__module__.startswith("gpt2."))


def plain_model(model: GPT2LMHeadModel, *, mode: Mode, rank: int,
                device: torch.device | None = None) -> GPT2LMHeadModel | None:
    """A plain single-device module with the current weights, on rank 0 (None elsewhere).

    Without FSDP that is the model itself. Under FSDP every rank takes part in gathering the full
    weights (to the CPU, so the device never holds them twice), and rank 0 builds a plain module from
    them (moved to `device` when given: samples and HellaSwag run there; checkpoints stay on the CPU).
    These then run with no collective inside, so ranks never disagree on how many forwards they make."""
    if mode != "fsdp":
        return model if rank == 0 else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank != 0:
        return None
    with torch.device("meta"):
        plain = model_class(model)(model.config)
    plain.load_state_dict(sd, assign=True)
    if hasattr(plain, "lm_head"):
        plain.lm_head.weight = plain.transformer.wte.weight  # assign=True replaced the tied tensor: tie again
    return plain.eval() if device is None else plain.to(device).eval()


# ------------------------------------------------------------------------------------ sharded (DCP)
def _state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}


def shared_tmp_dir(run_dir: Path, name: str, *, rank: int) -> Path:
    """A temporary checkpoint directory made by rank 0 and named to every rank (so all can write into it)."""
    box: list[Any] = [None]
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        box[0] = tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=run_dir)
    dist.broadcast_object_list(box, src=0)
    return Path(box[0])


def save_sharded(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every rank writes its own shards of the model and optimizer into directory/sharded (collective)."""
    import torch.distributed.checkpoint as dcp

    dcp.save(_state(model, optimizer), checkpoint_id=str(directory / SHARDED_DIR))


# What a DCP checkpoint's .metadata is made of, beyond the classes of torch.distributed.checkpoint.metadata.
_METADATA_GLOBALS = {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
                     ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
                     ("collections", "OrderedDict")}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's `.metadata` naming only the classes checkpoint metadata is built from (and torch
    dtypes), so a crafted file cannot call anything else: torch's own reader uses a bare pickle.load."""

    def find_class(self, module: str, name: str) -> Any:
        import torch.distributed.checkpoint.metadata as meta

        if module == meta.__name__ and isinstance(getattr(meta, name, None), type):
            return getattr(meta, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) in _METADATA_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's metadata")


def _safe_reader(path: Path) -> Any:
    """A DCP FileSystemReader whose metadata goes through _MetadataUnpickler; the shards themselves are read
    by DCP with torch.load(weights_only=True)."""
    from torch.distributed.checkpoint import FileSystemReader

    class SafeMetadataReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            try:
                with open(path / ".metadata", "rb") as f:
                    metadata = _MetadataUnpickler(f).load()
            except pickle.UnpicklingError as e:
                raise UserError(f"refusing to read {path / '.metadata'}: {e} (it could run code when loaded)") from None
            if hasattr(metadata, "storage_meta"):  # as torch's reader does, where its version has one
                from torch.distributed.checkpoint.metadata import StorageMeta

                if metadata.storage_meta is None:
                    metadata.storage_meta = StorageMeta()
                metadata.storage_meta.load_id = getattr(self, "load_id", None)
            return metadata

    reader = SafeMetadataReader(str(path))
    reader.read_metadata()  # refused here, as one UserError, rather than inside DCP's collective load
    return reader


def load_sharded(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Read directory/sharded back into the sharded model and optimizer (collective; same layout)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    state = _state(model, optimizer)  # also creates the optimizer's state tensors for DCP to fill
    dcp.load(state, storage_reader=_safe_reader(directory / SHARDED_DIR))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optimizer"])


def is_sharded(checkpoint: Path) -> bool:
    return (Path(checkpoint) / SHARDED_DIR / ".metadata").is_file()


def consolidate(checkpoint: str | Path, out: str | Path) -> Path:
    """A sharded checkpoint → one HF directory (config.json, model.safetensors, tokenizer, chat format), in
    one process without a process group (DCP re-shards on load)."""
    import shutil

    import torch.distributed.checkpoint as dcp

    from gpt2.common import atomic_directory
    from gpt2.model.hf import save_pretrained

    checkpoint, out = Path(checkpoint), Path(out)
    if not is_sharded(checkpoint):
        raise UserFileNotFoundError(f"{checkpoint} is not a sharded checkpoint (no {SHARDED_DIR}/.metadata); "
                                    "checkpoints written without checkpoint.sharded=true are HF directories already")
    from gpt2.model.classify import GPT2ForSequenceClassification
    from gpt2.model.config import CLASSIFIER_ARCHITECTURE
    from gpt2.model.hf import read_config

    config, architecture = read_config(checkpoint)
    model = (GPT2ForSequenceClassification if architecture == CLASSIFIER_ARCHITECTURE else GPT2LMHeadModel)(config)
    state = {"model": model.state_dict()}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, storage_reader=_safe_reader(checkpoint / SHARDED_DIR), no_dist=True)
    model.load_state_dict(state["model"])
    with atomic_directory(out) as tmp:
        save_pretrained(model, tmp)  # type: ignore[arg-type]
        for f in checkpoint.iterdir():  # tokenizer files, chat format, run.yaml: everything but the shards
            if f.is_file() and f.name not in ("config.json", "trainer_state.pt"):
                shutil.copy2(f, tmp / f.name)
    return out


def check_layout(state: dict[str, Any], *, world_size: int, grad_accum: int, mode: Mode, checkpoint: Path) -> None:
    """A checkpoint resumes exactly only on the layout that wrote it (the data order and optimizer shards
    depend on it)."""
    saved = (state.get("world_size", 1), state.get("grad_accum"), state.get("distributed", mode))
    if saved != (world_size, grad_accum, mode):
        raise UserError(
            f"{checkpoint} was written by {saved[0]} process(es), grad_accum={saved[1]}, {saved[2]}; resume with "
            f"the same layout (now {world_size}, grad_accum={grad_accum}, {mode}), or start a new run from its "
            f"weights with model.init_from={checkpoint}"
        )
