"""What `gpt2 generate` and `gpt2 chat` do, as plain functions: load a model directory, run, print.

    python -m gpt2 generate path/to/checkpoint "Once upon a time" --max-new-tokens 40 --top-p 0.9
    python -m gpt2 generate path/to/checkpoint --prompts-file prompts.txt --out results.jsonl --greedy
    python -m gpt2 chat path/to/checkpoint --format alpaca

gpt2/cli.py parses the arguments and calls these; a test or a notebook can call them the same way.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from gpt2.common import print_result
from gpt2.errors import UserError, UserFileNotFoundError
from gpt2.generate.budget import fit_new_tokens
from gpt2.generate.engine import Generation, PromptTruncatedWarning, SampleConfig, encode_prompt, stream
from gpt2.generate.quant import check_quantization
from gpt2.load import DtypeName, load
from gpt2.load import load_model_and_tokenizer as _load_model_and_tokenizer
from gpt2.model.gpt2 import GPT2LMHeadModel
from gpt2.sources import read_json_records


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Show our warnings as one `warning: ...` line on stderr (not Python's file:line form)."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", PromptTruncatedWarning)
        warnings.showwarning = lambda message, *args, **kwargs: print(f"warning: {message}", file=sys.stderr)
        yield


def load_model_and_tokenizer(
    source: str | Path, *, tokenizer: str | None = None, dtype: DtypeName = "fp32", device: str = "auto",
    quantize: str | None = None,
) -> tuple[GPT2LMHeadModel, Any]:
    """gpt2.load's (model, tokenizer), saying on stderr which path bf16 generation takes on this CPU;
    quantize="int8": its matrices in int8 (gpt2.generate.quant; a LoRA adapter merged first)."""
    check_quantization(quantize)  # before the model loads: fail fast
    model, tok = _load_model_and_tokenizer(source, tokenizer=tokenizer, dtype=dtype, device=device)
    _say_dtype_path(model)
    return _quantized(model, quantize), tok


def _quantized(model: GPT2LMHeadModel, quantize: str | None) -> GPT2LMHeadModel:
    from gpt2.generate.quant import quantize as quantized

    return model if quantize is None else quantized(model, quantize)  # type: ignore[arg-type]


def _say_dtype_path(model: GPT2LMHeadModel) -> None:
    """On a CPU, say which path bf16 takes: oneDNN's packed kernels, or PyTorch's emulation where the CPU
    lacks the instructions (then it runs, but far slower than fp32)."""
    from gpt2.generate.fastpath import can_pack, packed_bf16_supported

    if model.device.type != "cpu" or next(model.parameters()).dtype != torch.bfloat16:
        return
    if can_pack(model):
        print("dtype: bf16 on oneDNN's packed kernels", file=sys.stderr)
    elif not packed_bf16_supported():
        print("dtype: bf16 on the plain path: this CPU lacks AVX-512 (BW/VL/DQ) or AVX-NE-CONVERT, so bf16 "
              "matmuls are emulated and far slower than fp32 (use --dtype fp32)", file=sys.stderr)
    else:
        print("dtype: bf16 on the plain path (GPT2_NO_FAST_PATH is set)", file=sys.stderr)


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line (blank lines skipped); a .jsonl file holds {"prompt": ...} objects or strings."""
    path = Path(path)
    if not path.is_file():
        raise UserFileNotFoundError(f"prompts file {path} not found")
    if path.suffix != ".jsonl":
        prompts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        prompts = []
        for where, obj in read_json_records(path):
            if isinstance(obj, dict) and isinstance(obj.get("prompt"), str):
                obj = obj["prompt"]
            if not isinstance(obj, str):
                raise UserError(f"{where}: expected a JSON string or an object with a \"prompt\" string")
            prompts.append(obj)
    if not prompts:
        raise UserError(f"prompts file {path} holds no prompts")
    return prompts


def _record(g: Generation) -> dict[str, Any]:
    return {k: v for k, v in g.to_dict().items() if k != "steps" or v is not None}


