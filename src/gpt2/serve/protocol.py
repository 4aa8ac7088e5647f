"""OpenAI's request and error shapes for `gpt2 serve`: pydantic models of the bodies, and the error type.

    python -c "from gpt2.serve.protocol import CompletionRequest; print(CompletionRequest(prompt='Hi', max_tokens=5))"

Requests are strict where a typo would otherwise pass unnoticed: an unknown field is a 400 that names it,
and a number sent as a string ("16") is refused instead of coerced (a whole float, 16.0, is the integer 16,
as JSON Schema counts it). Besides OpenAI's fields, the extras vLLM users send are accepted: top_k, min_p,
repetition_penalty, ignore_eos.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

MAX_N = 16
"""Most choices per request (`n`)."""
MAX_LOGPROBS = 5
"""Most alternatives per token for completions' `logprobs` (OpenAI's limit)."""
MAX_TOP_LOGPROBS = 20
"""Most alternatives per token for chat's `top_logprobs` (OpenAI's limit)."""
MAX_STOP = 4



def _whole(value: Any) -> Any:
    """A whole number written as a float (16.0) is that integer, as JSON Schema's "integer" says; 16.5, "16"
    and true are still refused (strict mode)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Int = Annotated[int, BeforeValidator(_whole)]
"""An integer field: strict, except that 16.0 is 16 (Schemathesis found 400s for schema-valid 1.0)."""

TokenIds = list[Annotated[Int, Field(ge=0)]]


class ApiError(Exception):
    """A request the server refuses: the HTTP status and OpenAI's error object."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    """Fields completions and chat completions share."""

    model: str | None = None
    """The served model's name (GET /v1/models); may be left out."""
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: Int = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = Field(None, validate_default=True)
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: Int | None = Field(None, ge=0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    user: str | None = None
    # vLLM's extras
    top_k: Int = Field(0, ge=-1)
    """Sample among the k most likely tokens; 0 or -1: off."""
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    ignore_eos: bool = False

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str]:
        stops = [] if v is None else [v] if isinstance(v, str) else v
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return stops

    @field_validator("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty")
    @classmethod
    def _finite(cls, v: float) -> float:
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError("must be a finite number")
        return v


class CompletionRequest(_Sampling):
    """POST /v1/completions."""

    prompt: str | list[str] | TokenIds | list[TokenIds]
    max_tokens: Int | None = Field(16, ge=0)
    """Tokens to generate per choice; 0 only scores the prompt (with echo and logprobs)."""
    logprobs: Int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    best_of: Int | None = Field(None, ge=1)
    suffix: str | None = None


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ResponseFormat(_Strict):
    type: Literal["text"]


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Int | None = Field(None, ge=1)
    max_completion_tokens: Int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: Int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None


class TokenizeRequest(_Strict):
    """POST /tokenize (vLLM's route, its two shapes in one body): a completion's `prompt`, or a chat's
    `messages` rendered in the model's prompt format up to the response header (a chat completion's prompt)."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    """OpenAI's usage object; prompt_tokens_details.cached_tokens counts the prompt tokens the prefix cache
    supplied (they are still part of prompt_tokens, as OpenAI counts them)."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """FastAPI's validation errors → (one-line message, param) for OpenAI's 400 shape."""
    if not errors:
        return "invalid request body", None
    e = errors[0]
    loc = [str(p) for p in e.get("loc", ()) if p != "body"]
    kind = e.get("type", "")
    if kind == "json_invalid":
        return f"the request body is not valid JSON ({e.get('ctx', {}).get('error', 'parse error')})", None
    # A union (prompt, stop, content) reports one error per alternative; name the field and its shapes.
    if loc and loc[0] == "prompt" and kind != "missing":
        return ("prompt must be a string, a list of strings, a list of token ids (non-negative integers) "
                "or a list of such lists"), "prompt"
    param = ".".join(loc) if loc else None
    if kind == "extra_forbidden":
        return f"unknown field {param!r} (this server takes OpenAI's fields and top_k, min_p, " \
               "repetition_penalty, ignore_eos)", param
    if kind == "missing":
        return f"{param} is required", param
    if not loc:
        return _not_an_object(e.get("input")), None
    if kind == "value_error":  # our own validators name the value already
        return f"{param}: {str(e.get('msg', '')).removeprefix('Value error, ')}", param
    return f"{param}: {e.get('msg', 'invalid value')}, got {_short(e.get('input'))}", param


def _not_an_object(body: Any) -> str:
    """Why a body is not a request object: not JSON at all, JSON sent without its content type, or not an object."""
    if isinstance(body, (bytes, str)):  # FastAPI parses JSON only when the content type says so
        try:
            json.loads(body)
        except ValueError as e:
            return f"the request body is not valid JSON ({e})"
        return "send the body as JSON with the header Content-Type: application/json"
    return f"the request body must be a JSON object, got {type(body).__name__}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
