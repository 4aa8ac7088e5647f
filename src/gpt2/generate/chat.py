"""Chat with an instruction-tuned checkpoint: prompt formats, the checkpoint's chat.json, and the loop.

    python -m gpt2 chat path/to/checkpoint --temperature 0.7 --top-p 0.9
    printf 'Name a color.\\n/exit\\n' | python -m gpt2 chat path/to/checkpoint --greedy

**The prompt format lives in the checkpoint**, in `chat.json` beside config.json (its own small file,
so neither transformers' generation_config.json nor the tokenizer's files gain keys they do not know):

    {"format": "alpaca"}                                   # a named format, FORMATS below
    {"format": "alpaca", "stop": ["###"]}                  # a named format with fields changed
    {"prompt": "Q: {instruction}\\nA:", "stop": ["\\nQ:"]}   # a format of its own

Fields: `prompt` (the turn template, with `{instruction}` and optionally `{input}`), `prompt_no_input`
(used when the input is empty), `separator` (text between a response and the next turn) and `stop`
(stop strings that end a response). Fine-tuning writes the file with `save_chat_format`; a checkpoint
without one can still be chatted with by naming a format (`gpt2 chat CKPT --format alpaca`).

"alpaca" is the format of ../shared/data/instruction-data.json that fine-tuning uses: Stanford
Alpaca's template, whose `### Input:` section is left out when the input is empty (as Alpaca's
`prompt_no_input` and LLMs-from-scratch's `format_input` do). `format_prompt` renders it, so training
and chatting share one definition.

The loop keeps the conversation as token ids: each past turn is its prompt, the response the model
gave (ending with <|endoftext|> when it ended there) and the separator. When the history no longer
fits the context window next to max_new_tokens, the oldest turns are dropped. Commands: /reset
(forget the history), /exit (or end of input), /set NAME VALUE (a sampling option, e.g. /set
temperature 0.5), /help. The user's text is encoded as plain text, so a typed <|endoftext|> is text.
Ctrl-C during a reply stops it (the turn is not kept); at the prompt it quits.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from gpt2.errors import UserError, UserFileNotFoundError
from gpt2.generate.engine import Generation, SampleConfig, stream
from gpt2.model.gpt2 import GPT2LMHeadModel

CHAT_FILE = "chat.json"

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)


@dataclass
class ChatFormat:
    """How one turn is written for the model; see the module docstring for the chat.json fields."""

    prompt: str
    """The turn template: `{instruction}` and optionally `{input}`; the response follows it."""
    prompt_no_input: str | None = None
    """The template when the input is empty (None: `prompt` with an empty input)."""
    separator: str = "\n\n"
    """Text between a response and the next turn's prompt."""
    stop: list[str] = field(default_factory=list)
    """Strings that end a response (besides <|endoftext|>)."""
    name: str = "custom"

    def __post_init__(self) -> None:
        if "{instruction}" not in self.prompt:
            raise UserError(f"chat format prompt must contain {{instruction}}, got {self.prompt!r}")
        if self.prompt_no_input is not None and "{instruction}" not in self.prompt_no_input:
            raise UserError(f"chat format prompt_no_input must contain {{instruction}}, got {self.prompt_no_input!r}")
        if isinstance(self.stop, str) or any(not isinstance(s, str) or not s for s in self.stop):
            raise UserError(f"chat format stop must be a list of non-empty strings, got {self.stop!r}")

    def template(self, input: str = "") -> str:
        return self.prompt_no_input if (not input and self.prompt_no_input is not None) else self.prompt

    def render(self, instruction: str, input: str = "") -> str:
        """The prompt text of one turn."""
        return self.template(input).replace("{instruction}", instruction).replace("{input}", input)

    def encode(self, tokenizer: Any, instruction: str, input: str = "") -> list[int]:
        """Token ids of one turn: the template may hold special tokens, the user's text never does."""
        ids: list[int] = []
        rest = self.template(input)
        values = {"{instruction}": instruction, "{input}": input}
        while rest:
            at = [(rest.find(k), k) for k in values if k in rest]
            if not at:
                ids += tokenizer.encode(rest, allowed_special="all")
                break
            i, key = min(at)
            if i:
                ids += tokenizer.encode(rest[:i], allowed_special="all")
            if values[key]:
                ids += tokenizer.encode_ordinary(values[key])
            rest = rest[i + len(key) :]
        return ids

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "chat format") -> ChatFormat:
        if not isinstance(d, dict):
            raise UserError(f"{source} must hold a JSON object")
        d = dict(d)
        base: dict[str, Any] = {}
        if "format" in d:
            name = d.pop("format")
            if name not in FORMATS:
                raise UserError(f"{source}: unknown chat format {name!r}; known: {', '.join(FORMATS)}")
            base = FORMATS[name].to_dict()
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise UserError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}; "
                             f"expected format, {', '.join(sorted(names - {'name'}))}")
        merged = {**base, **d}
        if "prompt" not in merged:
            raise UserError(f"{source}: give a named 'format' ({', '.join(FORMATS)}) or a 'prompt' template")
        if base and len(d) > 0 and "name" not in d:
            merged["name"] = f"{base['name']} (modified)"
        return cls(**merged)


