"""How many new tokens a request may ask for: the one rule `gpt2 generate`, `chat`, `serve` and `eval --instruct` use.

    python -c "from gpt2.generate.budget import fit_new_tokens; print(fit_new_tokens(256, requested=None, default=256))"

A model reads at most `n_positions` tokens: the prompt and the new tokens share that window. Each verb has a
default length (chat 256, generate 128, eval --instruct 256, serve's chat completions "as many as fit",
completions 16, OpenAI's). A default the model's window cannot hold must not stop the verb; a length the
user chose must not be changed behind their back. So:

- **a length the user gave** is kept; one that leaves no room for even a one-token prompt
  (`requested >= n_positions`) is an error (gpt2.errors.UserError: one `error:` line, exit 2; the server
  answers 400). Whether it fits beside a given prompt is checked where the prompt is encoded (the engine
  refuses or, with --truncate, cuts the prompt; the server answers 400 `context_length_exceeded`).
- **a default** is capped to the room left: `n_positions - prompt_tokens` when the prompt is known (generate,
  serve, each eval --instruct example), else, when it is not (a chat, whose conversation grows turn by
  turn) or when the prompt alone fills the window, half the window, so a conversation keeps the other half.
  When the cap changes the default, the returned note says so in one line (the CLI prints it on stderr).

vLLM decides the same for an OpenAI request without max_tokens: the room the prompt leaves
(`max_model_len - prompt_len`).
"""

from __future__ import annotations

from gpt2.errors import UserError


def fit_new_tokens(n_positions: int, *, requested: int | None, default: int, prompt_tokens: int | None = None,
                   name: str = "--max-new-tokens") -> tuple[int, str | None]:
    """(new tokens to generate, a one-line note when a default was capped, else None).

    `requested` is the user's value (None: they gave none, so `default` applies, capped to the room the
    context leaves); `prompt_tokens` the prompt's length when known (the longest, for a batch); `name` is
    how the user sets the value, for the messages (`--max-new-tokens`, `max_tokens`)."""
    if requested is not None:
        if requested >= n_positions:
            raise UserError(f"{name} {requested} leaves no room for a prompt in the model's context of "
                            f"n_positions={n_positions} tokens: give at most {n_positions - 1}, or leave it out "
                            "to fit the reply to the context")
        return requested, None
    if prompt_tokens is not None and 0 < n_positions - prompt_tokens:
        room, why = n_positions - prompt_tokens, f"the room a {prompt_tokens}-token prompt leaves"
    else:
        room, why = max(1, n_positions // 2), "half of it, the other half kept for the prompt"
    if default <= room:
        return default, None
    return room, (f"note: {name} {room} instead of the default {default}: the model's context holds "
                  f"{n_positions} tokens and {room} is {why} ({name} N chooses)")