def _check_generate_args(prompt: str | None, *, prompts_file: str | None, out: str | None, show_probs: int,
                         probs_plot: str | None, chat: bool, format: str | None) -> None:
    """run_generate's options that do not go together, refused before the model loads."""
    if (prompt is None) == (prompts_file is None):
        raise UserError("give either a PROMPT or --prompts-file FILE (not both)")
    if out is not None and prompts_file is None:
        raise UserError("--out writes the results of --prompts-file; with a single PROMPT use --json")
    if probs_plot is not None and not probs_plot.lower().endswith(".png"):
        raise UserError(f"--probs-plot writes a PNG file; got {probs_plot!r}")
    if (show_probs or probs_plot) and prompts_file is not None:
        raise UserError("--show-probs/--probs-plot show one prompt's steps; not with --prompts-file")
    if probs_plot is not None and importlib.util.find_spec("matplotlib") is None:
        # Checked before the model loads, so a missing extra costs no waiting.
        raise UserError("--probs-plot needs matplotlib: pip install 'gpt2-scratch[plot]'")
    if format is not None and not chat:
        raise UserError("--format names the prompt format of --chat; give --chat too")


def _print_generations(gens: list[Generation], *, source: str, prompt: str | None, config: SampleConfig, tok: Any,
                       as_json: bool, streaming: bool, chat: bool, show_probs: int, probs_plot: str | None) -> None:
    """The finished generations as JSON, a newline after the streamed text, or one block per sample; then
    the per-step probabilities asked for."""
    if as_json:
        print_result({"model": str(source), "config": _config_dict(config, gens),
                      "results": [_record(g) for g in gens]}, as_json=True)
    elif streaming:
        print()
    else:
        for g in gens:
            print(f"--- sample {g.sample_index + 1} of {config.num_samples} ({g.finish_reason}, "
                  f"{g.completion_tokens} tokens) ---")
            print(("" if chat else prompt or "") + g.text)
    if show_probs and gens[0].steps:
        from gpt2.generate.show import render_probs

        print(render_probs(gens[0].steps, tok), file=sys.stderr if as_json else sys.stdout)
    if probs_plot and gens[0].steps:
        from gpt2.generate.show import plot_probs

        print(f"wrote {plot_probs(gens[0].steps, tok, probs_plot)}", file=sys.stderr)


def run_generate(
    source: str,
    prompt: str | None = None,
    *,
    config: SampleConfig,
    prompts_file: str | None = None,
    out: str | None = None,
    batch_size: int = 8,
    tokenizer: str | None = None,
    dtype: DtypeName = "fp32",
    device: str = "auto",
    as_json: bool = False,
    show_probs: int = 0,
    probs_plot: str | None = None,
    pack: bool = True,
    chat: bool = False,
    format: str | None = None,
    fit_max_new_tokens: bool = False,
    quantize: str | None = None,
) -> int:
    """`gpt2 generate`: stream one prompt to the terminal, print JSON, or complete a prompts file.

    With `chat`, each prompt is one user message, written in the checkpoint's prompt format (chat.json, or
    `format`) as `gpt2 chat` writes a first turn; the format's stop strings join the config's, and only
    the answer is printed. With `fit_max_new_tokens`, config.max_new_tokens is a default rather than the
    user's choice: it is capped to the room the longest prompt leaves (gpt2.generate.budget), saying so on
    stderr; otherwise a length with no room for a prompt is an error."""
    _check_generate_args(prompt, prompts_file=prompts_file, out=out, show_probs=show_probs, probs_plot=probs_plot,
                         chat=chat, format=format)
    if show_probs or probs_plot:
        config = config.replace(top_probs=show_probs or 5)
    prompts = read_prompts(prompts_file) if prompts_file is not None else [prompt]
    check_quantization(quantize)
    loaded = load(source, tokenizer=tokenizer, dtype=dtype, device=device)  # type: ignore[arg-type]
    model, tok = _quantized(loaded.model, quantize), loaded.tokenizer
    _say_dtype_path(model)
    if chat:
        from gpt2.generate.chat import encode_conversation

        fmt = _chat_format(loaded.directory or source, loaded.chat_format, format)
        prompts = [encode_conversation([{"role": "user", "content": p}], tok, fmt, add_generation_prompt=True)[0]
                   for p in prompts]
        config = config.replace(stop=[*fmt.stop, *config.stop])
    ids = None
    if fit_max_new_tokens:  # the default is fitted to the longest prompt, as the engine will encode it
        ids = [encode_prompt(tok, p, bos=config.bos, bos_token_id=model.config.bos_token_id)[0] for p in prompts]
        if config.guidance_scale != 1.0 and config.negative_prompt:  # guidance runs it through the same context
            try:
                ids.append(encode_prompt(tok, config.negative_prompt, bos=config.bos,
                                         bos_token_id=model.config.bos_token_id)[0])
            except UserError as e:  # as the engine says it (prepare_negatives): name which prompt is wrong
                raise UserError(f"negative prompt: {e}") from None
    config = _fit(config, model, prompts=ids, fit=fit_max_new_tokens)

    with warnings_as_lines():
        events = stream(model, tok, prompts, config, batch_size=batch_size, pack=pack)
        if prompts_file is not None:
            return _complete_file(events, prompts, config, out)
        results: dict[int, Generation] = {}
        streaming = not as_json and config.num_samples == 1
        if streaming and not chat:
            sys.stdout.write(prompt or "")
            sys.stdout.flush()
        for event in events:
            if streaming and event.text:
                sys.stdout.write(event.text)
                sys.stdout.flush()
            if event.generation is not None:
                results[event.index] = event.generation
    gens = [results[i] for i in sorted(results)]
    _print_generations(gens, source=source, prompt=prompt, config=config, tok=tok, as_json=as_json,
                       streaming=streaming, chat=chat, show_probs=show_probs, probs_plot=probs_plot)
    return 0


