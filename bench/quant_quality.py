"""Held-out bits per byte of fp32 against int8: ours (`--quantize int8`) and llama.cpp on our q8_0 export.

    python bench/quant_quality.py /work/models/shakespeare-cpu            # the default run's model
    python bench/quant_quality.py RUN --text ../shared/data/the-verdict.txt --max-tokens 20000

Every engine scores the same token stream in the same disjoint windows of the model's context (the
first token of the stream is context only; every later token is predicted once), so the four figures
differ only by the weights' precision and the engine:
- ours fp32 and ours int8 (gpt2.generate.quant.quantize: the block matrices and LM head in int8);
- llama.cpp f32 and q8_0 on `gpt2 export gguf` files (llama-cpp-python, logits of every position).
The text defaults to the last 10% of Tiny Shakespeare, the default run's validation split. Goal: each
int8 figure within 1% of its engine's fp32 figure. Results are printed as a Markdown table and, with
--json, written to a JSON file.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import REPO, cpu_name, markdown_table, parser, write_results

from gpt2.eval.loss import count_bytes, window_spans
from gpt2.export import export_gguf
from gpt2.generate.quant import quantize
from gpt2.load import load


def default_text() -> str:
    text = (REPO.parent / "shared" / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    return text[int(len(text) * 0.9):]


def _nats(logits: np.ndarray, targets: np.ndarray) -> float:
    """Sum of -log p(target) over rows of (T, V) logits, in float64."""
    x = logits.astype(np.float64)
    x -= x.max(axis=1, keepdims=True)
    logz = np.log(np.exp(x).sum(axis=1))
    return float((logz - x[np.arange(len(targets)), targets]).sum())


def score_ours(model, ids: np.ndarray, spans) -> float:
    total = 0.0
    with torch.inference_mode():
        for start, end, scored in spans:
            logits = model(torch.from_numpy(ids[start:end])[None]).logits[0, -scored:].float().numpy()  # (scored, V)
            total += _nats(logits, ids[end - scored + 1 : end + 1])
    return total


def score_llama(path: Path, ids: np.ndarray, spans, context: int, threads: int) -> float:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=context, n_batch=context, n_ubatch=context, n_threads=threads,
                n_threads_batch=threads, logits_all=True, verbose=False)
    total = 0.0
    for start, end, scored in spans:
        llm.reset()
        llm.eval(ids[start:end].tolist())
        logits = np.asarray(llm.scores[: end - start])[-scored:]  # (scored, V)
        total += _nats(logits, ids[end - scored + 1 : end + 1])
    return total


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("model", help="anything gpt2.load takes (a run, a checkpoint, ...)")
    p.add_argument("--text", default=None, help="held-out text file (default: the last 10%% of Tiny Shakespeare)")
    p.add_argument("--max-tokens", type=int, default=30_000, help="score at most this many tokens")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="write the record to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = load(args.model, device="cpu")
    tok, model = loaded.tokenizer, loaded.model
    text = Path(args.text).read_text(encoding="utf-8") if args.text else default_text()
    ids = np.asarray(tok.encode_ordinary(text)[: args.max_tokens + 1], dtype=np.int64)
    context = model.config.n_positions
    spans = window_spans(len(ids) - 1, context, context)
    n_bytes = count_bytes(tok, ids[1:])
    results: dict[str, float] = {}
    t0 = time.perf_counter()
    results["ours fp32"] = score_ours(model, ids, spans)
    results["ours int8"] = score_ours(quantize(model, "int8"), ids, spans)
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama-cpp-python is not installed: llama.cpp rows skipped (pip install '.[llama]')", file=sys.stderr)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            for file_type, label in (("f32", "llama.cpp f32"), ("q8_0", "llama.cpp q8_0")):
                path = export_gguf(args.model, Path(tmp) / f"m-{file_type}.gguf", file_type=file_type)  # type: ignore[arg-type]
                results[label] = score_llama(path, ids, spans, context, args.threads)
    bpb = {k: v / math.log(2) / n_bytes for k, v in results.items()}
    rows = []
    for label, value in bpb.items():
        base = bpb["ours fp32"] if label.startswith("ours") else bpb.get("llama.cpp f32", float("nan"))
        rows.append([label, f"{value:.4f}", f"{100 * (value / base - 1):+.2f}%"])
    print(f"{args.model}: {len(ids) - 1:,} tokens, {n_bytes:,} bytes, {len(spans)} windows of {context}; "
          f"CPU {cpu_name()}; {time.perf_counter() - t0:.0f} s")
    print(markdown_table(["engine", "bits/byte", "vs its fp32"], rows, "lrr"))
    if args.json:
        write_results(Path(args.json), {"bench": "quant_quality", "model": args.model, "cpu": cpu_name(),
                                        "tokens": len(ids) - 1, "bytes": n_bytes, "bits_per_byte": bpb})
    return 0


if __name__ == "__main__":
    sys.exit(main())
