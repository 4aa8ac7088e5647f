"""Generation speed: our engine against transformers' generate, GPT-2 124M with random weights, on this CPU.

    python bench/generate.py                  # batch 1: decode 128 tokens after a 16-token prompt; prefill 512
    python bench/generate.py --reps 3         # fewer repetitions (each figure is the best run; default 5)
    python bench/generate.py --device cuda --json /tmp/gen.jsonl   # on a GPU (no "no fast path" column there)

Both sides get the same weights (ours → HF via gpt2.model.hf.to_hf_state_dict) and greedy decoding with
no end-of-text stop, so every run makes exactly the tokens asked for; the script checks both produce
the same tokens. Runs alternate (ours, HF, ours, ...) so machine noise hits both alike, and each
figure is the best of --reps runs: on a shared 2-core machine another process that takes a core
stalls every multi-threaded matmul at its barrier, so the fastest run is the one that measures the
code rather than the neighbours (the load average is printed before and after).

- decode tokens/s = (N - 1) / (time of N new tokens - time of 1 new token): the per-token rate after
  the prefill, through each library's public generate call (ours: gpt2.generate.generate; HF:
  model.generate with its KV cache).
- prefill tokens/s = 512 / time to the first new token of a 512-token prompt.
- "ours bf16" casts the weights to bfloat16 (the KV cache follows), half the bytes per token; it is
  compared with HF in fp32, the reference the issue sets.
- "no fast path" is ours with pack=False (plain F.linear): what gpt2.generate.fastpath's oneDNN
  packed weights add.
- The bandwidth bound is measured read bandwidth (the best of a few sums over a 1 GiB tensor) divided
  by the bytes one decode step must read: every weight once (the tied LM head counts once, the
  embeddings one row each) plus the KV cache at the mean context length.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from gpt2 import GPT2Config, GPT2LMHeadModel
from gpt2.generate import generate
from gpt2.model.hf import to_hf_state_dict


def read_bandwidth(*, gib: float = 1.0, reps: int = 10, device: torch.device | None = None) -> float:
    """Best bytes/s of a full read (sum) of a tensor much larger than the caches."""
    x = torch.ones(int(gib * 2**30) // 4, device=device)
    x.sum().item()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        x.sum().item()  # .item() waits for a GPU
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best


def bytes_per_token(model: GPT2LMHeadModel, *, context: int) -> float:
    """Bytes one decode step reads: the weights (embeddings: one row) and the KV cache of `context` positions."""
    c = model.config
    size = next(model.parameters()).element_size()
    weights = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel() + c.n_embd
    kv = 2 * c.n_layer * context * c.n_embd
    return (weights + kv) * size


def build(seed: int = 0):
    import transformers

    config = GPT2Config.from_preset("gpt2", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(seed)
    ours = GPT2LMHeadModel(config).eval()
    d = config.to_hf_dict()
    d.pop("pad_vocab_size_multiple")
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**d)).eval()
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(ours), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    hf.tie_weights()
    hf.generation_config.eos_token_id = None  # always make max_new_tokens tokens
    hf.generation_config.pad_token_id = 0
    return config, ours, hf


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prefill-len", type=int, default=512)
    p.add_argument("--reps", type=int, default=5, help="timed runs of each (the best is reported), after a warm-up")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--json", default=None, metavar="PATH", help="also append the figures as one JSON line here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA device here (torch {torch.__version__})")

    load_before = os.getloadavg()[0]
    config, ours, hf = build()
    ours_bf16 = GPT2LMHeadModel(config).eval()
    ours_bf16.load_state_dict(ours.state_dict())
    ours_bf16.to(torch.bfloat16)
    ours, hf, ours_bf16 = ours.to(device), hf.to(device), ours_bf16.to(device)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, config.vocab_size, (1, args.prompt_len), generator=g).to(device)
    long_prompt = torch.randint(0, config.vocab_size, (1, args.prefill_len), generator=g).to(device)

    def ours_run(model, ids, n, pack=True):
        return generate(model, None, ids.tolist(), max_new_tokens=n, temperature=0, stop_at_eot=False,
                        pack=pack)[0].tokens

    @torch.inference_mode()
    def hf_run(ids, n):
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)
        return out[0, ids.shape[1] :].tolist()

    runners = {
        "ours fp32": lambda ids, n: ours_run(ours, ids, n),
        "ours fp32, no fast path": lambda ids, n: ours_run(ours, ids, n, pack=False),
        "ours bf16": lambda ids, n: ours_run(ours_bf16, ids, n),
        "HF fp32": hf_run,
    }
    if device.type != "cpu":
        del runners["ours fp32, no fast path"]  # the packed fast path is CPU-only: the same run twice
    same = runners["ours fp32"](prompt, args.new_tokens) == hf_run(prompt, args.new_tokens)  # also the warm-up
    for fn in runners.values():
        fn(prompt, 2)
        fn(long_prompt, 1)

    times: dict[str, dict[str, list[float]]] = {k: {"first": [], "all": [], "prefill": []} for k in runners}
    for _ in range(args.reps):
        for name, fn in runners.items():
            for key, ids, n in (("first", prompt, 1), ("all", prompt, args.new_tokens), ("prefill", long_prompt, 1)):
                t = time.perf_counter()
                fn(ids, n)
                times[name][key].append(time.perf_counter() - t)
    med = {k: {m: min(v) for m, v in d.items()} for k, d in times.items()}
    decode = {k: (args.new_tokens - 1) / (d["all"] - d["first"]) for k, d in med.items()}
    prefill = {k: args.prefill_len / d["prefill"] for k, d in med.items()}

    bandwidth = read_bandwidth(device=device)
    context = args.prompt_len + args.new_tokens // 2
    bound = {k: bandwidth / bytes_per_token(ours_bf16 if "bf16" in k else ours, context=context) for k in runners}

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}; GPT-2 124M random weights, batch 1, "
          f"greedy; decode: {args.prompt_len}-token prompt, {args.new_tokens} new tokens; prefill: "
          f"{args.prefill_len}-token prompt; best of {args.reps}; load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after")
    print(f"measured read bandwidth {bandwidth / 1e9:.1f} GB/s; bytes per decode step "
          f"{bytes_per_token(ours, context=context) / 1e6:.0f} MB fp32, "
          f"{bytes_per_token(ours_bf16, context=context) / 1e6:.0f} MB bf16; ours and HF give the same tokens: "
          f"{'yes' if same else 'NO'}")
    print()
    names = list(runners)
    print("| | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    hf_dec, hf_pre = decode["HF fp32"], prefill["HF fp32"]
    rows = [
        ("decode tokens/s", [f"{decode[k]:.1f}" for k in names]),
        ("ms per token", [f"{1000 / decode[k]:.1f}" for k in names]),
        ("decode vs HF fp32", [f"{decode[k] / hf_dec:.2f}×" for k in names]),
        ("bandwidth bound, tokens/s", [f"{bound[k]:.0f}" for k in names]),
        ("decode / bound", [f"{100 * decode[k] / bound[k]:.0f}%" for k in names]),
        (f"prefill tokens/s ({args.prefill_len})", [f"{prefill[k]:.0f}" for k in names]),
        ("prefill vs HF fp32", [f"{prefill[k] / hf_pre:.2f}×" for k in names]),
    ]
    for label, cells in rows:
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()
    checks = [
        ("ours fp32 decode >= 1.5× HF fp32", decode["ours fp32"] / hf_dec, 1.5),
        ("ours fp32 prefill >= 1.0× HF fp32", prefill["ours fp32"] / hf_pre, 1.0),
        ("ours bf16 decode >= 2.5× HF fp32", decode["ours bf16"] / hf_dec, 2.5),
    ]
    for label, ratio, target in checks:
        print(f"{label}: {ratio:.2f}× {'met' if ratio >= target else 'NOT met'}")
    if args.json:
        import json

        with open(args.json, "a") as f:
            f.write(json.dumps({"device": str(device), "same_tokens": same, "decode_tok_s": decode,
                                "prefill_tok_s": prefill, "decode_vs_hf": {k: decode[k] / hf_dec for k in names}}) + "\n")


if __name__ == "__main__":
    main()
