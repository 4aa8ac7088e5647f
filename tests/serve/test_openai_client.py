"""The official `openai` client against a live `gpt2 serve` on loopback: completions and chat, streamed and
not, n > 1, stop strings (one spanning a token boundary), logprobs + echo, include_usage, usage counts, and
greedy output equal to `gpt2 generate --greedy`."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter

import pytest
import torch

from gpt2.generate import generate
from gpt2.generate.chat import FORMATS, encode_conversation

PROMPT = "The quick brown"


def test_models_lists_the_served_model(client) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"


@pytest.mark.slow
def test_greedy_completion_equals_gpt2_generate_greedy(client, ckpt, tok) -> None:
    r = subprocess.run([sys.executable, "-m", "gpt2", "generate", str(ckpt), PROMPT, "--greedy", "--json",
                        "--max-new-tokens", "24"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    cli = json.loads(r.stdout)["results"][0]
    out = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=24, temperature=0)
    choice = out.choices[0]
    assert choice.text == cli["text"]
    assert choice.finish_reason == ("length" if cli["finish_reason"] == "length" else "stop")
    assert out.usage.prompt_tokens == len(tok.encode(PROMPT)) == cli["prompt_tokens"]
    assert out.usage.completion_tokens == cli["completion_tokens"]
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    assert out.object == "text_completion" and out.id.startswith("cmpl-")


def test_streamed_completion_equals_the_whole_one_and_counts_usage(client, tok) -> None:
    whole = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=30, temperature=0)
    chunks = list(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=30, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len(texts) > 3, "the text must come in several chunks"
    assert "".join(texts) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == len(tok.encode(PROMPT))
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_n_samples_are_seeded_like_gpt2_generate(client, model, tok) -> None:
    out = client.completions.create(model="tiny", prompt="Once upon", max_tokens=20, n=3, seed=7, temperature=1.0)
    assert [c.index for c in out.choices] == [0, 1, 2]
    texts = [c.text for c in out.choices]
    assert len(set(texts)) > 1, "independent samples should differ"
    ref = generate(model, tok, "Once upon", max_new_tokens=20, num_samples=3, seed=7, temperature=1.0)
    assert texts == [g.text for g in ref]
    again = client.completions.create(model="tiny", prompt="Once upon", max_tokens=20, n=3, seed=7)
    assert [c.text for c in again.choices] == texts
    assert out.usage.prompt_tokens == len(tok.encode("Once upon"))  # the prompt counts once, not n times
    assert out.usage.completion_tokens == sum(len(g.tokens) for g in ref)


def test_streamed_n_samples_interleave_by_index(client) -> None:
    whole = client.completions.create(model="tiny", prompt="Once upon", max_tokens=12, n=2, seed=3)
    parts: dict[int, str] = {0: "", 1: ""}
    for chunk in client.completions.create(model="tiny", prompt="Once upon", max_tokens=12, n=2, seed=3,
                                           stream=True):
        for c in chunk.choices:
            parts[c.index] += c.text
    assert [parts[0], parts[1]] == [c.text for c in whole.choices]


def _whole_word_token(tok) -> str:
    """A token that is a space and at least two ASCII letters (' jum'), so it is whole characters."""
    for t in range(256, tok.n_vocab):
        b = tok.decode_single_token_bytes(t)
        if len(b) >= 3 and b[:1] == b" " and b[1:].isascii() and b[1:].isalpha():
            return b.decode()
    raise AssertionError("the tiny tokenizer has no ' word' token")


def test_stop_string_spanning_a_token_boundary_is_cut_exactly(client, tok) -> None:
    """A boundary built on purpose: logit_bias makes every generated token the same word token A (' jum'), and
    the stop string is A's last character then A's first ('m '), found first across the first two tokens, in
    neither alone; the text ends one character before that boundary."""
    word = _whole_word_token(tok)
    token = tok.encode(word)
    assert len(token) == 1
    stop = word[-1] + word[0]
    assert stop not in word
    text = word * 8
    expected = text[: text.find(stop)]
    assert expected == word[:-1]
    body = {"model": "tiny", "prompt": "a", "max_tokens": 8, "temperature": 0, "logit_bias": {str(token[0]): 100}}
    unstopped = client.completions.create(**body)
    assert unstopped.choices[0].text == text  # the bias alone: the word 8 times
    out = client.completions.create(**body, stop=[stop, "zzz"])
    assert out.choices[0].text == expected
    assert out.choices[0].finish_reason == "stop"
    chunks = [c.choices[0].text for c in client.completions.create(**body, stop=stop, stream=True) if c.choices]
    assert "".join(chunks) == expected
    assert not any(stop in c for c in chunks)


def test_logprobs_and_echo_score_the_prompt_like_the_model(client, model, tok) -> None:
    out = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=3, temperature=0, logprobs=2, echo=True)
    c = out.choices[0]
    ids = tok.encode(PROMPT)
    lp = c.logprobs
    assert c.text.startswith(PROMPT)
    assert len(lp.tokens) == len(ids) + 3 == len(lp.token_logprobs) == len(lp.top_logprobs)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    with torch.no_grad():
        full = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)  # (L, V)
    for t in range(1, len(ids)):
        assert math.isclose(lp.token_logprobs[t], full[t - 1, ids[t]].item(), abs_tol=1e-4)
    for t in range(len(ids), len(lp.tokens)):  # greedy: each new token is the top one, and has 2 alternatives
        top = lp.top_logprobs[t]
        assert len(top) in (2, 3) and math.isclose(max(top.values()), lp.token_logprobs[t], abs_tol=1e-6)
    assert "".join(lp.tokens[: len(ids)]) == PROMPT
    assert lp.text_offset[0] == 0 and lp.text_offset[len(ids)] == len(PROMPT)


def test_token_id_prompts_and_lists_of_prompts(client, tok) -> None:
    a, b = tok.encode("Once upon"), tok.encode("The quick")
    by_ids = client.completions.create(model="tiny", prompt=[a, b], max_tokens=8, temperature=0)
    by_text = client.completions.create(model="tiny", prompt=["Once upon", "The quick"], max_tokens=8, temperature=0)
    single = client.completions.create(model="tiny", prompt=b, max_tokens=8, temperature=0)
    assert [c.text for c in by_ids.choices] == [c.text for c in by_text.choices]
    assert by_ids.choices[1].text == single.choices[0].text
    assert by_ids.usage.prompt_tokens == len(a) + len(b)


def _token_str(tok, t: int) -> str:
    """A token as OpenAI's logprobs name it: its text, or `bytes:\\xNN...` when it is not whole UTF-8."""
    data = tok.decode_single_token_bytes(t)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in data)