def _config_dict(config: SampleConfig, gens: list[Generation]) -> dict[str, Any]:
    d = {k: v for k, v in vars(config).items()}
    if gens and gens[0].seed is not None:
        d["seed"] = gens[0].seed  # the seed actually used, so the run can be repeated
    return d


def _complete_file(events: Iterator, prompts: list[str], config: SampleConfig, out: str | None) -> int:
    """Collect a prompts file's completions and write them as JSON lines, in the prompts' order."""
    from gpt2.common import atomic_write_text

    t0 = time.perf_counter()
    results: dict[int, Generation] = {}
    for event in events:
        if event.generation is not None:
            results[event.index] = event.generation
    seconds = time.perf_counter() - t0
    lines = [json.dumps(_record(results[i]), ensure_ascii=False) for i in sorted(results)]
    text = "\n".join(lines) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        atomic_write_text(out, text)
    n_tokens = sum(g.completion_tokens for g in results.values())
    where = f"to {out}" if out is not None else ""
    print(f"wrote {len(lines)} completions of {len(prompts)} prompts {where} ({n_tokens} tokens in {seconds:.1f} s, "
          f"{n_tokens / max(seconds, 1e-9):.1f} tokens/s)".replace("  ", " "), file=sys.stderr)
    return 0


def _chat_format(source: str | Path, own: Any, format: str | None) -> Any:
    """The prompt format: `format` if named, else the one the model came with (its chat.json, or its base's for
    an adapter), else a one-line error saying how to name one."""
    from gpt2.generate.chat import load_chat_format

    if format is not None or own is None:
        return load_chat_format(Path(str(source)), format=format)  # FORMATS[format], or the clear error
    return own


def _fit(config: SampleConfig, model: GPT2LMHeadModel, *, prompts: list[list[int]] | None, fit: bool) -> SampleConfig:
    """config with max_new_tokens fitted to the model's context (gpt2.generate.budget): a default (`fit`) is
    capped to the room the longest prompt leaves (half the context for an unknown prompt), with a note on
    stderr; a value the user gave is kept, or refused when it leaves no room for a prompt."""
    longest = max(len(p) for p in prompts) if prompts else None
    n, note = fit_new_tokens(model.config.n_positions, requested=None if fit else config.max_new_tokens,
                             default=config.max_new_tokens, prompt_tokens=longest)
    if note:
        print(note, file=sys.stderr)
    return config.replace(max_new_tokens=n)


def run_chat(
    source: str,
    *,
    config: SampleConfig,
    format: str | None = None,
    tokenizer: str | None = None,
    dtype: DtypeName = "fp32",
    device: str = "auto",
    pack: bool = True,
    fit_max_new_tokens: bool = False,
    quantize: str | None = None,
) -> int:
    """`gpt2 chat`: the interactive loop over stdin/stdout (see gpt2.generate.chat); quantize as for generate.

    With `fit_max_new_tokens`, config.max_new_tokens is a default: a chat's prompt (the conversation so far)
    is unknown at the start, so it is capped to half the model's context (gpt2.generate.budget), and a message
    whose prompt leaves less room gets a shorter reply rather than a cut prompt."""
    from gpt2.generate.chat import Chat, chat_loop

    check_quantization(quantize)
    loaded = load(source, tokenizer=tokenizer, dtype=dtype, device=device)
    model, tok = _quantized(loaded.model, quantize), loaded.tokenizer
    _say_dtype_path(model)
    fmt = _chat_format(loaded.directory or source, loaded.chat_format, format)
    config = _fit(config, model, prompts=None, fit=fit_max_new_tokens)
    chat = Chat(model, tok, fmt, config, pack=pack)
    chat.fit_default = fit_max_new_tokens
    with warnings_as_lines():
        return chat_loop(chat)
