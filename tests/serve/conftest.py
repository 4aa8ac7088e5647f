"""Fixtures for the serving tests: a tiny sharpened model and tokenizer (as tests/generate uses), saved as a
checkpoint, and live uvicorn servers on free loopback ports, each in a background thread."""

from __future__ import annotations

from pathlib import Path

import pytest
from serve_helpers import CORPUS, LiveServer, sharp_model

from gpt2 import GPT2LMHeadModel


@pytest.fixture(scope="session")
def tok():
    from gpt2.tokenizer import train_bpe

    return train_bpe(CORPUS, vocab_size=320, special_tokens=["<|endoftext|>"], progress=False)


@pytest.fixture(scope="session")
def model(tok) -> GPT2LMHeadModel:
    return sharp_model(tok.n_vocab)


@pytest.fixture(scope="session")
def ckpt(tok, model, tmp_path_factory) -> Path:
    """A checkpoint directory with a chat.json (the `plain` format), as fine-tuning writes it."""
    from gpt2.generate.chat import save_chat_format

    d = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(d)
    tok.save(d)
    save_chat_format(d, "plain")
    return d


@pytest.fixture(scope="session")
def start_server(model, tok):
    """start_server(**create_app options) → a LiveServer of the tiny model; all are stopped at the end."""
    from gpt2.generate.chat import FORMATS
    from gpt2.serve.app import create_app

    servers: list[LiveServer] = []

    def start(**options) -> LiveServer:
        options.setdefault("name", "tiny")
        options.setdefault("chat_format", FORMATS["plain"])
        server = LiveServer(create_app(model, tok, **options))
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def server(start_server) -> LiveServer:
    """The shared server: batch of 8, queue of 32, the `plain` chat format."""
    return start_server(max_batch=8, max_queue=32)


@pytest.fixture(scope="session")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=20)
