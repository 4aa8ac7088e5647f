"""The playground in a real browser: Debian's chromium driven by Playwright (its own browser download never
runs): open the page, send a prompt, watch the streamed text grow, press Stop; a screenshot is saved. A chat of
ten turns on a 256-token context keeps going: the page drops the oldest turns that no longer fit, keeps the
system message, caps max_tokens to the room left, and says so (a second screenshot)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium; .ci/run installs it)")
    os.environ["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


def _length(page) -> int:
    return len(page.text_content("#output-text") or "")


def _seed_that_runs_long(url: str, prompt: str, max_tokens: int) -> int:
    """A seed with which the page's default sampling (temperature 0.8, top_p 0.95) runs all max_tokens without
    sampling end-of-text: the tiny random model can end early, and a stream that stops growing is no test."""
    for seed in range(32):
        r = httpx.post(url + "/v1/completions", json={"prompt": prompt, "max_tokens": max_tokens, "seed": seed,
                                                     "temperature": 0.8, "top_p": 0.95}, timeout=60)
        if r.json()["choices"][0]["finish_reason"] == "length":
            return seed
    raise AssertionError("no seed in 0..31 runs the tiny model to max_tokens")


@pytest.mark.slow
def test_playground_streams_and_stops(browser, start_server, tmp_path) -> None:
    s = start_server(max_batch=2, max_queue=2, step_delay=0.03)
    page = browser.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(s.url + "/")
    page.wait_for_function("document.querySelector('#model').textContent.includes('tiny')")
    page.fill("#max_tokens", "100")  # a range input: fill sets its value
    page.fill("#prompt", "Once upon a time")
    page.fill("#seed", str(_seed_that_runs_long(s.url, "Once upon a time", 100)))
    page.click("#send")
    page.wait_for_function("document.querySelector('#output-text').textContent.length > 3", timeout=20_000)
    first = _length(page)
    page.wait_for_function(f"document.querySelector('#output-text').textContent.length > {first}", timeout=10_000)
    assert _length(page) > first, "the streamed text should grow"
    assert page.is_enabled("#stop") and not page.is_enabled("#send")
    page.click("#stop")
    page.wait_for_function("document.querySelector('#status').textContent === 'stopped'", timeout=5_000)
    stopped_at = _length(page)
    deadline = time.monotonic() + 5  # the server frees the slot when the browser drops the connection
    while httpx.get(s.url + "/health").json()["running"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert httpx.get(s.url + "/health").json()["cancelled"] >= 1
    time.sleep(0.2)
    assert _length(page) == stopped_at, "no text after Stop"
    assert page.is_enabled("#send")
    assert int(page.text_content("#completion-tokens")) >= 2
    assert float(page.text_content("#tps")) > 0
    shot = tmp_path / "playground.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 5_000
    if os.environ.get("GPT2_TEST_ARTIFACTS"):  # keep the screenshot where CI or a developer looks for it
        Path(os.environ["GPT2_TEST_ARTIFACTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(os.environ["GPT2_TEST_ARTIFACTS"]) / "playground.png")
    # everything the page loaded came from the server itself (no CDN)
    assert requests and all(u.startswith(s.url) for u in requests), requests
    page.close()


@pytest.mark.slow
def test_playground_chat_keeps_the_conversation(browser, start_server) -> None:
    s = start_server(max_batch=2, max_queue=2)
    page = browser.new_page()
    page.goto(s.url + "/")
    page.wait_for_function("!document.querySelector('#mode-chat').disabled")
    page.check("#mode-chat")
    page.fill("#max_tokens", "8")
    for message in ("Hello", "Tell me more"):
        page.fill("#prompt", message)
        page.click("#send")
        page.wait_for_function("document.querySelector('#status').textContent.startsWith('done')", timeout=10_000)
        page.wait_for_function("!document.querySelector('#send').disabled")
    roles = page.eval_on_selector_all("#conversation .msg .role", "els => els.map(e => e.textContent)")
    assert roles == ["user", "assistant", "user", "assistant"]
    assert int(page.text_content("#prompt-tokens")) > 5  # the second turn's prompt holds the first turn
    page.close()


# ------------------------------------------------------------------------------ a chat on a small context
N_CTX = 256  # runs/sft-alpaca's context
SYSTEM = "You answer in one short line."
REPLY = 24  # the page's max_tokens: a few turns fit beside it, then the oldest must go


@pytest.fixture(scope="module")
def small_context(tok):
    """A stand-in for a 256-token instruct model: the tiny model with n_positions=256 and a chat format."""
    from serve_helpers import LiveServer, sharp_model

    from gpt2.generate.chat import FORMATS
    from gpt2.serve.app import create_app

    server = LiveServer(create_app(sharp_model(tok.n_vocab, n_positions=N_CTX), tok, name="tiny-instruct",
                                   chat_format=FORMATS["plain"], max_batch=2, max_queue=2))
    yield server
    server.stop()


def _count(url: str, messages: list[dict]) -> int:
    return httpx.post(url + "/tokenize", json={"messages": messages}, timeout=10).json()["count"]


def _long_message(url: str, *, chat: bool = True) -> str:
    """A chat message (with the system message) or a completion prompt that leaves fewer than REPLY tokens of
    the context, but some."""
    for k in range(1, 200):
        text = "Tell me about the lazy dog and the fox. " * k
        payload = ({"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]} if chat
                   else {"prompt": text})
        if httpx.post(url + "/tokenize", json=payload, timeout=10).json()["count"] > N_CTX - REPLY:
            return text
    raise AssertionError("no message long enough")


def _check_fitted(url: str, body: dict, history: list[dict]) -> int:
    """One chat request the page sent: the system message, then the newest part of the conversation so far, and
    room for its max_tokens; only what had to go was dropped (the CLI's rule). The turns it dropped."""
    system, *kept = body["messages"]
    assert system == {"role": "system", "content": SYSTEM}
    assert kept == history[len(history) - len(kept):], "the page sent the newest turns, whole"
    count = _count(url, body["messages"])
    assert count + body["max_tokens"] <= N_CTX
    if body["max_tokens"] < REPLY:  # capped: only when the newest message alone leaves less room
        assert len(kept) == 1 and body["max_tokens"] == N_CTX - count
    dropped = len(history) - len(kept)
    if dropped:  # one more turn would not have fit beside the reply
        assert _count(url, [system, *history[dropped - 2:]]) + REPLY > N_CTX
    return dropped // 2


def _turns(page) -> list[dict]:
    return page.eval_on_selector_all("#conversation .msg", """els => els.map(e => ({
        role: e.querySelector('.role').textContent, content: e.querySelector('.text').textContent,
        dropped: e.classList.contains('dropped')}))""")


@pytest.mark.slow
def test_playground_chat_fits_a_small_context(browser, small_context, tmp_path) -> None:
    url = small_context.url
    page = browser.new_page()
    sent: list[dict] = []  # the generation requests' bodies
    page.on("request", lambda r: sent.append(json.loads(r.post_data or "{}"))
            if r.url.endswith(("/v1/chat/completions", "/v1/completions")) else None)
    page.goto(url + "/")
    page.wait_for_function("!document.querySelector('#mode-chat').disabled")
    assert page.input_value("#max_tokens") == str(min(128, N_CTX // 2))  # the default: half a short context
    page.check("#mode-chat")
    page.fill("#system", SYSTEM)
    page.fill("#max_tokens", str(REPLY))
    page.fill("#temperature", "0")  # greedy: the same replies every run
    messages = [f"Question {i}: what did the quick brown fox do next?" for i in range(10)]
    messages[7] = _long_message(url)
    notes = []
    for message in messages:
        page.fill("#prompt", message)
        page.click("#send")
        page.wait_for_function("!document.querySelector('#send').disabled", timeout=15_000)
        assert page.text_content("#status").startswith("done"), page.text_content("#status")
        notes.append(page.text_content("#fit"))
    turns = _turns(page)
    assert [t["role"] for t in turns] == ["user", "assistant"] * 10
    assert all(t["content"] for t in turns), "every turn answered"
    history = [{"role": t["role"], "content": t["content"]} for t in turns]
    assert len(sent) == 10
    dropped = [_check_fitted(url, body, history[:2 * i + 1]) for i, body in enumerate(sent)]
    assert 0 < dropped[-1] < 9 and dropped == sorted(dropped), dropped  # older turns went, oldest first
    assert sent[7]["max_tokens"] < REPLY and f"max_tokens {sent[7]['max_tokens']} instead of {REPLY}" in notes[7]
    assert [t["dropped"] for t in turns] == [i < 2 * dropped[-1] for i in range(20)]
    note = page.text_content("#dropped-note")
    assert f"{dropped[-1]} older turns dropped" in note and "system message stays" in note
    assert f"{dropped[-1]} older turns dropped" in notes[-1]
    used = page.text_content("#context-used")
    assert used.endswith(f"/ {N_CTX} tokens ({round(100 * int(used.split()[0]) / N_CTX)}%)")
    assert int(used.split()[0]) == int(page.text_content("#prompt-tokens")) + int(page.text_content("#completion-tokens"))
    shot = tmp_path / "playground-chat.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 5_000
    if os.environ.get("GPT2_TEST_ARTIFACTS"):
        Path(os.environ["GPT2_TEST_ARTIFACTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(os.environ["GPT2_TEST_ARTIFACTS"]) / "playground-chat.png")
    # a message the context cannot hold even alone: refused in the page, nothing sent, the text kept to edit
    page.fill("#prompt", "the lazy dog " * 200)
    page.click("#send")
    page.wait_for_function("!document.querySelector('#send').disabled", timeout=15_000)
    assert f"the model's context holds {N_CTX}" in page.text_content("#status") and len(sent) == 10
    assert page.input_value("#prompt").startswith("the lazy dog") and len(_turns(page)) == 20
    # completion mode caps max_tokens to the room a long prompt leaves, counted by the server too
    page.check("#mode-completion")
    prompt = _long_message(url, chat=False)
    page.fill("#prompt", prompt)
    page.click("#send")
    page.wait_for_function("!document.querySelector('#send').disabled", timeout=15_000)
    assert page.text_content("#status").startswith("done"), page.text_content("#status")
    count = httpx.post(url + "/tokenize", json={"prompt": prompt}, timeout=10).json()["count"]
    assert count > N_CTX - REPLY and sent[-1]["prompt"] == prompt and sent[-1]["max_tokens"] == N_CTX - count
    page.close()
    # the API itself stays strict: the whole conversation, unfitted, with the same max_tokens is refused
    whole = [{"role": "system", "content": SYSTEM}, *history[:-1]]
    r = httpx.post(url + "/v1/chat/completions", json={"messages": whole, "max_tokens": REPLY}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
