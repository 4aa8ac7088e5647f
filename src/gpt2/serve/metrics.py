"""`GET /metrics` of `gpt2 serve`: Prometheus' text format through the official client library (prometheus_client).

    python -m gpt2 serve path/to/checkpoint &  curl -s http://127.0.0.1:8000/metrics

Names follow vLLM's metrics (vllm/v1/metrics/loggers.py) where vLLM has one, under our own `gpt2:` prefix
(Prometheus allows ':' in metric names, and prometheus_client validates names against
`[a-zA-Z_:][a-zA-Z0-9_:]*`), so a vLLM dashboard needs only the prefix changed. Every series carries vLLM's
`model_name` label.

| metric | type | what |
| --- | --- | --- |
| gpt2:num_requests_running | gauge | sequences decoding (rows; a request with n choices has n) |
| gpt2:num_requests_waiting | gauge | sequences waiting for a row |
| gpt2:prompt_tokens_total | counter | prompt tokens admitted (cached ones included, as vLLM counts) |
| gpt2:generation_tokens_total | counter | tokens generated |
| gpt2:request_success_total{finished_reason} | counter | sequences finished: stop, length, or abort (client gone) |
| gpt2:time_to_first_token_seconds | histogram | request accepted → its first token, vLLM's buckets |
| gpt2:prefix_cache_queries_total | counter | prompt tokens looked up in the prefix cache |
| gpt2:prefix_cache_hits_total | counter | of those, tokens found (reused instead of prefilled) |
| gpt2:prefix_cache_hit_rate | gauge | hits / queries since start (vLLM v0's gpu_prefix_cache_hit_rate) |
| gpt2:prefix_cache_usage_bytes | gauge | bytes of keys/values the prefix cache holds |
| gpt2:prefix_cache_budget_bytes | gauge | its budget (`--prefix-cache-mb`) |
| gpt2:http_requests_total{handler, method, status} | counter | /v1 responses by route and HTTP status |

Scheduler numbers are read from the scheduler when Prometheus scrapes (a custom collector), so nothing is
counted twice. Each app has its own CollectorRegistry (never the process-wide default one), so several
servers in one process, as the tests run them, keep separate counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
"""vLLM's time-to-first-token buckets, in seconds."""

ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/models")


class _SchedulerCollector(Collector):
    """Gauges and counters read from Scheduler.load() at scrape time."""

    def __init__(self, load: Callable[[], dict[str, int]], model_name: str) -> None:
        self.load, self.labels = load, [model_name]

    def collect(self) -> Iterator[Metric]:
        s = self.load()

        def family(kind: type, name: str, doc: str, value: float) -> Metric:
            m = kind(f"gpt2:{name}", doc, labels=["model_name"])
            m.add_metric(self.labels, value)
            return m

        yield family(GaugeMetricFamily, "num_requests_running", "Sequences decoding in the batch.", s["running"])
        yield family(GaugeMetricFamily, "num_requests_waiting", "Sequences waiting for a row.", s["waiting"])
        yield family(CounterMetricFamily, "prompt_tokens", "Prompt tokens admitted.", s["prompt_tokens"])
        yield family(CounterMetricFamily, "generation_tokens", "Tokens generated.", s["tokens"])
        done = CounterMetricFamily("gpt2:request_success", "Sequences finished, by reason.",
                                   labels=["model_name", "finished_reason"])
        for reason, n in (("stop", s["finished_stop"]), ("length", s["finished_length"]), ("abort", s["cancelled"])):
            done.add_metric([*self.labels, reason], n)
        yield done
        queries, hits = s["prefix_cache_queries"], s["prefix_cache_hits"]
        yield family(CounterMetricFamily, "prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                     queries)
        yield family(CounterMetricFamily, "prefix_cache_hits", "Prompt tokens found in the prefix cache.", hits)
        yield family(GaugeMetricFamily, "prefix_cache_hit_rate", "Prefix cache hits / queries since start.",
                     hits / queries if queries else 0.0)
        yield family(GaugeMetricFamily, "prefix_cache_usage_bytes", "Bytes the prefix cache holds.",
                     s["prefix_cache_bytes"])
        yield family(GaugeMetricFamily, "prefix_cache_budget_bytes", "The prefix cache's budget in bytes.",
                     s["prefix_cache_budget"])


class ServerMetrics:
    """One app's registry: the scheduler's numbers, the time-to-first-token histogram and /v1 responses."""

    def __init__(self, load: Callable[[], dict[str, int]], *, model_name: str) -> None:
        self.registry = CollectorRegistry()
        self.model_name = model_name
        self.registry.register(_SchedulerCollector(load, model_name))
        self.ttft = Histogram("gpt2:time_to_first_token_seconds", "Request accepted to its first token, seconds.",
                              ["model_name"], buckets=TTFT_BUCKETS, registry=self.registry).labels(model_name)
        self.responses = Counter("gpt2:http_requests", "/v1 responses by route and HTTP status.",
                                 ["model_name", "handler", "method", "status"], registry=self.registry)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def middleware(self, app: Any) -> Any:
        """ASGI middleware that counts every /v1 response by route and status (401, 413 and 500 included: add it
        last, so that it wraps the other middleware)."""
        return _CountResponses(app, self)


def handler_label(path: str) -> str:
    """A route's name for the `handler` label; any other path is 'other' (a label per unknown path would let a
    client grow the registry without bound)."""
    if path in ROUTES:
        return path
    return "/v1/models/{model}" if path.startswith("/v1/models/") else "other"


class _CountResponses:
    def __init__(self, app: Any, metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1"):
            return await self.app(scope, receive, send)
        status = 500  # what the client gets if the app raises before it starts a response

        async def sending(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.responses.labels(self.metrics.model_name, handler_label(scope["path"]), scope["method"],
                                          str(status)).inc()


class FirstToken:
    """Times one request from acceptance to its first token into the histogram (once)."""

    def __init__(self, metrics: ServerMetrics | None) -> None:
        self.metrics, self.t0, self.seen = metrics, time.monotonic(), False

    def token(self) -> None:
        if not self.seen and self.metrics is not None:
            self.metrics.ttft.observe(time.monotonic() - self.t0)
        self.seen = True
