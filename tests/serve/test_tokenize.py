"""POST /tokenize (vLLM's route): a prompt or a chat's messages as the ids the generation routes would feed the
model, so a client (the playground) counts tokens as the server does; errors in OpenAI's shape.

    python -m pytest -q tests/serve/test_tokenize.py
"""

from __future__ import annotations

import httpx
import pytest
from test_errors import GOOD, assert_error

from gpt2.generate.chat import FORMATS, encode_conversation

CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Once upon a time"},
    {"role": "assistant", "content": " there was a fox."},
    {"role": "developer", "content": "Be kind."},  # joined to the system text, as chat completions do
    {"role": "user", "content": "héllo wörld"},
    {"role": "user", "content": "and more"},  # joined to the user message before it by a blank line
]


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=20) as c:
        yield c


def test_messages_count_what_chat_completions_prompt(http, tok) -> None:
    r = http.post("/tokenize", json={"model": "tiny", "messages": CONVERSATION})
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {"count", "max_model_len", "tokens"} and out["max_model_len"] == 128
    # the server's rendering (roles joined as documented), through the chat format's own encoder
    joined = [{"role": "system", "content": "Answer briefly.\n\nBe kind."}, CONVERSATION[1], CONVERSATION[2],
              {"role": "user", "content": "héllo wörld\n\nand more"}]
    assert out["tokens"] == encode_conversation(joined, tok, FORMATS["plain"], add_generation_prompt=True)[0]
    assert out["count"] == len(out["tokens"])
    chat = http.post("/v1/chat/completions", json={"messages": CONVERSATION, "max_tokens": 1}).json()
    assert chat["usage"]["prompt_tokens"] == out["count"]


@pytest.mark.parametrize("prompt", ["Once upon a time", "", "<|endoftext|>Once"])
def test_prompt_counts_what_completions_prompt(http, tok, prompt) -> None:
    out = http.post("/tokenize", json={"prompt": prompt}).json()
    done = http.post("/v1/completions", json={**GOOD, "prompt": prompt, "max_tokens": 1}).json()
    assert out["count"] == done["usage"]["prompt_tokens"] == len(out["tokens"])
    assert out["tokens"] == (list(tok.encode(prompt, allowed_special="all")) or [tok.eot_token])


def test_a_prompt_longer_than_the_context_is_counted(http) -> None:
    out = http.post("/tokenize", json={"messages": [{"role": "user", "content": "hi there " * 200}]}).json()
    assert out["count"] > out["max_model_len"]


def test_bad_tokenize_requests(http, start_server) -> None:
    msgs = [{"role": "user", "content": "hi"}]
    assert_error(http.post("/tokenize", json={}), 400, param="messages", words="exactly one")
    assert_error(http.post("/tokenize", json={"prompt": "a", "messages": msgs}), 400, param="prompt")
    assert_error(http.post("/tokenize", json={"messages": []}), 400, param="messages")
    assert_error(http.post("/tokenize", json={"messages": [*msgs, {"role": "assistant", "content": "x"}]}), 400,
                 param="messages", words="last message")
    assert_error(http.post("/tokenize", json={"prompt": [1, 2]}), 400, param="prompt")
    assert_error(http.post("/tokenize", json={"prompt": "a", "add_special": True}), 400, words="unknown field")
    assert_error(http.post("/tokenize", json={"model": "other", "prompt": "a"}), 404, code="model_not_found")
    no_chat = start_server(chat_format=None, max_batch=1, max_queue=1)
    assert_error(httpx.post(no_chat.url + "/tokenize", json={"messages": msgs}), 400, code="chat_not_supported")
    keyed = start_server(api_key="s3cret", max_batch=1, max_queue=1)
    assert_error(httpx.post(keyed.url + "/tokenize", json={"prompt": "a"}), 401, code="invalid_api_key")
    r = httpx.post(keyed.url + "/tokenize", json={"prompt": "a"}, headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 200 and r.json()["count"] >= 1
    assert_error(httpx.post(keyed.url + "/tokenize", content=b"x" * (4 * 2**20 + 1),
                            headers={"Authorization": "Bearer s3cret", "Content-Type": "application/json"}),
                 413, code="request_too_large")
