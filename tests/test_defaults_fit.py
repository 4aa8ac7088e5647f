"""Defaults that fit the model: every verb's max_new_tokens default on a 256-token-context instruct model.

Every shipped recipe trains a 256-token context; chat's default of 256 new tokens left no room for a prompt
(issue 29). The rule is gpt2.generate.budget.fit_new_tokens: a default is capped to the room the context
leaves (the prompt's room when the prompt is known, else half the context) with one note on stderr; a
length the user gave that cannot fit stays one `error:` line (exit 2), or a 400 in OpenAI's shape.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import torch

from gpt2 import GPT2Config, GPT2LMHeadModel
from gpt2.generate.budget import fit_new_tokens

N_POSITIONS = 256
EXAMPLES = [
    {"instruction": "Name a color.", "input": "", "output": "Blue."},
    {"instruction": "Give a synonym of happy.", "input": "", "output": "Glad."},
    {"instruction": "Summarize the text.", "input": "The cat sat on the mat all day long.", "output": "A cat sat."},
]


@pytest.fixture(scope="module")
def instruct_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LM with a 256-token context, a BPE trained on Alpaca prompts, and chat.json (alpaca):
    the shape `gpt2 finetune instruct sft-alpaca` leaves, in milliseconds."""
    from gpt2.generate.chat import FORMATS, save_chat_format
    from gpt2.tokenizer import train_bpe

    texts = ["".join(text for text, _ in FORMATS["alpaca"].turn_pieces(e["instruction"], e["input"])) + e["output"]
             for e in EXAMPLES]
    tok = train_bpe(texts * 20, vocab_size=600, special_tokens=["<|endoftext|>"], progress=False)
    torch.manual_seed(0)
    eot = tok.eot_token
    model = GPT2LMHeadModel(GPT2Config(vocab_size=tok.n_vocab, n_positions=N_POSITIONS, n_embd=64, n_layer=2,
                                       n_head=4, bos_token_id=eot, eos_token_id=eot))
    with torch.no_grad():  # an answer that ends at once, as a tuned model's short answers do: the tests run fast
        model.transformer.ln_f.weight.zero_()  # (the last hidden state is then ln_f.bias, aimed at <|endoftext|>)
        model.transformer.ln_f.bias.copy_(10 * model.transformer.wte.weight[eot])
    d = tmp_path_factory.mktemp("sft-tiny")
    model.save_pretrained(d)
    tok.save(d)
    save_chat_format(d, "alpaca")
    return d


def one_error_line(r) -> str:
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def test_the_rule() -> None:
    assert fit_new_tokens(256, requested=None, default=256) == (128, fit_new_tokens(256, requested=None,
                                                                                    default=256)[1])
    assert fit_new_tokens(256, requested=None, default=256)[1].startswith("note: --max-new-tokens 128 instead")
    assert fit_new_tokens(1024, requested=None, default=256) == (256, None)  # fits: untouched, no note
    assert fit_new_tokens(256, requested=None, default=128, prompt_tokens=200)[0] == 56  # the prompt's room
    assert fit_new_tokens(256, requested=None, default=128, prompt_tokens=300)[0] == 128  # no room: half
    assert fit_new_tokens(256, requested=255, default=128) == (255, None)  # the user's value is kept
    with pytest.raises(ValueError, match="--max-new-tokens 256 leaves no room for a prompt"):
        fit_new_tokens(256, requested=256, default=128)


def test_chat_with_its_defaults(instruct_dir, gpt2_main, monkeypatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("Name a color.\nGive a synonym of happy.\n"))
    r = gpt2_main("chat", str(instruct_dir), "--greedy")
    assert r.returncode == 0, r.stderr
    assert "note: --max-new-tokens 128 instead of the default 256" in r.stderr
    assert "error" not in r.stderr and len(r.stdout.splitlines()) == 2  # two replies


def test_chat_explicit_too_long_is_one_error(instruct_dir, gpt2_main, monkeypatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("Name a color.\n"))
    line = one_error_line(gpt2_main("chat", str(instruct_dir), "--greedy", "--max-new-tokens", "256"))
    assert "--max-new-tokens 256 leaves no room for a prompt" in line and "n_positions=256" in line


def test_chat_set_too_long_is_refused_and_the_chat_goes_on(instruct_dir, gpt2_main, monkeypatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("/set max_new_tokens 300\nName a color.\n"))
    r = gpt2_main("chat", str(instruct_dir), "--greedy", "--max-new-tokens", "4")
    assert r.returncode == 0 and "error: max_new_tokens 300 leaves no room" in r.stderr
    assert len(r.stdout.splitlines()) == 1


