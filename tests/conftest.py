"""Shared test fixtures: where ../shared/data is, `gpt2` run in this process, and the skips for tests that
need the data or a GPU."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
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


@pytest.fixture
def gpt2_main(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
              ) -> Callable[..., subprocess.CompletedProcess[str]]:
    """`gpt2 ARGS` in this process: gpt2.cli.main's exit status (argparse's SystemExit too) and what it printed.

    For the tests of our own validation (exit 2 and one `error:` line), which need no process of their own:
    a subprocess costs ~3 s of importing torch. `env` entries are set for the call's duration (monkeypatch).
    The process boundary itself (signals, torchrun, kills, a fresh interpreter) keeps real subprocesses."""

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        from gpt2.cli import main

        with monkeypatch.context() as m:
            m.delenv("GPT2_DEBUG", raising=False)  # it turns the one `error:` line into a traceback
            for key, value in (env or {}).items():
                m.setenv(key, value)
            capsys.readouterr()  # drop what came before the call
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse's usage errors
                code = e.code if isinstance(e.code, int) else 1
            out, err = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out, err)

    return run


_PRIVATE_CACHE: list[str | None] = [None]


def pytest_unconfigure(config: pytest.Config) -> None:
    if _PRIVATE_CACHE[0]:
        import shutil

        shutil.rmtree(_PRIVATE_CACHE[0], ignore_errors=True)


def pytest_configure(config: pytest.Config) -> None:
    """Keep the tests out of the user's cache, take the same CPU branches on every machine, and under
    pytest-xdist split the cores between the workers.

    A private GPT2_CACHE (unless one is set): the tests never read what earlier runs left, and never leave
    behind what a busy test machine measured (the matmul peak that MFU divides by is cached there).
    Each xdist worker's torch (and every process a test starts from it) gets its share of the cores,
    instead of every worker spinning up threads for all of them."""
    # The CPU's bf16 ability picks train.dtype=auto and optim.muon_ns_dtype=auto (gpt2.common.cpu_has_fast_bf16).
    # Pinned to the AVX2-only answer for every test and every process a test starts, so no result depends on
    # the machine; the tests of the native-bf16 branch (AVX-512 BF16, AMX) set GPT2_CPU_BF16=1 themselves and
    # so run on every machine (bf16 is emulated where the CPU lacks it: slower, same rounding).
    os.environ["GPT2_CPU_BF16"] = "0"
    if "GPT2_CACHE" not in os.environ:
        import tempfile

        os.environ["GPT2_CACHE"] = _PRIVATE_CACHE[0] = tempfile.mkdtemp(prefix="gpt2-test-cache-")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        share = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(share)
        torch.set_num_threads(share)


# The longest test files (a minute or more of CPU each on 2 cores), run first: pytest-xdist hands out whole
# files in collection order, so with these last one worker would still be busy long after the other.
# Measured with --durations on 2 busy cores after the in-process CLI tests (2026-12): 70-140 s each.
LONGEST_FIRST = (
    "train/test_train.py", "train/test_reproducible.py", "train/test_fsdp.py", "generate/test_hf_generate.py",
    "data/test_data_cli.py", "generate/test_generate_cli.py", "finetune/test_classify_cli.py",
    "train/test_train_features.py", "finetune/test_finetune.py", "train/test_muon.py",
    "test_newcomer.py",  # one test of ~10 `gpt2` processes in a row
)


def _rank(item: pytest.Item) -> int:
    path = item.path.as_posix()
    return next((i for i, name in enumerate(LONGEST_FIRST) if path.endswith("tests/" + name)), len(LONGEST_FIRST))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=_rank)  # stable: the rest keep their order
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
