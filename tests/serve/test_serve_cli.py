"""`gpt2 serve` as a real subprocess: it loads a checkpoint the way `gpt2 generate` does, binds loopback,
reads GPT2_API_KEY, serves the chat format of the checkpoint's chat.json; bad input is one error line, exit 2
(gpt2.cli.main in this process)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest
from serve_helpers import free_port


@pytest.mark.slow
def test_serve_a_checkpoint_from_the_command_line(ckpt) -> None:
    port = free_port()
    env = {**os.environ, "GPT2_API_KEY": "k1"}
    proc = subprocess.Popen([sys.executable, "-m", "gpt2", "serve", str(ckpt), "--port", str(port),
                             "--max-batch", "4", "--max-queue", "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "gpt2 serve did not come up"
            time.sleep(0.1)
        auth = {"Authorization": "Bearer k1"}
        assert httpx.get(url + "/v1/models").status_code == 401
        models = httpx.get(url + "/v1/models", headers=auth).json()
        assert models["data"][0]["id"] == ckpt.name and models["data"][0]["chat"] is True
        r = httpx.post(url + "/v1/chat/completions", headers=auth, timeout=30,
                       json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
        assert "text/html" in httpx.get(url + "/").headers["content-type"]
        assert httpx.get(url + "/static/playground.js").status_code == 200
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/v1" in out and "loopback only" in out and "API key required" in out


def test_serve_refuses_a_missing_model_with_one_line(gpt2_main) -> None:
    r = gpt2_main("serve", "/nonexistent/model-dir")
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and r.stderr.strip().count("\n") == 0
    assert "nonexistent" in r.stderr


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_serve_refuses_a_negative_prefix_cache_with_one_line(gpt2_main, ckpt, value) -> None:
    r = gpt2_main("serve", str(ckpt), "--prefix-cache-mb", value)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert r.stderr.startswith("error: --prefix-cache-mb must be >= 0")


def test_serve_prefix_cache_default_is_the_schedulers() -> None:
    from gpt2.cli import build_parser
    from gpt2.serve.scheduler import PREFIX_CACHE_MB

    args = build_parser().parse_args(["serve", "somewhere"])
    assert args.prefix_cache_mb == PREFIX_CACHE_MB > 0
