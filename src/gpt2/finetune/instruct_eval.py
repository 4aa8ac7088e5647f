"""Scoring an instruction follower on held-out instructions: response loss, and whether its answers stop.

    gpt2 eval runs/sft-alpaca --instruct runs/sft-alpaca/heldout.jsonl
    gpt2 eval runs/imdb-lm --instruct runs/sft-alpaca/heldout.jsonl --format alpaca     # a base, same prompts

Two measurements on the same entries (Alpaca json/jsonl or chat jsonl, gpt2.finetune.instruct_data):
- **response loss**: the mean cross-entropy of the response tokens and the <|endoftext|> closing each
  response, given their prompts (prompt tokens are not scored). It is the loss fine-tuning trains.
- **greedy answers**: the last turn's prompt (add_generation_prompt) is decoded greedily, one prompt at a
  time, for up to --max-new-tokens tokens (default 256), or fewer when the model's context window
  (n_positions) leaves less room after the prompt (gpt2.generate.budget: a default is capped with a note
  on stderr; a --max-new-tokens with no room for any prompt is an error). An answer "ends" when the model writes <|endoftext|> within that budget.
  It "writes a header" when its text holds one of the format's own markers, its stop strings (Alpaca's
  `### Instruction:`, `### Input:`, `### Response:`, `Below is an instruction`): a model that has not
  learnt to stop goes on to invent the next turn. A clean answer ends and writes no header. Answers cut
  by the context window before --max-new-tokens count as not ended (so the rate is a lower bound), and
  how many were is reported.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from gpt2.common import print_result
from gpt2.errors import UserError

DEFAULT_MAX_NEW_TOKENS = 256
"""Greedy answers' length limit when none is given (Alpaca's answers fit; fitted to short contexts)."""


def evaluate_instruct(model: torch.nn.Module, tokenizer: Any, fmt: Any, conversations: list[list[dict[str, str]]], *,
                      batch_size: int = 16, max_new_tokens: int | None = None, generate_answers: bool = True,
                      autocast: Any = None) -> dict[str, Any]:
    """Response loss and greedy-answer statistics (see the module docstring); `answers` holds each answer.

    `max_new_tokens` None is the default, DEFAULT_MAX_NEW_TOKENS, fitted to the room each prompt leaves."""
    import contextlib
    import sys

    from gpt2.finetune.instruct import encode_examples, response_loss
    from gpt2.finetune.instruct_data import encode_conversation
    from gpt2.generate import SampleConfig, generate
    from gpt2.generate.budget import fit_new_tokens

    autocast = autocast if autocast is not None else contextlib.nullcontext()
    device = next(model.parameters()).device
    n_positions = model.config.n_positions
    requested = max_new_tokens
    if requested is not None:  # a length the user gave: refused before any work if it leaves no room at all
        fit_new_tokens(n_positions, requested=requested, default=0)
    max_new_tokens = DEFAULT_MAX_NEW_TOKENS if requested is None else requested
    examples, truncated, dropped = encode_examples(conversations, tokenizer, fmt, max_tokens=n_positions)
    total, count = response_loss(model, examples, batch_size=batch_size, pad_id=tokenizer.eot_token, device=device,
                                 autocast=autocast)
    loss = (total / count.clamp(min=1)).item()
    result: dict[str, Any] = {"entries": len(conversations), "response_loss": loss, "response_tokens": int(count),
                              "truncated": truncated, "dropped": dropped}
    if not generate_answers:
        return result
    headers = list(fmt.stop)
    answers, notes = [], []
    for conv in conversations:
        prompt, _ = encode_conversation(conv[:-1], tokenizer, fmt, add_generation_prompt=True)
        if len(prompt) >= n_positions:
            answers.append({"text": "", "ended": False, "header": False, "new_tokens": 0, "budget": 0})
            continue
        # A given length beyond a prompt's room is cut by the context too: counted in cut_by_context, as the
        # evaluation's own measurement (a dataset's prompts vary; refusing the whole run would help nobody).
        room, note = fit_new_tokens(n_positions, requested=None, default=max_new_tokens, prompt_tokens=len(prompt))
        notes += [note] if note and requested is None else []
        with autocast:
            gen = generate(model, tokenizer, [prompt], SampleConfig(max_new_tokens=room, temperature=0))[0]
        answers.append({"text": gen.text, "ended": gen.finish_reason == "eot",
                        "header": any(h in gen.text for h in headers), "new_tokens": gen.completion_tokens,
                        "budget": room})
    if notes:
        print(f"note: --max-new-tokens: the default {max_new_tokens} was capped for {len(notes)} of {len(answers)} "
              f"prompts to the room each leaves in the model's context of {n_positions} tokens "
              "(--max-new-tokens N chooses)", file=sys.stderr)
    n = max(len(answers), 1)
    ended = [a for a in answers if a["ended"]]
    result.update({
        "max_new_tokens": max_new_tokens,
        "ended_rate": len(ended) / n,
        "header_rate": sum(a["header"] for a in answers) / n,
        "clean_rate": sum(a["ended"] and not a["header"] for a in answers) / n,
        "cut_by_context": sum(not a["ended"] and a["budget"] < max_new_tokens for a in answers),
        "longest_ended_answer": max((a["new_tokens"] for a in ended), default=0),
        "answers": answers,
    })
    return result


def render(result: dict[str, Any]) -> str:
    lines = [f"entries            {result['entries']}",
             f"response loss      {result['response_loss']:.4f} over {result['response_tokens']:,} response tokens"]
    if "ended_rate" in result:
        lines += [f"ended with eot     {100 * result['ended_rate']:.1f}% within {result['max_new_tokens']} new tokens "
                  f"({result['cut_by_context']} cut short by the context window first)",
                  f"wrote a header     {100 * result['header_rate']:.1f}%",
                  f"clean answers      {100 * result['clean_rate']:.1f}% (ended, no header)",
                  f"longest answer     {result['longest_ended_answer']} tokens (of those that ended)"]
    return "\n".join(lines)


def run_eval_instruct(source: str | Path, file: str, *, format: str | None = None, batch_size: int = 16,
                      max_new_tokens: int | None = None, limit: int | None = None, generate_answers: bool = True,
                      tokenizer: str | None = None, dtype: str = "fp32", device: str = "auto",
                      as_json: bool = False) -> dict[str, Any]:
    """`gpt2 eval SOURCE --instruct FILE`: load, score, print (a table or one JSON object)."""
    from gpt2.finetune.instruct_data import read_instruct
    from gpt2.generate.chat import FORMATS
    from gpt2.load import load

    conversations = read_instruct(file)[:limit]
    loaded = load(source, tokenizer=tokenizer, dtype=dtype, device=device)  # type: ignore[arg-type]
    fmt = loaded.chat_format
    if format is not None:
        if format not in FORMATS:
            raise UserError(f"unknown chat format {format!r}; known: {', '.join(FORMATS)}")
        fmt = FORMATS[format]
    if fmt is None:
        raise UserError(f"{source} has no chat.json, so its prompt format is unknown: name one with --format "
                        f"({', '.join(FORMATS)}), e.g. to score a base model with the prompts it would be tuned on")
    t0 = time.perf_counter()
    result = evaluate_instruct(loaded.model, loaded.tokenizer, fmt, conversations, batch_size=batch_size,
                               max_new_tokens=max_new_tokens, generate_answers=generate_answers)
    result.update({"source": str(source), "file": str(file), "format": fmt.name,
                   "seconds": round(time.perf_counter() - t0, 2)})
    print_result(result, as_json=as_json, render=render, one_line=True)
    return result
