"""Prompt formats, chat.json, and the chat loop in-process (the command line is tested in test_generate_cli.py)."""

from __future__ import annotations

import io
import json

import pytest

from gpt2.generate.chat import (
    CHAT_FILE,
    FORMATS,
    Chat,
    ChatFormat,
    _write_reply,
    chat_loop,
    encode_conversation,
    format_prompt,
    load_chat_format,
    save_chat_format,
)

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\nEdit the following sentence for grammar.\n\n### Input:\nHe go to the park every day."
    "\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\nConvert 45 kilometers to meters.\n\n### Response:\n"
)


def test_alpaca_format_is_the_instruction_data_format() -> None:
    assert format_prompt("Edit the following sentence for grammar.", "He go to the park every day.") == ALPACA_WITH_INPUT
    assert format_prompt("Convert 45 kilometers to meters.") == ALPACA_NO_INPUT  # no empty Input section


def test_turn_encoding_equals_encoding_the_rendered_text(tok) -> None:
    fmt = FORMATS["alpaca"]
    for instruction, inp in [("Convert 45 kilometers to meters.", ""), ("Edit this.", "He go to the park.")]:
        assert fmt.encode(tok, instruction, inp) == tok.encode(fmt.render(instruction, inp))
    # the user's text is plain text: a typed special token stays text
    ids = fmt.encode(tok, "say <|endoftext|>")
    assert tok.eot_token not in ids and "<|endoftext|>" in tok.decode(ids)
    custom = ChatFormat(prompt="<|endoftext|>Q: {instruction}\nA:")
    assert custom.encode(tok, "hi")[0] == tok.eot_token  # the template may hold special tokens


def test_chat_json_named_custom_and_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no chat.json.*--format"):
        load_chat_format(tmp_path)
    assert load_chat_format(tmp_path, format="alpaca") is FORMATS["alpaca"]
    save_chat_format(tmp_path, "alpaca")
    assert json.loads((tmp_path / CHAT_FILE).read_text()) == {"format": "alpaca"}
    assert load_chat_format(tmp_path).render("x") == FORMATS["alpaca"].render("x")
    (tmp_path / CHAT_FILE).write_text(json.dumps({"format": "alpaca", "stop": ["###"]}))
    fmt = load_chat_format(tmp_path)
    assert fmt.stop == ["###"] and fmt.prompt == FORMATS["alpaca"].prompt
    save_chat_format(tmp_path, ChatFormat(prompt="Q: {instruction}\nA:", stop=["\nQ:"]))
    assert load_chat_format(tmp_path).render("hi") == "Q: hi\nA:"
    for bad, match in [({"format": "vicuna"}, "unknown chat format 'vicuna'"), ({"prompt": "no slot"}, "{instruction}"),
                       ({"prompt": "{instruction}", "colour": 1}, "unknown key"), ({}, "give a named 'format'")]:
        (tmp_path / CHAT_FILE).write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=match):
            load_chat_format(tmp_path)
    (tmp_path / CHAT_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_chat_format(tmp_path)


def test_chat_keeps_history_drops_oldest_and_resets(model, tok) -> None:
    from gpt2.generate import SampleConfig

    fmt = FORMATS["plain"]
    chat = Chat(model, tok, fmt, SampleConfig(max_new_tokens=8, temperature=0))
    first = "".join(chat.send("hello"))
    assert len(chat.history) == 1 and chat.last is not None
    user, reply = chat.history[0]  # the history is messages: the reply as its text
    assert user == {"role": "user", "content": "hello"} and reply == {"role": "assistant", "content": chat.last.text}
    assert chat.prompt == fmt.encode(tok, "hello")
    "".join(chat.send("again"))
    assert len(chat.history) == 2
    # every prompt is the whole conversation encoded at once (as apply_chat_template does), the past reply
    # closed by <|endoftext|> however it ended
    again = [user, reply, {"role": "user", "content": "again"}]
    assert chat.prompt == encode_conversation(again, tok, fmt, add_generation_prompt=True)[0]
    assert chat.prompt.count(tok.eot_token) == 1
    # a long message pushes the oldest exchanges out of the 128-token window
    "".join(chat.send("the quick brown fox " * 16))  # 81 tokens: the two exchanges before do not fit beside it
    assert len(chat.history) < 3 and len(chat.prompt) <= model.config.n_positions - 8
    chat.reset()
    assert chat.history == [] and "".join(chat.send("hello")) == first  # greedy: same reply from scratch
    with_system = Chat(model, tok, fmt, SampleConfig(max_new_tokens=8, temperature=0), system="Be brief.")
    "".join(with_system.send("hello"))
    assert with_system.prompt == tok.encode("Be brief.\nUser: hello\nAssistant:")  # text + separator, then the turn


def test_chat_set_and_loop_commands(model, tok) -> None:
    from gpt2.generate import SampleConfig

    chat = Chat(model, tok, FORMATS["plain"], SampleConfig(max_new_tokens=6, temperature=0))
    chat.set("temperature", "0.5")
    chat.set("top_k", "none")
    assert chat.config.temperature == 0.5 and chat.config.top_k is None
    for name, value, match in [("temprature", "1", "unknown option"), ("top_p", "2", "top_p"),
                               ("top_k", "x", "type int")]:
        with pytest.raises(ValueError, match=match):
            chat.set(name, value)
    out, err = io.StringIO(), io.StringIO()
    stdin = io.StringIO("/set temperature 0\nhello\n\n/bogus\n/set top_p\n/reset\nhello\n/exit\nnever read\n")
    assert chat_loop(chat, stdin=stdin, stdout=out, stderr=err) == 0
    replies = out.getvalue().split("\n")
    assert len(replies) == 3 and replies[0] == replies[1]  # two replies (+ the final ""), equal after /reset
    assert "unknown command '/bogus'" in err.getvalue() and "usage: /set NAME VALUE" in err.getvalue()
    assert "(conversation cleared)" in err.getvalue()


def test_reply_writer_trims_leading_space_and_trailing_whitespace() -> None:
    out = io.StringIO()
    _write_reply(iter([" Hello", " world", "\n", "\n"]), out)
    assert out.getvalue() == "Hello world\n"
    out = io.StringIO()
    _write_reply(iter(["a", "\n\n", "b "]), out)
    assert out.getvalue() == "a\n\nb\n"