def _penalised_greedy(model, tok, prompt: str, n: int, *, frequency: float = 0.0, presence: float = 0.0) -> list[int]:
    """Greedy decoding with OpenAI's penalties, recomputing the whole prefix each step: every token already
    generated c times has its logit lowered by c * frequency + presence."""
    ids, out, counts = tok.encode(prompt), [], Counter()
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids + out])).logits[0, -1, : tok.n_vocab].double()  # (V,)
            for t, c in counts.items():
                logits[t] -= c * frequency + presence
            out.append(int(logits.argmax()))
            counts[out[-1]] += 1
            if out[-1] == tok.eot_token:
                break
    return out


def _tokens(client, **body) -> list[str]:
    out = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=20, logprobs=0, **body)
    return out.choices[0].logprobs.tokens


def test_controls_change_the_output(client, model, tok) -> None:
    """Each control, on a case built so that it must matter, changes the tokens, and to what its reference
    gives: OpenAI's penalty formula, `gpt2 generate`'s repetition_penalty and min_p (same seed, same noise)."""
    greedy = _tokens(client, temperature=0)
    sampled = _tokens(client, temperature=1.5, seed=1)
    assert sampled != greedy
    assert _tokens(client, temperature=1.5, seed=1, extra_body={"top_k": 1}) == greedy  # top_k=1 is greedy

    target = tok.encode(" fox")[0]
    assert greedy[:5] != [_token_str(tok, target)] * 5
    assert _tokens(client, temperature=0, logit_bias={str(target): 100})[:5] == [_token_str(tok, target)] * 5

    assert len(set(greedy)) < len(greedy), "greedy repeats tokens here, so the penalties have something to lower"
    for frequency, presence in [(2.0, 0.0), (0.0, 2.0), (0.5, 0.0)]:
        expected = _penalised_greedy(model, tok, PROMPT, 20, frequency=frequency, presence=presence)
        got = _tokens(client, temperature=0, frequency_penalty=frequency, presence_penalty=presence)
        assert got == [_token_str(tok, t) for t in expected], (frequency, presence)
        assert got != greedy, (frequency, presence)

    rep = generate(model, tok, PROMPT, max_new_tokens=20, temperature=0, repetition_penalty=1.3)[0]
    got = _tokens(client, temperature=0, extra_body={"repetition_penalty": 1.3})
    assert got == [_token_str(tok, t) for t in rep.tokens] and got != greedy

    cut = generate(model, tok, PROMPT, max_new_tokens=20, temperature=1.5, seed=1, min_p=0.3)[0]
    got = _tokens(client, temperature=1.5, seed=1, extra_body={"min_p": 0.3})
    assert got == [_token_str(tok, t) for t in cut.tokens] and got != sampled

    long = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=60, temperature=0,
                                     extra_body={"ignore_eos": True})
    assert long.usage.completion_tokens == 60 and long.choices[0].finish_reason == "length"


def test_chat_completion_streamed_and_not(client, tok) -> None:
    messages = [{"role": "user", "content": "Tell me a story"}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=20, temperature=0)
    msg = whole.choices[0].message
    assert msg.role == "assistant" and whole.object == "chat.completion"
    assert whole.choices[0].finish_reason in ("stop", "length")
    prompt_ids = FORMATS["plain"].encode(tok, "Tell me a story")
    assert whole.usage.prompt_tokens == len(prompt_ids)
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=20, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == msg.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == len(prompt_ids)


def test_chat_history_and_logprobs(client, tok) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Once upon"}]
    out = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=0, n=2,
                                         logprobs=True, top_logprobs=2)
    # as gpt2 chat and transformers' apply_chat_template encode it: each past reply closed by <|endoftext|>
    expected, _ = encode_conversation(messages, tok, FORMATS["plain"], add_generation_prompt=True)
    assert expected.count(tok.eot_token) == 1
    assert out.usage.prompt_tokens == len(expected)
    assert out.choices[0].message.content == out.choices[1].message.content  # greedy: n copies agree
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens // 2
    assert all(len(c.top_logprobs) == 2 and c.logprob <= 0 for c in content)
