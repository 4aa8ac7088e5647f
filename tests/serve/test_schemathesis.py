"""The HTTP API fuzzed from its own OpenAPI schema (GET /openapi.json) with Schemathesis: every route, with
bodies that fit the schema and bodies that do not; no response is a 5xx, and every error is OpenAI's error
object {"error": {"message", "type", "param", "code"}}.

    python -m pytest -q tests/serve/test_schemathesis.py

Bounded: a fixed number of examples per route and Hypothesis' own derandomised seed, so it takes the same
few seconds every run and fails the same way when it fails.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

MAX_EXAMPLES = 30


def openai_error_shape(ctx, response, case) -> None:
    """An error response (4xx, 5xx) is OpenAI's error object, with a message."""
    if response.status_code < 400:
        return
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, f"not OpenAI's error object: {response.text[:300]}"
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, f"error fields: {sorted(err)}"
    assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str)
    assert err["param"] is None or isinstance(err["param"], str)


@pytest.fixture(scope="module")
def fuzzed_server(tok):
    """A server of its own (a batch of 4, a queue of 8) of a tiny model with a 32-token context, so that no
    fuzzed request generates more than 32 tokens a choice and the test keeps its time bound."""
    from serve_helpers import LiveServer, sharp_model

    from gpt2.generate.chat import FORMATS
    from gpt2.serve.app import create_app

    server = LiveServer(create_app(sharp_model(tok.n_vocab, n_positions=32), tok, name="tiny",
                                   chat_format=FORMATS["plain"], max_batch=4, max_queue=8))
    yield server
    server.stop()


@pytest.mark.slow
@pytest.mark.timeout(120)  # the bound: 6 routes × 30 examples, ~10 s on 2 loaded cores
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_every_route_from_the_schema(fuzzed_server, mode) -> None:
    """Each route the schema lists, MAX_EXAMPLES requests drawn from it (positive: bodies that fit the schema;
    negative: bodies that break it), through Schemathesis' own checks and OpenAI's error shape."""
    from hypothesis import given
    from hypothesis.errors import Unsatisfiable

    schema = schemathesis.openapi.from_url(fuzzed_server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 6
    skipped = []
    for operation in operations:
        strategy = operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode))

        @given(case=strategy)
        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case) -> None:
            response = case.call(base_url=fuzzed_server.url, timeout=60)
            case.validate_response(response, checks=[not_a_server_error, openai_error_shape])

        try:
            run()
        except Unsatisfiable:  # a schema with nothing to break: no body, a string path parameter (any string fits)
            skipped.append(operation.label)
    # the bodies are always fuzzed both ways; only the GET routes have no input that negative mode can break
    assert skipped == ([] if mode == "positive" else ["GET /health", "GET /v1/models", "GET /v1/models/{model_id}"])


def test_the_schema_names_every_route(fuzzed_server) -> None:
    import httpx

    paths = httpx.get(fuzzed_server.url + "/openapi.json").json()["paths"]
    assert {"/health", "/v1/models", "/v1/models/{model_id}", "/v1/completions", "/v1/chat/completions",
            "/tokenize"} <= set(paths)
