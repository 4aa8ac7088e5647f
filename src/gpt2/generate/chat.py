"""Chat with an instruction-tuned checkpoint: prompt formats, conversations as token ids, chat.json, the loop.

    python -m gpt2 chat path/to/checkpoint --temperature 0.7 --top-p 0.9
    printf 'Name a color.\\n/exit\\n' | python -m gpt2 chat path/to/checkpoint --greedy

**The prompt format lives in the checkpoint**, in `chat.json` beside config.json (its own small file,
so neither transformers' generation_config.json nor the tokenizer's files gain keys they do not know):

    {"format": "alpaca"}                                   # a named format, FORMATS below
    {"format": "alpaca", "stop": ["###"]}                  # a named format with fields changed
    {"prompt": "Q: {instruction}\\nA:", "stop": ["\\nQ:"]}   # a format of its own

Fields: `prompt` (the turn template, with `{instruction}` and optionally `{input}`), `prompt_no_input`
(used when the input is empty), `separator` (text between a response and the next turn), `system`
(the template of a system message, with `{system}`; unset: the system text then the separator) and
`stop` (stop strings that end a response). Fine-tuning writes the file with `save_chat_format`, which
also writes the same format as a Jinja `chat_template` into tokenizer_config.json (`chat_template`),
so transformers' `apply_chat_template` renders it too. A checkpoint without chat.json can still be
chatted with by naming a format (`gpt2 chat CKPT --format alpaca`).

"alpaca" is the format of ../shared/data/instruction-data.json that fine-tuning uses: Stanford
Alpaca's template, whose `### Input:` section is left out when the input is empty (as Alpaca's
`prompt_no_input` and LLMs-from-scratch's `format_input` do). A format whose template has no `{input}`
(plain) gets a non-empty input appended to the instruction after a blank line, never dropped.

**A conversation** is a list of messages ({"role": "system"|"user"|"assistant", "content": ...}; a
user message may carry Alpaca's "input"): an optional system message, then user and assistant
alternating. `encode_conversation` writes it as

    system(text)  prompt(turn 1) reply 1 <|endoftext|> separator prompt(turn 2) reply 2 <|endoftext|> ...

where system(text) is `system` with the text in it (unset: text + separator), emitted once before the
first turn. Training (gpt2.finetune.instruct_data) and chatting share this one definition.

**Tokenization equals transformers' apply_chat_template.** That renders the template to one string and
tokenizes it whole, splitting only at special tokens; BPE merges across the boundaries between template
and user text ("User: " + "hello" is "User", ":", " hello", not "User", ":", " ", "hello"; a separator
"\\n\\n" merges differently alone than before "Below"). So each run of text between special tokens
(template text and user text together) is encoded as one piece with `encode_ordinary`, split only at
the special tokens the template itself writes: the <|endoftext|> that closes a reply, and any written
into a template. User text is always plain text: a typed "<|endoftext|>" is encoded as ordinary text,
as a piece of its own, exactly as `apply_chat_template(..., sanitize_control_tokens=True)` does. Its
default would parse it as the special token: that is the one place we knowingly differ from the default.

Each assistant reply is its own piece, so the loss mask's boundary is exact. That equals the whole-string
tokenization wherever GPT-2's split pattern cuts at the boundary anyway: after the template's trailing
newline when the reply starts with a non-space character (alpaca: "### Response:\\n" + "45 kilometers
..."; every reply of instruction-data.json), and after "Assistant:" when it does not start with
punctuation (plain). A reply starting with a newline or two spaces after a newline, or with punctuation
after ":", can merge differently.

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
import json
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from gpt2.errors import UserError, UserFileNotFoundError
from gpt2.generate.budget import fit_new_tokens
from gpt2.generate.engine import Generation, SampleConfig, stream
from gpt2.model.gpt2 import GPT2LMHeadModel

CHAT_FILE = "chat.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"  # HF's; gpt2.tokenizer.io writes it beside the tokenizer

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)

Message = dict[str, str]
"""One message of a conversation: "role" (system, user or assistant), "content", and for a user message
optionally "input" (Alpaca's input, rendered into the format's `{input}` slot)."""

ROLES = ("system", "user", "assistant")

_SLOT = re.compile(r"(\{instruction\}|\{input\}|\{system\})")

Piece = tuple[str, bool]  # (text, written by the template): only template text may hold special tokens


def _fill(template: str, values: dict[str, str]) -> list[Piece]:
    """A template with its slots filled, as pieces; one pass, so user text holding "{input}" stays as it is."""
    pieces: list[Piece] = []
    for i, part in enumerate(_SLOT.split(template)):
        if i % 2 and part in values:
            pieces.append((values[part], False))
        elif part:
            pieces.append((part, True))
    return pieces


@dataclass
class ChatFormat:
    """How a conversation is written for the model; see the module docstring for the chat.json fields."""

    prompt: str
    """The turn template: `{instruction}` and optionally `{input}`; the response follows it."""
    prompt_no_input: str | None = None
    """The template when the input is empty (None: `prompt` with an empty input)."""
    separator: str = "\n\n"
    """Text between a response's <|endoftext|> and the next turn's prompt."""
    stop: list[str] = field(default_factory=list)
    """Strings that end a response (besides <|endoftext|>)."""
    name: str = "custom"
    system: str | None = None
    """The template of a system message, with `{system}` (None: the system text, then `separator`)."""

    def __post_init__(self) -> None:
        if "{instruction}" not in self.prompt:
            raise UserError(f"chat format prompt must contain {{instruction}}, got {self.prompt!r}")
        if self.prompt_no_input is not None and "{instruction}" not in self.prompt_no_input:
            raise UserError(f"chat format prompt_no_input must contain {{instruction}}, got {self.prompt_no_input!r}")
        if self.system is not None and "{system}" not in self.system:
            raise UserError(f"chat format system must contain {{system}}, got {self.system!r}")
        if isinstance(self.stop, str) or any(not isinstance(s, str) or not s for s in self.stop):
            raise UserError(f"chat format stop must be a list of non-empty strings, got {self.stop!r}")

    def template(self, input: str = "") -> str:
        return self.prompt_no_input if (not input and self.prompt_no_input is not None) else self.prompt

    def turn_pieces(self, instruction: str, input: str = "") -> list[Piece]:
        """One user turn's prompt as pieces. A template without `{input}` gets a non-empty input appended to
        the instruction after a blank line (as Alpaca is usually converted to chat messages), never dropped."""
        template = self.template(input)
        if input and "{input}" not in template:
            instruction, input = f"{instruction}\n\n{input}", ""
        return _fill(template, {"{instruction}": instruction, "{input}": input})

    def system_pieces(self, text: str) -> list[Piece]:
        """A system message's text as pieces, written once before the first turn."""
        if self.system is None:
            return [(text, False), (self.separator, True)]
        return _fill(self.system, {"{system}": text})

    def render(self, instruction: str, input: str = "") -> str:
        """The prompt text of one turn."""
        return "".join(text for text, _ in self.turn_pieces(instruction, input))

    def encode(self, tokenizer: Any, instruction: str, input: str = "") -> list[int]:
        """Token ids of one turn's prompt, encoded whole: the template may hold special tokens, the user's text
        never does (see the module docstring)."""
        return _encode_run(self.turn_pieces(instruction, input), tokenizer, _special_pattern(tokenizer))

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


