"""Distributed, resumable (B, T) batches from token shards, read by memory map.

    python -c "from gpt2.data import TokenLoader; print(next(iter(TokenLoader('data/shk', batch_size=2, seq_len=8))))"

    loader = TokenLoader("data/shk", split="train", batch_size=8, seq_len=1024, rank=rank, world_size=world)
    x, y = loader.next_batch()          # (B, T) int64 inputs and targets, y = x shifted left by one
    ckpt["data"] = loader.state_dict()  # … later, in a new process:
    loader.load_state_dict(ckpt["data"])

The shards of a split are read as one continuous token stream (shard edges are invisible: the token
at an edge is neither lost nor repeated — the bug reported in build-nanogpt #105 and llm.c #321, where
each shard was windowed on its own). With N tokens and context T the stream holds W = (N - 1) // T
windows; window w is x = tokens[w*T : w*T+T], y = tokens[w*T+1 : w*T+T+1], so window w's targets are
positions w*T+1 … w*T+T and every position 1 … W*T is a target of exactly one window. Position 0 (no
context) and the last (N - 1) % T positions (too few for a window) are never targets.

An epoch visits each window once, in sequential order or (shuffle=True) a permutation drawn from
(seed, epoch), so it is the same on every rank and on every run. A step consumes B × world_size
consecutive windows of that order: rank r takes the r-th block of B. `drop_last=True` (the default,
for training) skips the last W mod (B × world_size) windows of each epoch's order, so every rank
steps in lockstep with full (B, T) batches; with shuffling those are different windows every epoch.
`drop_last=False` (for evaluation) ends the epoch with one smaller batch, its windows spread as evenly
as possible over the ranks (a rank may get a (0, T) batch, so every rank still takes the same number
of steps).
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpt2.data.shards import read_header, read_shard
from gpt2.errors import UserError, UserFileNotFoundError

_STATE_VERSION = 1


def shard_files(data: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *, split: str = "train") -> list[Path]:
    """The shard files of `split` in a prepared directory, or the files of a glob or an explicit list."""
    if not isinstance(data, (str, os.PathLike)):
        files = [Path(p) for p in data]
    else:
        d = Path(data)
        if d.is_dir():
            if (d / ".prepare-state.json").is_file() and not (d / "meta.json").is_file():
                raise UserError(f"{d}: `gpt2 data prepare` has not finished here (run it again to resume)")
            files = sorted(d.glob(f"{split}_*.bin"))
            if not files:
                found = sorted({p.name.rsplit("_", 1)[0] for p in d.glob("*_*.bin")})
                raise UserFileNotFoundError(f"{d}: no {split}_*.bin shards (splits here: {', '.join(found) or 'none'})")
            meta = d / "meta.json"
            if meta.is_file():
                listed = [s["file"] for s in json.loads(meta.read_text())["splits"].get(split, {}).get("shards", [])]
                if listed != [p.name for p in files]:
                    raise UserError(f"{d}: the {split} shards on disk {[p.name for p in files]} are not the ones "
                                     f"meta.json lists {listed}")
        elif glob.has_magic(str(data)):
            files = [Path(p) for p in sorted(glob.glob(str(data)))]
            if not files:
                raise UserFileNotFoundError(f"no shard files match {str(data)!r}")
        elif d.is_file():
            files = [d]
        else:
            raise UserFileNotFoundError(f"{d}: no such shard directory or file")
    if not files:
        raise UserError("no shard files given")
    return files


class TokenStream:
    """Several shards as one read-only token sequence: `stream[a:b]` may span shard edges."""

    def __init__(self, files: Sequence[str | os.PathLike[str]]) -> None:
        self.files = [Path(f) for f in files]
        headers = [read_header(f) for f in self.files]
        self.dtype = headers[0].dtype
        if any(h.dtype != self.dtype for h in headers):
            raise UserError(f"shards mix token dtypes: {sorted({h.dtype.name for h in headers})}")
        self._arrays: list[np.ndarray] | None = None
        counts = [h.n_tokens for h in headers]
        self.offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])  # shard i = [off[i], off[i+1])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def arrays(self) -> list[np.ndarray]:
        # Opened lazily, so a loader can be built (and pickled to a DataLoader worker) before mapping.
        if self._arrays is None:
            self._arrays = [read_shard(f) for f in self.files]
        return self._arrays

    def read(self, start: int, stop: int, out: np.ndarray) -> None:
        """Copy tokens[start:stop] into `out` (any integer dtype), crossing shard edges as needed."""
        assert 0 <= start <= stop <= len(self), "read within the stream"
        i = int(np.searchsorted(self.offsets, start, side="right")) - 1
        pos = 0
        while start < stop:
            a = start - int(self.offsets[i])
            n = min(stop, int(self.offsets[i + 1])) - start
            out[pos:pos + n] = self.arrays[i][a:a + n]
            pos += n
            start += n
            i += 1

    def __getitem__(self, s: slice) -> np.ndarray:
        start, stop, step = s.indices(len(self))
        assert step == 1, "contiguous slices only"
        out = np.empty(max(stop - start, 0), dtype=self.dtype)
        self.read(start, max(start, stop), out)
        return out


class TokenLoader:
    """(B, T) input/target batches for one rank of `world_size`; see the module docstring for the layout."""

    def __init__(
        self,
        data: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        split: str = "train",
        batch_size: int,
        seq_len: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        device: str | torch.device = "cpu",
        pin_memory: bool = False,
    ) -> None:
        if batch_size < 1:
            raise UserError(f"batch_size={batch_size} must be at least 1")
        if seq_len < 1:
            raise UserError(f"seq_len={seq_len} must be at least 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(f"rank={rank} must be in [0, world_size={world_size})")
        self.stream = TokenStream(shard_files(data, split=split))
        self.split = split
        self.B, self.T = batch_size, seq_len
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed, self.drop_last = shuffle, int(seed), drop_last
        self.device = torch.device(device)
        self.pin_memory = pin_memory
        self.n_windows = max(len(self.stream) - 1, 0) // seq_len
        if self.n_windows == 0:
            raise UserError(f"the {split} split has {len(self.stream)} tokens: not enough for one window of "
                             f"seq_len={seq_len} (needs {seq_len + 1})")
        if drop_last and self.n_windows < batch_size * world_size:
            raise UserError(f"the {split} split has {self.n_windows} windows of seq_len={seq_len}, fewer than one "
                             f"global batch (batch_size={batch_size} × world_size={world_size}); lower them or "
                             "use drop_last=False")
        self.epoch = 0
        self.offset = 0  # windows of this epoch's order consumed by all ranks together
        self._order: np.ndarray | None = None
        self._order_epoch = -1

    # ----------------------------------------------------------------------------- layout
    @property
    def steps_per_epoch(self) -> int:
        """Batches each rank yields per epoch (the same on every rank)."""
        g = self.B * self.world_size
        return self.n_windows // g if self.drop_last else -(-self.n_windows // g)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def order(self, epoch: int) -> np.ndarray:
        """The window order of `epoch` (identical on every rank)."""
        if not self.shuffle:
            return np.arange(self.n_windows, dtype=np.int64)
        if self._order_epoch != epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
            self._order_epoch = epoch
        assert self._order is not None
        return self._order

    def dropped_windows(self, epoch: int) -> np.ndarray:
        """The windows drop_last skips in `epoch` (none with drop_last=False)."""
        if not self.drop_last:
            return np.zeros(0, dtype=np.int64)
        used = self.steps_per_epoch * self.B * self.world_size
        return np.sort(self.order(epoch)[used:])

    def _rank_span(self, offset: int) -> tuple[int, int, int]:
        """(first, count, global step size) of this rank's windows in the step that starts at `offset`."""
        g = self.B * self.world_size
        if offset + g <= self.n_windows:
            return offset + self.rank * self.B, self.B, g
        left = self.n_windows - offset  # the last, partial step (drop_last=False only)
        base, extra = divmod(left, self.world_size)
        first = offset + self.rank * base + min(self.rank, extra)
        return first, base + (1 if self.rank < extra else 0), left

    # ---------------------------------------------------------------------------- batches
    def _read(self, windows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        T = self.T
        n = len(windows)
        if n and windows[-1] - windows[0] == n - 1 and (n == 1 or bool(np.all(np.diff(windows) == 1))):
            # Consecutive windows share edge tokens: one read of n*T + 1 tokens.
            flat = np.empty(n * T + 1, dtype=np.int64)
            self.stream.read(int(windows[0]) * T, int(windows[0]) * T + n * T + 1, flat)
            x = torch.from_numpy(flat[:-1].reshape(n, T).copy())  # (B, T)
            y = torch.from_numpy(flat[1:].reshape(n, T).copy())  # (B, T)
        else:
            buf = np.empty((n, T + 1), dtype=np.int64)  # (B, T+1)
            for row, w in enumerate(windows):
                self.stream.read(int(w) * T, int(w) * T + T + 1, buf[row])
            x = torch.from_numpy(np.ascontiguousarray(buf[:, :-1]))  # (B, T)
            y = torch.from_numpy(np.ascontiguousarray(buf[:, 1:]))  # (B, T)
        if self.device.type != "cpu":
            if self.pin_memory:
                x, y = x.pin_memory(), y.pin_memory()
            x = x.to(self.device, non_blocking=self.pin_memory)
            y = y.to(self.device, non_blocking=self.pin_memory)
        elif self.pin_memory and torch.cuda.is_available():
            x, y = x.pin_memory(), y.pin_memory()
        return x, y

    def _epoch_done(self) -> bool:
        left = self.n_windows - self.offset
        return left <= 0 or (self.drop_last and left < self.B * self.world_size)

    def next_windows(self) -> np.ndarray:
        """Advance by one step and return the window indices this rank reads (rolls over epochs)."""
        if self._epoch_done():
            self.epoch += 1
            self.offset = 0
        first, count, step = self._rank_span(self.offset)
        windows = self.order(self.epoch)[first:first + count]
        self.offset += step
        return windows

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y), each (B, T) int64; epochs roll over without end (training by steps)."""
        return self._read(self.next_windows())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The rest of the current epoch (all of it when it has not started), then stop."""
        if self._epoch_done():
            self.epoch += 1
            self.offset = 0
        while not self._epoch_done():
            yield self.next_batch()

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Where the loader stands: resume with load_state_dict on any rank, even with another world size."""
        return {"version": _STATE_VERSION, "epoch": self.epoch, "offset": self.offset, "seed": self.seed,
                "shuffle": self.shuffle, "seq_len": self.T, "n_tokens": len(self.stream),
                "batch_size": self.B, "world_size": self.world_size, "drop_last": self.drop_last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where `state` was taken: the next batch is the one an uninterrupted run yields."""
        for key, mine in (("seq_len", self.T), ("n_tokens", len(self.stream)), ("seed", self.seed),
                          ("shuffle", self.shuffle)):
            if state.get(key) != mine:
                raise UserError(f"loader state has {key}={state.get(key)!r} but this loader has {key}={mine!r}; "
                                 "resume with the same data, seq_len, seed and shuffle")
        if not 0 <= int(state["offset"]) <= self.n_windows:
            raise UserError(f"loader state offset={state['offset']} is outside [0, {self.n_windows}]")
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])

    def reset(self) -> None:
        """Back to the start of epoch 0."""
        self.epoch, self.offset = 0, 0
