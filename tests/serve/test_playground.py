"""The playground in a real browser: Debian's chromium driven by Playwright (its own browser download never
runs): open the page, send a prompt, watch the streamed text grow, press Stop; a screenshot is saved."""

from __future__ import annotations

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
