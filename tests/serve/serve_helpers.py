"""Helpers for the serving tests: the tiny sharpened model recipe and a live uvicorn server on loopback."""

from __future__ import annotations

import socket
import threading
import time

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
