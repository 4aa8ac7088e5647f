"""What the bench scripts share: the repository root, the CPU's name, argument parsing, timed `gpt2` commands,
JSON results and Markdown tables. Not a benchmark itself; the scripts beside it import it (a script's own
folder is sys.path[0] when it runs):

    from common import REPO, cpu_info, markdown_table, parser, timed, write_results
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")  # what decides the CPU's fast paths (bf16 above all)


def cpu_info() -> tuple[str, list[str]]:
    """The CPU's model name and which of FLAGS it has, from /proc/cpuinfo (Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown", []
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                "unknown")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return name, [f for f in FLAGS if f in flags]


def cpu_name() -> str:
    """One line for a results record: the model name and torch's CPU capability, e.g. 'AMD EPYC (AVX2)'."""
    import torch

    name, _ = cpu_info()
    return f"{name} ({torch.backends.cpu.get_cpu_capability()})"


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser whose description is the first paragraph of a script's docstring."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def timed(argv: list[str]) -> dict:
    """Run `gpt2 ARGV` from the repository root (so recipes' ../shared paths resolve): its command, wall
    seconds, the CPU seconds of its processes (user + sys, every core) and the tail of its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "gpt2", *argv], cwd=REPO, text=True, stdout=subprocess.PIPE)
    wall = time.time() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"gpt2 {' '.join(argv)} failed with exit status {r.returncode}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"gpt2 {' '.join(argv)}: {wall:,.0f} s wall, {cpu:,.0f} s CPU", file=sys.stderr)
    return {"command": "gpt2 " + " ".join(argv), "wall_s": wall, "cpu_s": cpu, "stdout_tail": r.stdout[-2000:]}


def write_results(path: Path, record: dict) -> None:
    """The JSON record, written to a temporary name and renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]], align: str = "") -> str:
    """A Markdown table; `align` has an 'l' or 'r' per column (default: the first left, the rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = [header, rule, *rows]
    return "\n".join("| " + " | ".join(str(c) for c in line) + " |" for line in lines)


def steps_table(steps: list[dict]) -> str:
    """The timed steps (`timed` records with a 'step' name) and their total, as a Markdown table."""
    rows = [[s["step"], f"`{s['command']}`", f"{s['wall_s'] / 60:.1f} min", f"{s['cpu_s'] / 60:.1f} min"]
            for s in steps]
    if len(steps) > 1:
        rows.append(["total", "", f"{sum(s['wall_s'] for s in steps) / 60:.1f} min",
                     f"{sum(s['cpu_s'] for s in steps) / 60:.1f} min"])
    return markdown_table(["step", "command", "wall", "CPU time"], rows, "llrr")


def wait_for_server(proc: subprocess.Popen, url: str, *, why: Callable[[], str] = lambda: "",
                    timeout: float = 300) -> None:
    """Wait until a `gpt2 serve` process answers GET /health; SystemExit with `why()` (its log) if it exits."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {why()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the server did not start within {timeout:.0f} s")


# The default recipe at the fixed shape its sweeps and comparisons were measured on. The recipe itself sizes its
# model to the machine (model.preset=auto), which a comparison must not do behind its back: benches that compare
# variants of it start from this and change what they compare.
FIXED_SHAPE = ["model.preset=mini", "model.n_layer=4", "model.n_head=4", "model.n_embd=192", "model.dropout=0",
               "optim.weight_decay=0.1"]
