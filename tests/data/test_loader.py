"""The loader: continuous across shard edges, every target position exactly once per epoch across ranks,
exact resume from state_dict, deterministic for a seed."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from gpt2.data.loader import TokenLoader, TokenStream
from gpt2.data.shards import write_shard

# Awkward shard sizes on purpose: a 1-token shard, a 2-token shard, edges in the middle of windows.
SIZES = [97, 1, 300, 2, 600]
N = sum(SIZES)


def position_shards(tmp_path: Path, sizes: list[int] = SIZES, split: str = "train") -> Path:
    """Shards whose token at stream position p is p itself, so a target's value names its position."""
    d = tmp_path / "shards"
    d.mkdir(parents=True, exist_ok=True)
    start = 0
    for i, n in enumerate(sizes):
        write_shard(d / f"{split}_{i:06d}.bin", np.arange(start, start + n), dtype=np.uint32)
        start += n
    return d


def epoch_batches(loaders: list[TokenLoader]) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """One epoch from each rank's loader (they step in lockstep)."""
    return [list(ld) for ld in loaders]


def make(d: Path, world: int = 2, **kw) -> list[TokenLoader]:
    kw = {"batch_size": 3, "seq_len": 7, **kw}
    return [TokenLoader(d, rank=r, world_size=world, **kw) for r in range(world)]


