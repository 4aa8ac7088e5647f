"""A sharded (DCP) checkpoint's `.metadata` is a pickle: it is read naming only checkpoint-metadata classes.

    python -m pytest -q tests/train/test_sharded_metadata.py
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch

from gpt2.errors import UserError
from gpt2.train.distributed import _safe_reader


class _Payload:
    """Unpickling this creates a file: what a crafted checkpoint would do."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.mkdir, (str(self.target),))


def test_a_real_dcp_checkpoint_loads_through_the_safe_reader(tmp_path) -> None:
    import torch.distributed.checkpoint as dcp

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, checkpoint_id=str(tmp_path),
                 no_dist=True)
        state = {"model": {k: torch.zeros_like(v) for k, v in model.state_dict().items()}}
        dcp.load(state, storage_reader=_safe_reader(tmp_path), no_dist=True)
    for k, v in model.state_dict().items():
        assert torch.equal(state["model"][k], v)


def test_a_crafted_metadata_pickle_is_refused_and_does_not_run(tmp_path) -> None:
    target = tmp_path / "created-by-the-pickle"
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / ".metadata").write_bytes(pickle.dumps(_Payload(target)))
    with pytest.raises(UserError, match=r"refusing to read .*\.metadata: posix\.mkdir is not part"):
        _safe_reader(sharded)
    assert not target.exists()
    pickle.loads((sharded / ".metadata").read_bytes())  # the same bytes, unpickled plainly, do run
    assert target.exists()
