"""Shared test fixtures: where ../shared/data is, and the skips for tests that need it or a GPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GPT2_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real public corpora and GPT-2's vocabulary); skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the shared data directory {SHARED_DATA} (set GPT2_SHARED_DATA to point elsewhere)")
    return SHARED_DATA


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, split the cores between the workers: each worker's torch (and every process a
    test starts from it) gets its share, instead of every worker spinning up threads for all the cores."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        share = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(share)
        torch.set_num_threads(share)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
