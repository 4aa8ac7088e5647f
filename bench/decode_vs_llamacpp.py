"""CPU decoding side by side: llama.cpp (llama-cpp-python) and our engine, on one model, in one run.

    flock /tmp/gpt2-bench.lock python bench/decode_vs_llamacpp.py                       # preset:gpt2 + default run
    python bench/decode_vs_llamacpp.py --models preset:gpt2 --rounds 1 --profile        # where our decode time goes

Settings (the issue's): 2 threads, a 128-token prompt, 128 new tokens, batch 1, greedy, no end-of-text
stop. Each engine and precision runs in a process of its own (`--worker`), rounds alternate through
every engine so machine noise hits all alike, and each figure is the best of the rounds.
- ours: fp32, int8 (`--quantize int8`: gpt2.generate.quant), and bf16 only where the CPU has native bf16
  (AVX-512 BF16 / AMX; elsewhere it is emulated and not a fair row); through gpt2.generate.stream, the
  code `gpt2 generate` runs.
- llama.cpp: our `gpt2 export gguf` files in f32, bf16 (where the CPU has it, else f16) and q8_0, through
  Llama.generate with top_k=1.
- prefill tok/s = prompt tokens / time to the first new token; decode tok/s = (new tokens - 1) / the time
  from the first new token to the last. Pairs: fp32 ↔ f32, bf16 ↔ bf16 (or f16), int8 ↔ q8_0.
- `--kernels`: the int8 kernel alone (`aten._weight_int8pack_mm`) on 124M's four matrix shapes at 1 and 128
  rows, on fp32 and on bf16 activations, against F.linear in fp32 (and bf16): why gpt2.generate.quant
  feeds it bf16. Run it again under ATEN_CPU_CAPABILITY=avx2 to see the AVX2 build of the kernel.
- `--profile`: torch.profiler over our fp32 and int8 decode steps, the top operators by self CPU time
  (the LM head is the one matmul with vocab-size outputs; attention over the cache is SDPA).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import cpu_info, cpu_name, markdown_table, parser

PAIRS = [("ours fp32", "llama.cpp f32"), ("ours bf16", "llama.cpp bf16"), ("ours int8", "llama.cpp q8_0")]


def prompt_ids(vocab: int, n: int) -> list[int]:
    import random

    rng = random.Random(0)
    return [rng.randrange(0, min(vocab, 50_000) - 1) for _ in range(n)]


def worker_ours(model: str, precision: str, n_prompt: int, n_new: int, threads: int) -> dict:
    import torch

    from gpt2.generate import stream
    from gpt2.generate.quant import quantize
    from gpt2.load import load

    torch.set_num_threads(threads)
    loaded = load(model, device="cpu", dtype="bf16" if precision == "bf16" else "fp32")
    m = quantize(loaded.model) if precision == "int8" else loaded.model
    ids = prompt_ids(m.config.vocab_size, n_prompt)
    list(stream(m, None, [ids], max_new_tokens=4, temperature=0, stop_at_eot=False))  # warm-up (packing)
    t0 = time.perf_counter()
    times = [time.perf_counter() for _ in stream(m, None, [ids], max_new_tokens=n_new, temperature=0,
                                                  stop_at_eot=False)]
    return {"prefill": n_prompt / (times[0] - t0), "decode": (len(times) - 1) / (times[-1] - times[0])}


def worker_llama(path: str, n_prompt: int, n_new: int, threads: int, vocab: int) -> dict:
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_ctx=n_prompt + n_new + 8, n_batch=512, n_threads=threads,
                n_threads_batch=threads, verbose=False)
    ids = prompt_ids(vocab, n_prompt)

    def run(n: int) -> list[float]:
        llm.reset()
        times = []
        for _ in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
            times.append(time.perf_counter())
            if len(times) == n:
                break
        return times

    run(4)  # warm-up
    t0 = time.perf_counter()
    times = run(n_new)
    return {"prefill": n_prompt / (times[0] - t0), "decode": (len(times) - 1) / (times[-1] - times[0])}


def profile_ours(model: str, n_prompt: int, threads: int) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from gpt2.generate import stream
    from gpt2.generate.quant import quantize
    from gpt2.load import load

    torch.set_num_threads(threads)
    base = load(model, device="cpu").model
    for precision, m in (("fp32", base), ("int8", quantize(base))):
        ids = prompt_ids(m.config.vocab_size, n_prompt)
        list(stream(m, None, [ids], max_new_tokens=4, temperature=0, stop_at_eot=False))
        events = stream(m, None, [ids], max_new_tokens=65, temperature=0, stop_at_eot=False)
        next(events)  # the prefill, outside the profile
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            n = sum(1 for _ in events)
        wall = (time.perf_counter() - t0) / n
        print(f"\n### ours {precision}: {wall * 1e3:.2f} ms per decode step (profiled; top ops by self CPU time)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def kernel_table(threads: int) -> list[list[str]]:
    """Milliseconds per product (the median of 20) of the int8 kernel and F.linear on 124M's shapes."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)

    def ms(f, *a) -> float:
        for _ in range(3):
            f(*a)
        times = []
        for _ in range(20):
            t = time.perf_counter()
            f(*a)
            times.append(time.perf_counter() - t)
        return sorted(times)[len(times) // 2] * 1e3

    rows = []
    g = torch.Generator().manual_seed(0)
    for name, (out, inp) in {"c_attn": (2304, 768), "c_fc": (3072, 768), "c_proj": (768, 3072),
                             "lm_head": (50257, 768)}.items():
        w = torch.randn(out, inp, generator=g)
        q = torch.randint(-127, 128, (out, inp), dtype=torch.int8, generator=g)
        s = torch.rand(out, generator=g)
        for m in (1, 128):
            x = torch.randn(m, inp, generator=g)
            xb, wb, sb = x.bfloat16(), w.bfloat16(), s.bfloat16()
            int8 = torch.ops.aten._weight_int8pack_mm
            rows.append([f"{name} {out}×{inp}", str(m), f"{ms(F.linear, x, w):.3f}", f"{ms(F.linear, xb, wb):.3f}",
                         f"{ms(int8, x, q, s):.3f}", f"{ms(int8, xb, q, sb):.3f}"])
    return rows


def _spawn(args: list[str]) -> dict:
    r = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"worker {args} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def bench_model(model: str, args, tmp: Path, native_bf16: bool) -> list[list[str]]:
    from gpt2.export import export_gguf
    from gpt2.load import load

    vocab = load(model, device="cpu").model.config.vocab_size
    half = "bf16" if native_bf16 else "f16"
    files = {t: export_gguf(model, tmp / f"{abs(hash(model))}-{t}.gguf", file_type=t)  # type: ignore[arg-type]
             for t in ("f32", half, "q8_0")}
    ours = ["fp32", "int8", *(["bf16"] if native_bf16 else [])]
    common = [str(args.prompt_tokens), str(args.new_tokens), str(args.threads)]
    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        jobs = [(f"ours {p}", ["ours", model, p, *common]) for p in ours]
        jobs += [(f"llama.cpp {t}", ["llama", str(f), *common, str(vocab)]) for t, f in files.items()]
        for label, job in jobs:
            r = _spawn(job)
            prev = best.get(label)
            best[label] = {k: max(r[k], prev[k]) if prev else r[k] for k in r}
    rows = []
    for a, b in PAIRS:
        b = b if b in best else b.replace("bf16", "f16")
        if a not in best:  # no native bf16 on this CPU: llama.cpp's half-precision row stands alone
            rows.append([model, "-", "-", "-", b, f"{best[b]['prefill']:,.0f}", f"{best[b]['decode']:.1f}", "-"])
            continue
        rows.append([model, a, f"{best[a]['prefill']:,.0f}", f"{best[a]['decode']:.1f}", b,
                     f"{best[b]['prefill']:,.0f}", f"{best[b]['decode']:.1f}",
                     f"{best[a]['decode'] / best[b]['decode']:.2f}×"])
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        kind, rest = argv[1], argv[2:]
        if kind == "ours":
            out = worker_ours(rest[0], rest[1], int(rest[2]), int(rest[3]), int(rest[4]))
        else:
            out = worker_llama(rest[0], int(rest[1]), int(rest[2]), int(rest[3]), int(rest[4]))
        print(json.dumps(out))
        return 0
    p = parser(__doc__)
    default = ["preset:gpt2", *(["/work/models/shakespeare-cpu"] if Path("/work/models/shakespeare-cpu/latest").exists()
                                 else [])]
    p.add_argument("--models", nargs="+", default=default)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--profile", action="store_true", help="also profile our decode steps (fp32, int8)")
    p.add_argument("--kernels", action="store_true", help="only time the int8 kernel against F.linear")
    args = p.parse_args(argv)
    if args.kernels:
        print(f"CPU: {cpu_name()} (ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY', 'default')}); "
              f"{args.threads} threads; ms per product, median of 20")
        print(markdown_table(["matrix", "rows", "F.linear fp32", "F.linear bf16", "int8 kernel, fp32 in",
                              "int8 kernel, bf16 in"], kernel_table(args.threads), "lrrrrr"))
        return 0
    _, flags = cpu_info()
    native_bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            rows += bench_model(model, args, Path(tmp), native_bf16)
    print(f"CPU: {cpu_name()}; {args.threads} threads, {args.prompt_tokens}-token prompt, {args.new_tokens} new "
          f"tokens, batch 1, best of {args.rounds} rounds; load average {load_before:.1f} → {os.getloadavg()[0]:.1f}")
    print(markdown_table(["model", "ours", "prefill tok/s", "decode tok/s", "llama.cpp", "prefill tok/s",
                          "decode tok/s", "decode ours/theirs"], rows, "llrrlrrr"))
    if args.profile:
        profile_ours(args.models[0], args.prompt_tokens, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