_ALPACA = f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{{instruction}}\n\n### Input:\n{{input}}\n\n### Response:\n"
_ALPACA_NO_INPUT = f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{{instruction}}\n\n### Response:\n"

FORMATS: dict[str, ChatFormat] = {
    "alpaca": ChatFormat(prompt=_ALPACA, prompt_no_input=_ALPACA_NO_INPUT, separator="\n\n",
                         stop=["### Instruction:", "### Input:", "### Response:", "Below is an instruction"],
                         name="alpaca"),
    "plain": ChatFormat(prompt="User: {instruction}\nAssistant:", separator="\n", stop=["\nUser:"], name="plain"),
}


def format_prompt(instruction: str, input: str = "", *, format: str = "alpaca") -> str:
    """The prompt text of one instruction in a named format (what fine-tuning trains on, before the response)."""
    if format not in FORMATS:
        raise UserError(f"unknown chat format {format!r}; known: {', '.join(FORMATS)}")
    return FORMATS[format].render(instruction, input)


def save_chat_format(directory: str | Path, fmt: ChatFormat | str) -> Path:
    """Write chat.json into a checkpoint directory: {"format": NAME} for a named format, else every field."""
    from gpt2.common import atomic_write_text

    if isinstance(fmt, str):
        if fmt not in FORMATS:
            raise UserError(f"unknown chat format {fmt!r}; known: {', '.join(FORMATS)}")
        d: dict[str, Any] = {"format": fmt}
    else:
        d = {k: v for k, v in fmt.to_dict().items() if k != "name"}
    path = Path(directory) / CHAT_FILE
    atomic_write_text(path, json.dumps(d, indent=2, ensure_ascii=False) + "\n")
    return path


def load_chat_format(directory: str | Path, *, format: str | None = None) -> ChatFormat:
    """The checkpoint's chat format: `format` if named, else its chat.json (a clear error if it has none)."""
    if format is not None:
        if format not in FORMATS:
            raise UserError(f"unknown chat format {format!r}; known: {', '.join(FORMATS)}")
        return FORMATS[format]
    path = Path(directory) / CHAT_FILE
    if not path.is_file():
        raise UserFileNotFoundError(
            f"{directory} has no {CHAT_FILE}, so its prompt format is unknown (is it instruction-tuned?); "
            f"name one with --format ({', '.join(FORMATS)}) or write {CHAT_FILE}, e.g. {{\"format\": \"alpaca\"}}"
        )
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None
    return ChatFormat.from_dict(d, source=str(path))


class Chat:
    """A conversation with a model: the history as token ids, and one streamed response per message."""

    def __init__(self, model: GPT2LMHeadModel, tokenizer: Any, fmt: ChatFormat, config: SampleConfig | None = None,
                 *, pack: bool = True) -> None:
        self.model, self.tokenizer, self.format = model, tokenizer, fmt
        config = config or SampleConfig(max_new_tokens=256)
        # A growing history must never stop the chat: keep the latest tokens (with a warning) if one turn
        # alone overflows; older turns are dropped whole before that.
        self.config = config.replace(stop=[*fmt.stop, *config.stop], num_samples=1, long_prompt="truncate")
        self.pack = pack
        self.history: list[list[int]] = []
        self.last: Generation | None = None

    def reset(self) -> None:
        self.history = []

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
        self.config = self.config.replace(**{name: parsed})

    def send(self, message: str, input: str = "") -> Iterator[str]:
        """Stream the response to one message as text pieces; the turn joins the history when it ends."""
        turn = self.format.encode(self.tokenizer, message, input)
        budget = self.model.config.n_positions - self.config.max_new_tokens
        while self.history and sum(map(len, self.history)) + len(turn) > budget:
            self.history.pop(0)
        prompt = [t for past in self.history for t in past] + turn
        gen: Generation | None = None
        for event in stream(self.model, self.tokenizer, [prompt], self.config, pack=self.pack):
            if event.text:
                yield event.text
            gen = event.generation or gen
        assert gen is not None
        self.last = gen
        if gen.finish_reason == "stop":
            reply = self.tokenizer.encode_ordinary(gen.text)  # the tokens up to the stop string
        else:
            reply = list(gen.tokens)  # ends with <|endoftext|> when the model ended there
        sep = self.tokenizer.encode(self.format.separator, allowed_special="all") if self.format.separator else []
        self.history.append(turn + reply + sep)


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
