"""Fixtures for the serving tests: a tiny sharpened model and tokenizer (as tests/generate uses), saved as a
checkpoint, and live uvicorn servers on free loopback ports, each in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from gpt2 import GPT2Config, GPT2LMHeadModel

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 8,
    "Once upon a time there was a little model that wanted to write stories. " * 6,
    "héllo wörld, naïve café, 日本語のテキスト, emoji 🙂 and more text. " * 4,
]


def sharp_model(vocab_size: int, *, seed: int = 0, **overrides) -> GPT2LMHeadModel:
    """Random tiny weights scaled ×4, so distributions are peaked and greedy text is not one repeated token
    (the same recipe as tests/generate/conftest.py)."""
    torch.manual_seed(seed)
    eot = vocab_size - 1
    config = GPT2Config.from_preset("tiny", vocab_size=vocab_size, bos_token_id=eot, eos_token_id=eot, **overrides)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    return model


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving an app on 127.0.0.1 in a daemon thread; .url is its base URL."""

    def __init__(self, app) -> None:
        import uvicorn

        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)

    @property
    def scheduler(self):
        return self.app.state.served.scheduler

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


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