@pytest.mark.parametrize("shuffle", [False, True])
def test_two_ranks_cover_every_target_exactly_once(tmp_path: Path, shuffle: bool) -> None:
    d = position_shards(tmp_path)
    loaders = make(d, shuffle=shuffle, drop_last=False, seed=3)
    T = 7
    W = (N - 1) // T
    assert loaders[0].n_windows == W == 142
    per_rank = epoch_batches(loaders)
    assert len(per_rank[0]) == len(per_rank[1]) == loaders[0].steps_per_epoch == -(-W // 6)
    targets = Counter()
    for batches in per_rank:
        for x, y in batches:
            assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape and x.shape[1] == T
            assert torch.equal(y, x + 1), "inputs and targets are one continuous stream across shard edges"
            targets.update(y.flatten().tolist())
    assert sorted(targets) == list(range(1, W * T + 1)) and set(targets.values()) == {1}
    # The last, partial step: 142 = 23 × 6 + 4 windows, split 2 + 2 over the ranks.
    assert [b[-1][0].shape[0] for b in per_rank] == [2, 2]


def test_drop_last_drops_exactly_the_documented_windows(tmp_path: Path) -> None:
    d = position_shards(tmp_path)
    loaders = make(d, shuffle=True, drop_last=True, seed=1)
    T, W = 7, 142
    for epoch in range(3):
        per_rank = epoch_batches(loaders)
        assert all(x.shape == (3, T) for b in per_rank for x, _ in b)
        targets = Counter(t for b in per_rank for _, y in b for t in y.flatten().tolist())
        dropped = loaders[0].dropped_windows(epoch)
        assert len(dropped) == W % 6 == 4
        assert np.array_equal(dropped, np.sort(loaders[0].order(epoch)[W - 4:]))
        expected = {w * T + k for w in range(W) if w not in set(dropped.tolist()) for k in range(1, T + 1)}
        assert set(targets) == expected and set(targets.values()) == {1}
    assert not np.array_equal(loaders[0].dropped_windows(0), loaders[0].dropped_windows(1))


def test_matches_a_plain_reference(tmp_path: Path) -> None:
    d = position_shards(tmp_path)
    stream = np.arange(N)
    B, T, world = 2, 5, 2
    loaders = make(d, world=world, batch_size=B, seq_len=T, shuffle=False)
    for step in range(20):
        for r, ld in enumerate(loaders):
            x, y = ld.next_batch()
            start = (step * world + r) * B * T  # DataLoaderLite's layout, minus its shard-edge bug
            assert x.flatten().tolist() == stream[start:start + B * T].tolist()
            assert y.flatten().tolist() == stream[start + 1:start + B * T + 1].tolist()


@pytest.mark.parametrize("drop_last", [True, False])
def test_resume_yields_exactly_the_uninterrupted_batches(tmp_path: Path, drop_last: bool) -> None:
    d = position_shards(tmp_path)
    kw = dict(batch_size=4, seq_len=9, rank=1, world_size=2, shuffle=True, seed=7, drop_last=drop_last)
    ref = TokenLoader(d, **kw)
    steps = ref.steps_per_epoch
    stop = steps + steps // 2  # across an epoch boundary
    for _ in range(stop):
        ref.next_batch()
    state = json.loads(json.dumps(ref.state_dict()))  # survives a round trip through a checkpoint
    expected = [ref.next_batch() for _ in range(2 * steps)]
    resumed = TokenLoader(d, **kw)
    resumed.load_state_dict(state)
    got = [resumed.next_batch() for _ in range(2 * steps)]
    for (x0, y0), (x1, y1) in zip(expected, got):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_resume_with_another_world_size_still_covers_the_epoch_once(tmp_path: Path) -> None:
    d = position_shards(tmp_path)
    two = make(d, world=2, shuffle=True, seed=5, drop_last=False)
    seen = Counter()
    for _ in range(10):
        for ld in two:
            seen.update(ld.next_batch()[1].flatten().tolist())
    state = two[0].state_dict()
    one = TokenLoader(d, batch_size=5, seq_len=7, shuffle=True, seed=5, drop_last=False)
    one.load_state_dict(state)
    for _x, y in one:
        seen.update(y.flatten().tolist())
    assert sorted(seen) == list(range(1, 142 * 7 + 1)) and set(seen.values()) == {1}


def test_seed_determinism(tmp_path: Path) -> None:
    d = position_shards(tmp_path)
    a = [TokenLoader(d, batch_size=2, seq_len=7, seed=11).next_batch()[0] for _ in range(2)]
    b = TokenLoader(d, batch_size=2, seq_len=7, seed=12).next_batch()[0]
    assert torch.equal(a[0], a[1]) and not torch.equal(a[0], b)


def test_load_state_dict_refuses_other_data(tmp_path: Path) -> None:
    d = position_shards(tmp_path)
    state = TokenLoader(d, batch_size=2, seq_len=7).state_dict()
    with pytest.raises(ValueError, match="seq_len=7 but this loader has seq_len=8"):
        TokenLoader(d, batch_size=2, seq_len=8).load_state_dict(state)
    with pytest.raises(ValueError, match="seed=0 but this loader has seed=1"):
        TokenLoader(d, batch_size=2, seq_len=7, seed=1).load_state_dict(state)
    other = position_shards(tmp_path / "o", sizes=[50])
    with pytest.raises(ValueError, match="n_tokens=1000"):
        TokenLoader(other, batch_size=2, seq_len=7).load_state_dict(state)


def test_stream_slices_cross_shard_edges(tmp_path: Path) -> None:
    s = TokenStream(sorted(position_shards(tmp_path).glob("train_*.bin")))
    assert len(s) == N
    for a, b in [(0, N), (95, 102), (97, 98), (397, 401), (999, 1000), (5, 5)]:
        assert s[a:b].tolist() == list(range(a, b))


def test_bad_arguments_and_directories(tmp_path: Path) -> None:
    d = position_shards(tmp_path, sizes=[20])
    with pytest.raises(ValueError, match="fewer than one global batch"):
        TokenLoader(d, batch_size=2, seq_len=5, world_size=2)
    assert len(TokenLoader(d, batch_size=2, seq_len=5, world_size=2, drop_last=False)) == 1
    with pytest.raises(ValueError, match="not enough for one window"):
        TokenLoader(d, batch_size=1, seq_len=20)
    with pytest.raises(ValueError, match=r"rank=2 must be in \[0, world_size=2\)"):
        TokenLoader(d, batch_size=1, seq_len=4, rank=2, world_size=2)
    with pytest.raises(FileNotFoundError, match=r"no val_\*\.bin shards \(splits here: train\)"):
        TokenLoader(d, split="val", batch_size=1, seq_len=4)
    (d / ".prepare-state.json").write_text("{}")
    with pytest.raises(ValueError, match="has not finished"):
        TokenLoader(d, batch_size=1, seq_len=4)


def test_reads_prepared_shards(shared_data: Path, tmp_path: Path, gpt2_tok) -> None:
    from gpt2.data.prepare import prepare
    from gpt2.data.shards import read_shard

    (tmp_path / "d.txt").write_bytes((shared_data / "tinyshakespeare.txt").read_bytes()[:60_000])
    prepare(tmp_path / "d.txt", out=tmp_path / "out", tokenizer=gpt2_tok, workers=1, delimiter="blank",
            shard_size=3_000, val_fraction=0.1)
    stream = np.concatenate([read_shard(p) for p in sorted((tmp_path / "out").glob("train_*.bin"))])
    ld = TokenLoader(tmp_path / "out", batch_size=4, seq_len=32, shuffle=False)
    x, y = ld.next_batch()
    assert x.flatten().tolist() == stream[:128].tolist() and y.flatten().tolist() == stream[1:129].tolist()
    assert TokenLoader(tmp_path / "out", split="val", batch_size=1, seq_len=32).n_windows > 0


@pytest.mark.gpu
def test_moves_batches_to_cuda_without_blocking(tmp_path: Path) -> None:
    d = position_shards(tmp_path)
    x, y = TokenLoader(d, batch_size=2, seq_len=7, device="cuda", pin_memory=True).next_batch()
    assert x.is_cuda and y.is_cuda and torch.equal(y.cpu(), x.cpu() + 1)
