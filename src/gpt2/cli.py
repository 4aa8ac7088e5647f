"""The `gpt2` command line: one verb per job, each a thin wrapper over a plain Python function.

    gpt2 --help
    gpt2 model info gpt2

Each verb's arguments live in its own `_add_<verb>` function; the work happens in the library, so a
test or a notebook calls the same code. A user mistake (ValueError, FileNotFoundError) becomes one
`error: ...` line and exit status 2; set GPT2_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def _not_yet(verb: str, issue: int):
    def run(args: argparse.Namespace) -> int:
        print(f"error: `gpt2 {verb}` is not implemented yet (planned in issue #{issue})", file=sys.stderr)
        return 2

    return run


# --------------------------------------------------------------------------------------------- model
def _add_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="inspect model presets and checkpoints")
    msub = p.add_subparsers(dest="model_cmd", required=True, metavar="COMMAND")
    info = msub.add_parser("info", help="parameters, FLOPs per token and memory of a preset or checkpoint dir")
    info.add_argument("source", help="a preset name (gpt2, gpt2-medium, tiny, ...) or a model directory")
    info.add_argument("--seq-len", type=int, default=None, help="context length for the FLOPs count")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")

    def run(args: argparse.Namespace) -> int:
        from gpt2.model.info import model_info, render_info

        info = model_info(args.source, seq_len=args.seq_len)
        if args.json:
            import json

            print(json.dumps(info, indent=2))
        else:
            print(render_info(info))
        return 0

    info.set_defaults(func=run)


# ----------------------------------------------------------------------------------------- tokenizer
def _add_tokenizer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenizer", help="train, inspect and apply byte-level BPE tokenizers")
    p.set_defaults(func=_not_yet("tokenizer", 3))


# ---------------------------------------------------------------------------------------------- data
def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="turn a corpus into token shards")
    p.set_defaults(func=_not_yet("data", 4))


# ----------------------------------------------------------------------------- verbs still to come
def _add_planned(sub: argparse._SubParsersAction) -> None:
    planned = [
        ("train", "train a GPT-2 from a YAML recipe", 5),
        ("generate", "sample text from a checkpoint", 6),
        ("chat", "talk to an instruction-tuned checkpoint", 6),
        ("eval", "loss, perplexity, bits per byte, HellaSwag", 7),
        ("finetune", "classification, instruction tuning, LoRA", 8),
        ("serve", "OpenAI-compatible HTTP API and playground", 9),
    ]
    for verb, help_text, issue in planned:
        p = sub.add_parser(verb, help=f"{help_text} (not yet implemented)")
        p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        p.set_defaults(func=_not_yet(verb, issue))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpt2", description="GPT-2 from scratch: tokenizer, data, training, "
                                     "evaluation, generation, fine-tuning, serving.")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    _add_model(sub)
    _add_tokenizer(sub)
    _add_data(sub)
    _add_planned(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, KeyError) as e:
        if os.environ.get("GPT2_DEBUG"):
            raise
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
