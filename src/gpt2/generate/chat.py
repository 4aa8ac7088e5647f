"""`gpt2 chat`: talk to an instruction-tuned checkpoint, one streamed reply per message.

    python -m gpt2 chat path/to/checkpoint --temperature 0.7 --top-p 0.9
    printf 'Name a color.\\n/exit\\n' | python -m gpt2 chat path/to/checkpoint --greedy

The prompt format (chat.json, the named FORMATS, how a conversation becomes token ids) is
gpt2.tokenizer.chat's; its names are re-exported here, where they were first defined.

The loop keeps the conversation as messages and encodes the whole of it for every reply, so the ids it
feeds the model are exactly what apply_chat_template gives for the same conversation. A reply joins the
history as its text (cut at a stop string or the length limit) closed by <|endoftext|>, as in training.
When the conversation no longer fits the context window next to max_new_tokens, the oldest exchanges
are dropped (a system message stays). Commands: /reset (forget the history), /exit (or end of input),
/set NAME VALUE (a sampling option, e.g. /set temperature 0.5), /help. Ctrl-C during a reply stops it
(the turn is not kept); at the prompt it quits.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from gpt2.errors import UserError
from gpt2.generate.budget import fit_new_tokens
from gpt2.generate.engine import Generation, SampleConfig, stream
from gpt2.model.gpt2 import GPT2LMHeadModel
from gpt2.tokenizer.chat import (
    ALPACA_PREAMBLE,
    CHAT_FILE,
    FORMATS,
    ROLES,
    TOKENIZER_CONFIG_FILE,
    ChatFormat,
    Message,
    chat_template,
    check_conversation,
    encode_conversation,
    format_prompt,
    load_chat_format,
    save_chat_format,
)

__all__ = ["ALPACA_PREAMBLE", "CHAT_FILE", "FORMATS", "HELP", "ROLES", "TOKENIZER_CONFIG_FILE", "Chat", "ChatFormat",
           "Message", "chat_loop", "chat_template", "check_conversation", "encode_conversation", "format_prompt",
           "load_chat_format", "save_chat_format"]


class Chat:
    """A conversation with a model: the history as messages, and one streamed response per message."""

    def __init__(self, model: GPT2LMHeadModel, tokenizer: Any, fmt: ChatFormat, config: SampleConfig | None = None,
                 *, pack: bool = True, system: str | None = None) -> None:
        self.model, self.tokenizer, self.format = model, tokenizer, fmt
        # No config: chat's default of 256 new tokens, capped to half the context of a model with a short one.
        config = config or SampleConfig(max_new_tokens=fit_new_tokens(model.config.n_positions, requested=None,
                                                                      default=256)[0])
        # A growing history must never stop the chat: keep the latest tokens (with a warning) if one turn
        # alone overflows; older turns are dropped whole before that.
        self.config = config.replace(stop=[*fmt.stop, *config.stop], num_samples=1, long_prompt="truncate")
        self.pack = pack
        # config.max_new_tokens is a default (gpt2 chat without --max-new-tokens): when a message's prompt leaves
        # less room, the reply is shortened to fit instead of the prompt being cut (set by run_chat).
        self.fit_default = False
        self.system: list[Message] = [{"role": "system", "content": system}] if system else []
        self.history: list[tuple[Message, Message]] = []  # past exchanges: (user message, assistant reply)
        self.prompt: list[int] = []  # the ids the last reply was prompted with
        self.last: Generation | None = None

    def reset(self) -> None:
        self.history = []

    def messages(self, message: str, input: str = "") -> list[Message]:
        """The conversation a new message makes: the system message, the history, then the message."""
        user: Message = {"role": "user", "content": message, **({"input": input} if input else {})}
        return [*self.system, *(m for exchange in self.history for m in exchange), user]

    def set(self, name: str, value: str) -> None:
        """Change one sampling option from text (as typed after /set)."""
        fields = {f.name: f for f in dataclasses.fields(SampleConfig)}
        if name not in fields or name in ("num_samples", "long_prompt", "top_probs", "stop"):
            settable = [n for n in fields if n not in ("num_samples", "long_prompt", "top_probs", "stop")]
            raise UserError(f"unknown option {name!r}; /set one of {', '.join(settable)}")
        kind = str(fields[name].type)  # the annotation as text: "float", "int | None", "bool", ...
        parsed: Any
        try:
            if value.lower() in ("none", "off") and "None" in kind:
                parsed = None
            elif kind.startswith("bool"):
                parsed = value.lower() in ("1", "true", "yes", "on")
            elif kind.startswith("int"):
                parsed = int(value)
            elif kind.startswith("float"):
                parsed = float(value)
            else:
                parsed = value
        except ValueError:
            raise UserError(f"{name} takes a value of type {kind}, got {value!r}") from None
        if name == "max_new_tokens":  # refused here, not at the next message, when it leaves no room for one
            fit_new_tokens(self.model.config.n_positions, requested=parsed, default=0, name="max_new_tokens")
            self.fit_default = False  # the user's value from now on
        self.config = self.config.replace(**{name: parsed})

    def send(self, message: str, input: str = "") -> Iterator[str]:
        """Stream the response to one message as text pieces; the exchange joins the history when it ends."""
        budget = self.model.config.n_positions - self.config.max_new_tokens
        while True:
            # The whole conversation, encoded as apply_chat_template would: re-encoding it each time (~1 ms for
            # a 1,000-token alpaca conversation, measured) keeps the BPE merges at the turn boundaries exact.
            conversation = self.messages(message, input)
            prompt, _ = encode_conversation(conversation, self.tokenizer, self.format, add_generation_prompt=True)
            if len(prompt) <= budget or not self.history:
                break
            self.history.pop(0)
        self.prompt = prompt
        config = self.config
        room = self.model.config.n_positions - len(prompt)
        if self.fit_default and 0 < room < config.max_new_tokens:
            # A default length (not the user's) gives way to the message: a shorter reply, not a cut prompt.
            config = config.replace(max_new_tokens=room)
        gen: Generation | None = None
        for event in stream(self.model, self.tokenizer, [prompt], config, pack=self.pack):
            if event.text:
                yield event.text
            gen = event.generation or gen
        assert gen is not None
        self.last = gen
        # The reply as text (cut at a stop string; end-of-text not included); encode_conversation closes it with
        # <|endoftext|> however it ended, as every response ends in training.
        self.history.append((conversation[-1], {"role": "assistant", "content": gen.text}))


HELP = "/reset forgets the conversation, /set NAME VALUE changes a sampling option, /exit quits"


def chat_loop(chat: Chat, *, stdin: TextIO | None = None, stdout: TextIO | None = None,
              stderr: TextIO | None = None) -> int:
    """Read messages line by line until /exit or end of input; stream each response to stdout."""
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    interactive = stdin is sys.stdin and stdin.isatty()
    print(f"chat format: {chat.format.name}. {HELP}.", file=stderr)
    while True:
        if interactive:
            try:
                line = input("> ")  # readline editing and history on a terminal
            except EOFError:
                return 0
        else:
            line = stdin.readline()
            if line == "":
                return 0  # end of piped input
        message = line.rstrip("\n")
        command = message.strip()
        if not command:
            continue
        if command in ("/exit", "/quit"):
            return 0
        if command == "/reset":
            chat.reset()
            print("(conversation cleared)", file=stderr)
            continue
        if command == "/help":
            print(HELP, file=stderr)
            continue
        if command.startswith("/set"):
            parts = command.split(maxsplit=2)
            try:
                if len(parts) != 3:
                    raise UserError("usage: /set NAME VALUE, e.g. /set temperature 0.7")
                chat.set(parts[1], parts[2])
                print(f"({parts[1]} = {getattr(chat.config, parts[1])!r})", file=stderr)
            except ValueError as e:
                print(f"error: {e}", file=stderr)
            continue
        if command.startswith("/"):
            print(f"error: unknown command {command.split()[0]!r}; {HELP}", file=stderr)
            continue
        try:
            _write_reply(chat.send(message), stdout)
        except KeyboardInterrupt:  # Ctrl-C stops this reply (it is not kept); at the prompt it quits
            stdout.write("\n")
            print("(reply interrupted)", file=stderr)


def _write_reply(pieces: Iterator[str], out: TextIO) -> None:
    """Stream a reply without the model's leading space or trailing whitespace (before a stop string)."""
    started, pending = False, ""
    for piece in pieces:
        text = pending + piece
        if not started:
            text = text.lstrip(" ")
            started = bool(text)
        body = text.rstrip()
        pending = text[len(body) :]  # whitespace is shown only once more text follows it
        out.write(body)
        out.flush()
    out.write("\n")
    out.flush()
