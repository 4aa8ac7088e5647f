"""GET /metrics: Prometheus' text format that prometheus_client's own parser reads, whose counters match the
requests a test sent (by route and status, prompt and generated tokens, finished sequences, time to first
token, prefix-cache queries and hits), with a registry per app."""

from __future__ import annotations

import json
import time
from collections import Counter

import httpx
from prometheus_client.parser import text_string_to_metric_families

from gpt2.serve.metrics import handler_label


def scrape(url: str) -> dict[str, list]:
    """Metric family name → its samples, read by prometheus_client's parser."""
    r = httpx.get(url + "/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {fam.name: fam.samples for fam in text_string_to_metric_families(r.text)}


def value(families: dict[str, list], name: str, **labels: str) -> float:
    """The one sample of `name` (a sample name, e.g. gpt2:prompt_tokens_total) with these labels."""
    family = name.removesuffix("_total").removesuffix("_count").removesuffix("_sum")
    found = [s.value for s in families[family] if s.name == name and labels.items() <= s.labels.items()]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def test_metrics_parse_and_count_what_was_sent(start_server) -> None:
    server = start_server(max_batch=4)
    sent: Counter = Counter()  # (handler, method, status)
    usages, ttft_requests, choices = [], 0, 0
    long = "The quick brown fox jumps over the lazy dog. Once upon a time there was a little model"
    bodies = [("/v1/completions", {"prompt": long, "max_tokens": 6, "temperature": 0}),
              ("/v1/completions", {"prompt": long, "max_tokens": 5, "n": 2, "temperature": 0.8, "seed": 1}),
              ("/v1/completions", {"prompt": [5, 6, 7], "max_tokens": 0, "echo": True, "logprobs": 1}),
              ("/v1/chat/completions", {"messages": [{"role": "user", "content": "héllo"}], "max_tokens": 4}),
              ("/v1/completions", {"prompt": 5}),  # 400: a number is not a prompt
              ("/v1/completions", {"model": "nope", "prompt": "x"})]  # 404
    with httpx.Client(base_url=server.url, timeout=20) as client:
        for path, body in bodies:
            r = client.post(path, json=body)
            sent[(path, "POST", str(r.status_code))] += 1
            if r.status_code == 200:
                usages.append(r.json()["usage"])
                choices += len(r.json()["choices"])
                ttft_requests += body.get("max_tokens", 1) > 0
        with client.stream("POST", "/v1/completions", json={"prompt": long, "max_tokens": 3, "stream": True,
                                                              "stream_options": {"include_usage": True}}) as r:
            lines = [line for line in r.iter_lines() if line.startswith("data: {")]
        sent[("/v1/completions", "POST", "200")] += 1
        usages.append(json.loads(lines[-1][6:])["usage"])
        choices, ttft_requests = choices + 1, ttft_requests + 1
        for path in ("/v1/models", "/v1/models/tiny", "/v1/models/nope", "/v1/nothing"):
            sent[(handler_label(path), "GET", str(client.get(path).status_code))] += 1
    assert sent[("/v1/models/{model}", "GET", "404")] == 1 and sent[("other", "GET", "404")] == 1

    deadline = time.monotonic() + 5  # the response counter ticks just after a response's last byte is sent
    while True:
        m = scrape(server.url)
        got = {(s.labels["handler"], s.labels["method"], s.labels["status"]): s.value
               for s in m["gpt2:http_requests"] if s.name == "gpt2:http_requests_total"}
        if got == sent or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert got == sent
    assert all(s.labels["model_name"] == "tiny" for s in m["gpt2:http_requests"])
    assert value(m, "gpt2:prompt_tokens_total") == sum(u["prompt_tokens"] for u in usages)
    assert value(m, "gpt2:generation_tokens_total") == sum(u["completion_tokens"] for u in usages) > 0
    assert value(m, "gpt2:request_success_total", finished_reason="length") + \
        value(m, "gpt2:request_success_total", finished_reason="stop") == choices
    assert value(m, "gpt2:time_to_first_token_seconds_count") == ttft_requests  # the scoring request has no token
    buckets = [s.value for s in m["gpt2:time_to_first_token_seconds"] if s.name.endswith("_bucket")]
    assert buckets == sorted(buckets) and buckets[-1] == ttft_requests
    hits = sum(u["prompt_tokens_details"]["cached_tokens"] for u in usages)
    assert value(m, "gpt2:prefix_cache_hits_total") == hits >= 32  # the repeated long prompt, twice
    # Every prompt is looked up but the one scored with logprobs (it needs every position's hidden state).
    queries = value(m, "gpt2:prefix_cache_queries_total")
    assert queries == sum(u["prompt_tokens"] for u in usages) - 3
    assert value(m, "gpt2:prefix_cache_hit_rate") == hits / queries
    assert 0 < value(m, "gpt2:prefix_cache_usage_bytes") <= value(m, "gpt2:prefix_cache_budget_bytes") == 256 * 2**20
    assert value(m, "gpt2:num_requests_running") == value(m, "gpt2:num_requests_waiting") == 0

    # Another app in the same process counts on its own (its own registry, not the global one); the API-key
    # guard's refusals are counted too (the counting middleware wraps it).
    guarded = start_server(max_batch=2, prefix_cache_mb=0, api_key="k")
    assert httpx.post(guarded.url + "/v1/completions", json={"prompt": "x"}).status_code == 401
    other = scrape(guarded.url)  # /metrics, like /health, needs no key
    assert [(s.labels["status"], s.value) for s in other["gpt2:http_requests"] if s.name.endswith("_total")] == \
        [("401", 1.0)]
    assert value(other, "gpt2:prompt_tokens_total") == 0 and value(other, "gpt2:prefix_cache_budget_bytes") == 0


def test_running_and_waiting_gauges_follow_the_scheduler(start_server) -> None:
    server = start_server(max_batch=1, max_queue=4, step_delay=0.05)
    with httpx.Client(base_url=server.url, timeout=20) as client:
        streams = [client.stream("POST", "/v1/completions", json={"prompt": "Once", "max_tokens": 40,
                                                                   "ignore_eos": True, "stream": True})
                   for _ in range(3)]
        responses = [s.__enter__() for s in streams]
        deadline = time.monotonic() + 10
        while True:
            m = scrape(server.url)
            running, waiting = value(m, "gpt2:num_requests_running"), value(m, "gpt2:num_requests_waiting")
            if (running, waiting) == (1, 2) or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert (running, waiting) == (1, 2)
        for s, r in zip(streams, responses):
            r.read()
            s.__exit__(None, None, None)
    m = scrape(server.url)
    assert value(m, "gpt2:num_requests_running") == value(m, "gpt2:num_requests_waiting") == 0