# ------------------------------------------------------------------------------- conversations
def check_conversation(messages: Sequence[Message], *, generation: bool, where: str = "conversation") -> None:
    """Raise a one-line UserError unless `messages` is a conversation the formats can write: an optional system
    message, then user and assistant alternating, ending with the assistant's response (training) or with the
    user's message (generation: the model writes the response)."""
    if isinstance(messages, (str, bytes, dict)) or not isinstance(messages, Sequence) or not messages:
        raise UserError(f"{where}: expected a non-empty list of messages, each {{\"role\": ..., \"content\": ...}}")
    expected = "user"
    for i, m in enumerate(messages):
        at = f"{where}: message {i}"
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise UserError(f"{at} must be an object with a string 'role' ({', '.join(ROLES)}) and 'content'")
        role = m["role"]
        if role not in ROLES:
            raise UserError(f"{at} has unknown role {role!r}; known roles: {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise UserError(f"{at} ({role}) needs a string 'content', got {type(m.get('content')).__name__}")
        if m.get("input") is not None and (role != "user" or not isinstance(m["input"], str)):
            raise UserError(f"{at} ({role}): 'input' must be a string on a user message")
        if role == "system":
            if i:
                raise UserError(f"{at} is a system message; only the first message may be one (merge the system texts into it)")
            continue
        if role != expected:
            raise UserError(f"{at} is the {role}'s where the {expected}'s should be: after an optional system "
                            "message, user and assistant messages alternate")
        expected = "assistant" if role == "user" else "user"
    last = messages[-1]["role"]
    if generation and last != "user":
        raise UserError(f"{where}: the last message is the {last}'s; to prompt a response, end with a user message")
    if not generation and last != "assistant":
        what = "has no assistant message" if not any(m["role"] == "assistant" for m in messages) else \
            "ends with a user message"
        raise UserError(f"{where} {what}: a training conversation ends with the assistant's response (the text "
                        "the loss trains on); add it, or drop the unanswered message")


def _special_pattern(tokenizer: Any) -> re.Pattern[str] | None:
    """A regex splitting text at the tokenizer's special tokens (longest first), or None if it has none."""
    specials = sorted(getattr(tokenizer, "special_tokens", {}) or {}, key=len, reverse=True)
    return re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None


def _encode_run(pieces: list[Piece], tokenizer: Any, specials: re.Pattern[str] | None) -> list[int]:
    """Pieces of text encoded as one string, split at special tokens: one a template piece writes is that
    token; one in user text is encoded as plain text on its own (as transformers' sanitize_control_tokens)."""
    ids: list[int] = []
    text = ""
    for piece, from_template in pieces:
        if specials is None:
            text += piece
            continue
        for j, part in enumerate(specials.split(piece)):
            if j % 2:  # a special token's text
                ids += tokenizer.encode_ordinary(text) if text else []
                ids += [tokenizer.special_tokens[part]] if from_template else tokenizer.encode_ordinary(part)
                text = ""
            else:
                text += part
    return ids + (tokenizer.encode_ordinary(text) if text else [])


def encode_conversation(messages: Sequence[Message], tokenizer: Any, fmt: ChatFormat, *,
                        train_on_prompt: bool = False, add_generation_prompt: bool = False
                        ) -> tuple[list[int], list[bool]]:
    """Token ids of a conversation and a same-length target mask (see the module docstring for the layout).

    The mask is True on the tokens a loss trains on: each assistant reply's tokens and the <|endoftext|>
    that closes it (every token with train_on_prompt=True). With add_generation_prompt=True the
    conversation ends with a user message and the ids end with the prompt of the next response; the
    ids are then exactly `apply_chat_template(messages, add_generation_prompt=True)` with `chat_template(fmt)`.
    """
    check_conversation(messages, generation=add_generation_prompt)
    specials = _special_pattern(tokenizer)
    ids: list[int] = []
    mask: list[bool] = []
    run: list[Piece] = []  # the text since the last reply: encoded whole when the next reply (or the end) comes

    def add(new: list[int], target: bool) -> None:
        ids.extend(new)
        mask.extend([target or train_on_prompt] * len(new))

    for i, m in enumerate(messages):
        if m["role"] == "system":
            run += fmt.system_pieces(m["content"])
        elif m["role"] == "user":
            run += fmt.turn_pieces(m["content"], m.get("input") or "")
        else:
            add(_encode_run(run, tokenizer, specials), False)
            # the reply is its own piece, so the mask boundary is exact (module docstring: when that equals
            # the whole-string tokenization)
            add(_encode_run([(m["content"], False)], tokenizer, specials), True)
            add([tokenizer.eot_token], True)
            run = [(fmt.separator, True)] if i + 1 < len(messages) and fmt.separator else []
    add(_encode_run(run, tokenizer, specials), False)
    return ids, mask


def _literal(text: str) -> str:
    """A Jinja string literal (Jinja unescapes literals as Python's unicode-escape does; raw newlines would
    be normalised, so they are escaped too)."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r")
    return "'" + escaped.replace("\t", "\\t") + "'"


def _jinja(template: str, slots: dict[str, str]) -> str:
    """A template as Jinja output expressions: its text as literals, each slot as the expression `slots` gives."""
    return "".join("{{ " + (_literal(text) if from_template else text) + " }}"
                   for text, from_template in _fill(template, slots) if text)


def chat_template(fmt: ChatFormat) -> str:
    """The format as a Jinja chat template (HF's `chat_template`), rendering what `encode_conversation` encodes.

    Every piece of output is a `{{ }}` expression and every tag trims the whitespace around it, so the
    result is the same with or without transformers' trim_blocks/lstrip_blocks. A user turn's template
    already ends with the response header, so `add_generation_prompt` adds nothing: a conversation
    ending with a user message ends with the prompt of the next response either way.
    """
    content = "message['content']"
    folded = "message['content'] + '\\n\\n' + input"  # an input for a template without {input}: see turn_pieces
    with_input = _jinja(fmt.prompt, {"{instruction}": content if "{input}" in fmt.prompt else folded,
                                     "{input}": "input"})
    user = with_input
    if fmt.prompt_no_input is not None or "{input}" not in fmt.prompt:
        no_input = _jinja(fmt.prompt_no_input or fmt.prompt, {"{instruction}": content, "{input}": ""})
        user = f"{{%- if input -%}}{with_input}{{%- else -%}}{no_input}{{%- endif -%}}"
    separator = "{{ " + _literal(fmt.separator) + " }}" if fmt.separator else ""
    system = "{{ message['content'] }}" + separator if fmt.system is None else _jinja(fmt.system, {"{system}": content})
    return (
        "{%- for message in messages -%}\n"
        "{%- if message['role'] == 'system' -%}\n"
        f"{system}\n"
        "{%- elif message['role'] == 'user' -%}\n"
        "{%- set input = message['input'] | default('', true) -%}\n"
        f"{user}\n"
        "{%- elif message['role'] == 'assistant' -%}\n"
        "{{ message['content'] }}{{ eos_token }}\n"
        f"{{%- if not loop.last -%}}{separator}{{%- endif -%}}\n"
        "{%- endif -%}\n"
        "{%- endfor -%}"
    )


def save_chat_format(directory: str | Path, fmt: ChatFormat | str) -> Path:
    """Write chat.json into a checkpoint directory ({"format": NAME} for a named format, else every field), and
    the same format as `chat_template` into its tokenizer_config.json when that file is there."""
    from gpt2.common import atomic_write_text

    if isinstance(fmt, str):
        if fmt not in FORMATS:
            raise UserError(f"unknown chat format {fmt!r}; known: {', '.join(FORMATS)}")
        d: dict[str, Any] = {"format": fmt}
        fmt = FORMATS[fmt]
    else:
        d = {k: v for k, v in fmt.to_dict().items() if k != "name" and not (k == "system" and v is None)}
    path = Path(directory) / CHAT_FILE
    atomic_write_text(path, json.dumps(d, indent=2, ensure_ascii=False) + "\n")
    config_path = Path(directory) / TOKENIZER_CONFIG_FILE
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UserError(f"{config_path} is not valid JSON ({e.msg} at line {e.lineno}); save the tokenizer "
                            "again") from None
        if not isinstance(config, dict):
            raise UserError(f"{config_path} must hold a JSON object; save the tokenizer again")
        config["chat_template"] = chat_template(fmt)
        atomic_write_text(config_path, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
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