def test_generate_chat_with_its_defaults(instruct_dir, gpt2_main) -> None:
    r = gpt2_main("generate", str(instruct_dir), "Name a color.", "--chat", "--greedy", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["config"]["max_new_tokens"] == 128 and "note" not in r.stderr  # the default fits beside this prompt
    assert out["results"][0]["finish_reason"] == "eot"


def test_generate_default_shrinks_to_a_long_prompts_room(instruct_dir, gpt2_main) -> None:
    prompt = "the cat sat on the mat " * 40
    r = gpt2_main("generate", str(instruct_dir), prompt, "--greedy", "--json", "--ignore-eot")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)["results"][0]
    room = N_POSITIONS - result["prompt_tokens"]
    assert 0 < room < 128 and result["completion_tokens"] == room
    assert f"note: --max-new-tokens {room} instead of the default 128" in r.stderr
    assert f"the room a {result['prompt_tokens']}-token prompt leaves" in r.stderr


def test_generate_explicit_too_long_is_one_error(instruct_dir, gpt2_main) -> None:
    line = one_error_line(gpt2_main("generate", str(instruct_dir), "Name a color.", "--chat", "--max-new-tokens", "300"))
    assert "--max-new-tokens 300 leaves no room for a prompt" in line


@pytest.fixture(scope="module")
def heldout(instruct_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("heldout") / "heldout.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES), encoding="utf-8")
    return path


def test_eval_instruct_with_its_defaults(instruct_dir, heldout, gpt2_main) -> None:
    r = gpt2_main("eval", str(instruct_dir), "--instruct", str(heldout), "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert "note: --max-new-tokens: the default 256 was capped for 3 of 3 prompts" in r.stderr
    assert result["max_new_tokens"] == 256
    assert all(0 < a["budget"] < 256 and a["new_tokens"] <= a["budget"] for a in result["answers"])


def test_eval_instruct_explicit_too_long_is_one_error(instruct_dir, heldout, gpt2_main) -> None:
    line = one_error_line(gpt2_main("eval", str(instruct_dir), "--instruct", str(heldout), "--max-new-tokens", "256"))
    assert "--max-new-tokens 256 leaves no room for a prompt" in line


def test_serve_with_its_defaults(instruct_dir) -> None:
    """No max_tokens: a chat completion gets the room its prompt leaves (vLLM's rule), a completion OpenAI's 16
    capped to its prompt's room; an explicit max_tokens that cannot fit stays a 400 in OpenAI's error shape."""
    from fastapi.testclient import TestClient

    from gpt2.load import load
    from gpt2.serve.app import create_app

    loaded = load(instruct_dir, device="cpu")
    app = create_app(loaded.model, loaded.tokenizer, name="sft", chat_format=loaded.chat_format)
    with TestClient(app) as http:
        chat = {"model": "sft", "messages": [{"role": "user", "content": "Name a color."}], "temperature": 0,
                "ignore_eos": True}
        r = http.post("/v1/chat/completions", json=chat)
        assert r.status_code == 200, r.text
        usage = r.json()["usage"]
        assert usage["prompt_tokens"] + usage["completion_tokens"] == N_POSITIONS  # all the room, no more
        long = {"model": "sft", "prompt": "the cat sat on the mat " * 42, "temperature": 0, "ignore_eos": True}
        r = http.post("/v1/completions", json=long)
        assert r.status_code == 200, r.text
        usage = r.json()["usage"]
        assert N_POSITIONS - usage["prompt_tokens"] < 16 and usage["prompt_tokens"] + usage["completion_tokens"] \
            == N_POSITIONS
        r = http.post("/v1/chat/completions", json={**chat, "max_tokens": 300})
        assert r.status_code == 400
        error = r.json()["error"]
        assert error["param"] == "max_tokens" and error["code"] == "context_length_exceeded"


def test_chat_default_gives_way_to_a_long_message(instruct_dir) -> None:
    """With the default length, a message whose prompt leaves less than it gets a shorter reply, not a prompt
    cut from the left (which would drop the format's preamble); the user's own length still cuts the prompt."""
    import warnings

    from gpt2.generate import PromptTruncatedWarning, SampleConfig
    from gpt2.generate.chat import Chat
    from gpt2.load import load

    loaded = load(instruct_dir, device="cpu")
    message = "the cat sat on the mat " * 30
    chat = Chat(loaded.model, loaded.tokenizer, loaded.chat_format, SampleConfig(max_new_tokens=128, temperature=0,
                                                                                 stop_at_eot=False))
    chat.fit_default = True
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptTruncatedWarning)
        "".join(chat.send(message))
    assert 128 < len(chat.prompt) < N_POSITIONS and chat.last.truncated_tokens == 0
    assert chat.last.prompt_tokens + chat.last.completion_tokens == N_POSITIONS
    chat.reset()
    chat.set("max_new_tokens", "128")
    with pytest.warns(PromptTruncatedWarning):
        "".join(chat.send(message))
