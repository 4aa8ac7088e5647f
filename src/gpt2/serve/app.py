"""`gpt2 serve`: an OpenAI-compatible HTTP API (FastAPI) over the continuous-batching scheduler, and the
browser playground at /.

    python -m gpt2 serve path/to/checkpoint --port 8000          # then open http://127.0.0.1:8000/

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    print(client.completions.create(model="checkpoint", prompt="ROMEO:", max_tokens=20).choices[0].text)

Routes: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (models with a prompt format),
POST /tokenize (vLLM's: a prompt or a chat's messages as the model's token ids, so a client such as the
playground counts tokens exactly as the server does), GET /health, GET /metrics (Prometheus,
gpt2.serve.metrics), GET / (the playground; its files under /static). Every refusal is OpenAI's error object
`{"error": {"message", "type", "param", "code"}}` with the right status: 400 for a bad request
(FastAPI's 422 validation errors included), 401 for a missing or wrong API key, 404 for an unknown
model, 413 for a body over the limit, 429 with Retry-After when the queue is full. An unexpected
exception is a 500 whose traceback goes to the server log, never a 4xx.

A request becomes one scheduler Job; the scheduler thread hands each step's pieces to the event loop
through an asyncio queue. A watcher task listens for the client's disconnect and cancels the job, so a
client that goes away (streaming or not) frees its rows before the next decode step.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import hmac
import json
import logging
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from gpt2.errors import UserError
from gpt2.generate.budget import fit_new_tokens
from gpt2.serve.adapters import NamedAdapter
from gpt2.serve.metrics import FirstToken, ServerMetrics
from gpt2.serve.protocol import (
    ApiError,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    TokenizeRequest,
    usage,
    validation_message,
)
from gpt2.serve.scheduler import PREFIX_CACHE_MB, Job, Piece, QueueFull, Scheduler, SeqParams, TokenLogprob
from gpt2.tokenizer.controls import check_controls

log = logging.getLogger("gpt2.serve")
STATIC = Path(__file__).parent / "static"
MAX_BODY_BYTES = 4 * 2**20
_GONE = object()  # put in a job's queue when its client disconnects


@dataclass
class Served:
    """What the routes need: the model's name, tokenizer, context size, prompt format and scheduler, and the
    LoRA adapters served beside it (adapters[i] is the scheduler's adapter slot i + 1)."""

    name: str
    tokenizer: Any
    n_positions: int
    vocab: int
    scheduler: Scheduler
    chat_format: Any = None
    metrics: ServerMetrics | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    adapters: list[NamedAdapter] = field(default_factory=list)


@dataclass
class _Target:
    """What a request's `model` picks: the base (slot 0) or an adapter, with its prompt format."""

    name: str
    slot: int
    chat_format: Any


# ------------------------------------------------------------------------------------- the app
def create_app(model: Any, tokenizer: Any, *, name: str = "gpt2", chat_format: Any = None,
               api_key: str | None = None, max_batch: int = 32, max_queue: int = 128,
               max_body_bytes: int = MAX_BODY_BYTES, pack: bool = True, step_delay: float = 0.0,
               prefix_cache_mb: float = PREFIX_CACHE_MB, adapters: Sequence[NamedAdapter] = ()) -> FastAPI:
    """The FastAPI app serving one model, and LoRA adapters of it under their own names (gpt2.serve.adapters);
    its scheduler thread starts now and stops with the app."""
    names = [name, *(a.name for a in adapters)]
    shared = sorted(n for n in set(names) if names.count(n) > 1)
    if shared:
        raise UserError(f"two served models share a name: {', '.join(shared)}")
    sched = Scheduler(model, tokenizer, max_batch=max_batch, max_queue=max_queue, pack=pack, step_delay=step_delay,
                      prefix_cache_mb=prefix_cache_mb, adapters=[a.lora for a in adapters])
    metrics = ServerMetrics(sched.load, model_name=name)
    served = Served(name, tokenizer, model.config.n_positions, sched.V, sched, chat_format, metrics,
                    adapters=list(adapters))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        sched.close()

    # The OpenAPI schema is published (GET /openapi.json): clients and API testers (Schemathesis) read it.
    app = FastAPI(title="gpt2 serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.state.served = served
    _add_error_handlers(app)
    app.add_middleware(_Guard, api_key=api_key, max_body_bytes=max_body_bytes)
    app.add_middleware(metrics.middleware)  # added last: the outermost, so it sees the guard's 401/413 too
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": served.name, "max_batch": sched.max_batch, "max_queue": sched.max_queue,
                **sched.load()}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(served, t) for t in _targets(served)]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        return _model_card(served, _target(served, model_id))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await _completions(served, body, request)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await _chat(served, body, request)

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        return _tokenize(served, body)

    return app


def _model_card(served: Served, target: _Target) -> dict[str, Any]:
    card = {"id": target.name, "object": "model", "created": served.created, "owned_by": "gpt2-scratch",
            "max_model_len": served.n_positions, "chat": target.chat_format is not None}
    if target.slot:  # vLLM's card for a LoRA module: its path as root, the base as parent
        card.update(root=str(served.adapters[target.slot - 1].directory), parent=served.name)
    return card


def _targets(served: Served) -> list[_Target]:
    """The base, then every adapter in the order --adapter gave them."""
    return [_Target(served.name, 0, served.chat_format)] + [
        _Target(a.name, i, a.chat_format if a.chat_format is not None else served.chat_format)
        for i, a in enumerate(served.adapters, start=1)]


def _target(served: Served, name: str | None) -> _Target:
    """The base or adapter a request's `model` names (none named: the base); an unknown name is a 404."""
    targets = _targets(served)
    if name is None:
        return targets[0]
    for t in targets:
        if t.name == name:
            return t
    names = ", ".join(repr(t.name) for t in targets)
    raise ApiError(404, f"the model {name!r} does not exist: this server serves {names} (GET /v1/models)",
                   param="model", code="model_not_found")


# ------------------------------------------------------------------------------------ errors, guard
def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        message, param = validation_message(list(e.errors()))
        return JSONResponse(ApiError(400, message, param=param).body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        message = e.detail if e.status_code != 404 else f"no route {request.method} {request.url.path} (see /v1/models)"
        return JSONResponse(ApiError(e.status_code, str(message)).body(), status_code=e.status_code,
                            headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def crashed(request: Request, e: Exception) -> JSONResponse:
        # A bug, not the client's fault: log the traceback and say so (Starlette re-raises it to the server log).
        log.error("%s %s failed:\n%s", request.method, request.url.path,
                  "".join(traceback.format_exception(type(e), e, e.__traceback__)))
        body = ApiError(500, f"internal server error ({type(e).__name__}); the traceback is in the server log",
                        type="server_error").body()
        return JSONResponse(body, status_code=500)


class _Guard:
    """ASGI middleware for /v1 and /tokenize: the API key (before anything is parsed) and the body-size limit."""

    def __init__(self, app: Any, *, api_key: str | None, max_body_bytes: int) -> None:
        self.app, self.api_key, self.limit = app, api_key, max_body_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(("/v1", "/tokenize")):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        refused = self._refuse(headers)
        if refused is None:
            length = headers.get(b"content-length", b"")
            if length.isdigit() and int(length) > self.limit:
                await _drain(receive)  # read the body away so the client sees the response, not a reset
                refused = self._too_large()
        if refused is not None:
            return await JSONResponse(refused.body(), status_code=refused.status)(scope, receive, send)
        return await self.app(scope, self._counting(receive), send)

    def _refuse(self, headers: dict[bytes, bytes]) -> ApiError | None:
        if not self.api_key:
            return None
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if not auth.startswith("Bearer "):
            return ApiError(401, "missing API key: send the header 'Authorization: Bearer KEY' (the server's "
                            "--api-key or GPT2_API_KEY)", code="invalid_api_key")
        if not hmac.compare_digest(auth[7:].strip().encode(), self.api_key.encode()):
            return ApiError(401, "incorrect API key in the Authorization header", code="invalid_api_key")
        return None

    def _too_large(self) -> ApiError:
        return ApiError(413, f"the request body is over the server's limit of {self.limit} bytes",
                        code="request_too_large")

    def _counting(self, receive: Callable) -> Callable:
        """receive() that stops a chunked body (no Content-Length) at the limit."""
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, self._too_large().message)
            return message

        return counted


async def _drain(receive: Callable) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            return


# --------------------------------------------------------------------------------- running a job
class _Run:
    """A submitted job seen from the event loop: its output queue and the disconnect watcher."""

    def __init__(self, served: Served, request: Request, prompts: list[list[int]], params: SeqParams, n: int,
                 target: _Target):
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.sched = served.scheduler

        def emit(items: Any) -> None:  # called from the scheduler thread
            with contextlib.suppress(RuntimeError):  # the loop is gone: the server is shutting down
                loop.call_soon_threadsafe(self.queue.put_nowait, items)

        self.job = Job(prompts, params, n=n, emit=emit, adapter=target.slot)
        self.remaining = self.job.n_sequences
        self.first_token = FirstToken(served.metrics)
        try:
            self.sched.submit(self.job)
        except QueueFull as e:
            raise ApiError(429, f"the server is busy: {e}; retry shortly", type="rate_limit_error",
                           code="rate_limit_exceeded", headers={"Retry-After": "1"}) from None
        except ValueError as e:
            raise ApiError(400, str(e), param="n") from None
        self.watcher = asyncio.create_task(self._watch(request))

    @property
    def cached_tokens(self) -> int:
        """Prompt tokens taken from the prefix cache (each prompt once, as usage counts prompt_tokens)."""
        return sum(self.job.cached_tokens)

    async def _watch(self, request: Request) -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                self.sched.cancel(self.job)
                self.queue.put_nowait(_GONE)
                return

    async def pieces(self) -> AsyncIterator[Piece]:
        """Every piece until each sequence has finished; stops early (quietly) if the client went away."""
        try:
            while self.remaining:
                items = await self.queue.get()
                if items is _GONE:
                    return
                if isinstance(items, BaseException):
                    raise RuntimeError("the model failed while generating (see the server log)") from items
                for piece in items:
                    if piece.token is not None:
                        self.first_token.token()
                    if piece.finish_reason is not None:
                        self.remaining -= 1
                    yield piece
        finally:
            self.watcher.cancel()
            if self.remaining:
                self.sched.cancel(self.job)


@dataclass
class _Choice:
    """One choice's output, collected piece by piece."""

    text: list[str] = field(default_factory=list)
    tokens: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    completion_tokens: int = 0

    def add(self, piece: Piece) -> None:
        self.text.append(piece.text)
        if piece.token is not None:
            self.tokens.append(piece.token)
        if piece.prompt_logprobs is not None:
            self.prompt_logprobs = piece.prompt_logprobs
        if piece.finish_reason is not None:
            self.finish_reason, self.completion_tokens = piece.finish_reason, piece.completion_tokens


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


# ----------------------------------------------------------------------------------- parameters
def _params(served: Served, body: CompletionRequest | ChatCompletionRequest, *, max_tokens: int,
            stop: list[str], logprobs: int | None, prompt_logprobs: bool = False) -> SeqParams:
    bias = None
    if body.logit_bias:
        bias = {}
        for key, value in body.logit_bias.items():
            if not key.isdigit() or int(key) >= served.vocab:
                raise ApiError(400, f"logit_bias key {key!r} is not a token id of this model (0..{served.vocab - 1})",
                               param="logit_bias")
            bias[int(key)] = value
    return SeqParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                     top_k=max(body.top_k, 0), min_p=body.min_p, repetition_penalty=body.repetition_penalty,
                     presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
                     logit_bias=bias, stop=stop, ignore_eos=body.ignore_eos, logprobs=logprobs,
                     prompt_logprobs=prompt_logprobs, seed=body.seed)


def _check_common(served: Served, body: CompletionRequest | ChatCompletionRequest) -> _Target:
    target = _target(served, body.model)
    if body.stream_options is not None and not body.stream:
        raise ApiError(400, "stream_options is only allowed with stream: true", param="stream_options")
    return target


def _check_room(served: Served, prompts: list[list[int]], max_tokens: int) -> None:
    longest = max(len(p) for p in prompts)
    if longest + max_tokens > served.n_positions:
        raise ApiError(400, f"the prompt has {longest} tokens and max_tokens is {max_tokens}: together they exceed "
                       f"the model's context of {served.n_positions} tokens; shorten the prompt or lower max_tokens",
                       param="max_tokens", code="context_length_exceeded")


def _token_text(served: Served, token: int) -> str:
    """A token as text; a token that is not whole UTF-8 (part of a character) as `bytes:\\xNN...`, as OpenAI
    writes it, so that distinct tokens keep distinct keys in top_logprobs."""
    data = served.tokenizer.decode_single_token_bytes(token)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in data)


# ---------------------------------------------------------------------------------- completions
def _encode_prompts(served: Served, prompt: Any) -> list[list[int]]:
    """Any of OpenAI's four prompt shapes → token-id lists (an empty text prompt is <|endoftext|>)."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise ApiError(400, "prompt is an empty list: give at least one prompt", param="prompt")
    if isinstance(prompt[0], int):
        prompt = [prompt]
    tok = served.tokenizer
    out = []
    for p in prompt:
        if isinstance(p, str):
            try:
                check_controls(tok, p)  # <|stars=9|> for a model trained on 1-5 stars: refused
            except UserError as e:
                raise ApiError(400, str(e), param="prompt") from None
        ids = list(tok.encode(p, allowed_special="all")) if isinstance(p, str) else list(p)
        if isinstance(p, str) and not ids:
            ids = [served.scheduler.eos]  # OpenAI: an empty prompt starts a new document
        if not ids:
            raise ApiError(400, "a token-id prompt is empty: give at least one token", param="prompt")
        bad = [t for t in ids if t >= served.vocab]
        if bad:
            raise ApiError(400, f"token id {bad[0]} is outside the model's vocabulary (0..{served.vocab - 1})",
                           param="prompt")
        out.append(ids)
    return out


async def _completions(served: Served, body: CompletionRequest, request: Request) -> Response:
    target = _check_common(served, body)
    if body.suffix is not None:
        raise ApiError(400, "suffix is not supported by this model", param="suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise ApiError(400, "best_of is not supported (only best_of == n)", param="best_of")
    prompts = _encode_prompts(served, body.prompt)
    # OpenAI's default of 16, capped to the room the longest prompt leaves (gpt2.generate.budget, as the CLI).
    given = body.max_tokens if "max_tokens" in body.model_fields_set else None
    max_tokens = given if given is not None else fit_new_tokens(
        served.n_positions, requested=None, default=16, prompt_tokens=max(len(p) for p in prompts))[0]
    if max_tokens == 0 and not body.echo:
        raise ApiError(400, "max_tokens 0 only makes sense with echo: true (scoring the prompt)", param="max_tokens")
    _check_room(served, prompts, max_tokens)
    total = len(prompts) * body.n
    sched = served.scheduler
    if total > sched.max_batch + sched.max_queue:
        raise ApiError(400, f"{len(prompts)} prompts × n={body.n} = {total} sequences exceed what this server "
                       f"holds at once ({sched.max_batch + sched.max_queue}); split the request", param="prompt")
    params = _params(served, body, max_tokens=max_tokens, stop=body.stop, logprobs=body.logprobs,  # type: ignore[arg-type]
                     prompt_logprobs=body.echo and body.logprobs is not None)
    run = _Run(served, request, prompts, params, body.n, target)
    meta = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": target.name}
    prompt_tokens = sum(len(p) for p in prompts)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_stream_completion(served, run, body, prompts, meta, prompt_tokens, include_usage),
                                 media_type="text/event-stream")
    choices: dict[int, _Choice] = {}
    async for piece in run.pieces():
        choices.setdefault(piece.choice, _Choice()).add(piece)
    if run.remaining:
        return Response(status_code=499)  # the client went away; nobody reads this
    out = []
    for i in sorted(choices):
        c = choices[i]
        prompt_text = served.tokenizer.decode(prompts[i // body.n]) if body.echo else ""
        lp = None
        if body.logprobs is not None:
            tokens = (c.prompt_logprobs or []) + c.tokens if body.echo else c.tokens
            lp = _completion_logprobs(served, tokens)
        out.append({"index": i, "text": prompt_text + "".join(c.text), "logprobs": lp, "finish_reason": c.finish_reason})
    completion_tokens = sum(c.completion_tokens for c in choices.values())
    return JSONResponse({**meta, "object": "text_completion", "choices": out, "system_fingerprint": None,
                         "usage": usage(prompt_tokens, completion_tokens, run.cached_tokens)})


class _Offsets:
    """Where the next token starts in a choice's text: the characters decoded so far (UTF-8 across tokens)."""

    def __init__(self) -> None:
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.offset = 0


def _completion_logprobs(served: Served, tokens: list[TokenLogprob], at: _Offsets | None = None) -> dict[str, Any]:
    """OpenAI's legacy logprobs object: tokens, token_logprobs, top_logprobs (the chosen token included) and
    text_offset (where each token starts in the choice's text)."""
    at = at or _Offsets()
    tops: list[dict[str, float] | None] = []
    offsets = []
    for t in tokens:
        offsets.append(at.offset)
        at.offset += len(at.decoder.decode(served.tokenizer.decode_single_token_bytes(t.token)))
        if t.logprob is None:
            tops.append(None)
            continue
        top: dict[str, float] = {}
        for i, v in [*(t.top or []), (t.token, t.logprob)]:
            top.setdefault(_token_text(served, i), v)
        tops.append(top)
    return {"tokens": [_token_text(served, t.token) for t in tokens], "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": tops, "text_offset": offsets}


async def _stream_completion(served: Served, run: _Run, body: CompletionRequest, prompts: list[list[int]],
                             meta: dict[str, Any], prompt_tokens: int, include_usage: bool) -> AsyncIterator[str]:
    head = {**meta, "object": "text_completion"}
    offsets: dict[int, _Offsets] = {}
    completion_tokens = 0
    try:
        async for piece in run.pieces():
            text, tokens = piece.text, [piece.token] if piece.token is not None else []
            if piece.choice not in offsets and body.echo:
                text = served.tokenizer.decode(prompts[piece.choice // body.n]) + text
                tokens = (piece.prompt_logprobs or []) + tokens
            at = offsets.setdefault(piece.choice, _Offsets())
            lp = _completion_logprobs(served, tokens, at) if body.logprobs is not None else None
            if not text and piece.finish_reason is None and lp is None:
                continue  # text held back (a partial character or a possible stop string): nothing to say yet
            completion_tokens += piece.completion_tokens if piece.finish_reason else 0
            yield _sse({**head, "choices": [{"index": piece.choice, "text": text, "logprobs": lp,
                                             "finish_reason": piece.finish_reason}]})
    except RuntimeError as e:
        yield _sse(ApiError(500, str(e), type="server_error").body())
        return
    if run.remaining:
        return
    if include_usage:
        yield _sse({**head, "choices": [], "usage": usage(prompt_tokens, completion_tokens, run.cached_tokens)})
    yield "data: [DONE]\n\n"


# ------------------------------------------------------------------------------------------ chat
def _chat_prompt(served: Served, chat: list[ChatMessage], target: _Target) -> list[int]:
    """The conversation in the model's prompt format, encoded as `gpt2 chat` and transformers'
    apply_chat_template encode it (gpt2.generate.chat.encode_conversation): the system text first (system and
    developer messages joined), then user turns and assistant replies, each reply closed by <|endoftext|>.
    Consecutive messages of one role are joined by a blank line, as the format alternates the two."""
    from gpt2.errors import UserError
    from gpt2.generate.chat import encode_conversation

    fmt, tok = target.chat_format, served.tokenizer
    if fmt is None:
        raise ApiError(400, f"the model {target.name!r} has no prompt format (no chat.json), so it cannot chat: use "
                       "/v1/completions, or start the server with --chat-format (alpaca, plain)",
                       param="messages", code="chat_not_supported")
    if chat[-1].role != "user":
        raise ApiError(400, "the last message must be the user's (the model answers it)", param="messages")
    system = "\n\n".join(m.text() for m in chat if m.role in ("system", "developer"))
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    for m in chat:
        if m.role not in ("user", "assistant"):
            continue
        if len(messages) > (1 if system else 0) and messages[-1]["role"] == m.role:
            messages[-1]["content"] += "\n\n" + m.text()
        else:
            messages.append({"role": m.role, "content": m.text()})
    try:
        return encode_conversation(messages, tok, fmt, add_generation_prompt=True)[0]
    except UserError as e:  # e.g. an assistant message before any user message
        raise ApiError(400, str(e), param="messages") from None


async def _chat(served: Served, body: ChatCompletionRequest, request: Request) -> Response:
    target = _check_common(served, body)
    prompt = _chat_prompt(served, body.messages, target)
    # No max_tokens: the room the prompt leaves (vLLM's rule), through the rule every verb uses; a prompt that
    # fills the context already gets half of it, which _check_room then refuses (found by Schemathesis: a
    # negative room crashed the prefill).
    max_tokens = body.max_completion_tokens or body.max_tokens or fit_new_tokens(
        served.n_positions, requested=None, default=served.n_positions, prompt_tokens=len(prompt))[0]
    _check_room(served, [prompt], max_tokens)
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    params = _params(served, body, max_tokens=max_tokens, stop=[*target.chat_format.stop, *body.stop],
                     logprobs=(body.top_logprobs or 0) if body.logprobs else None)
    run = _Run(served, request, [prompt], params, body.n, target)
    meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": target.name}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_stream_chat(served, run, body, meta, len(prompt), include_usage),
                                 media_type="text/event-stream")
    choices: dict[int, _Choice] = {}
    async for piece in run.pieces():
        choices.setdefault(piece.choice, _Choice()).add(piece)
    if run.remaining:
        return Response(status_code=499)
    out = [{"index": i, "message": {"role": "assistant", "content": "".join(c.text)},
            "logprobs": {"content": _chat_logprobs(served, c.tokens)} if body.logprobs else None,
            "finish_reason": c.finish_reason} for i, c in sorted(choices.items())]
    completion_tokens = sum(c.completion_tokens for c in choices.values())
    return JSONResponse({**meta, "object": "chat.completion", "choices": out, "system_fingerprint": None,
                         "usage": usage(len(prompt), completion_tokens, run.cached_tokens)})


def _chat_logprobs(served: Served, tokens: list[TokenLogprob]) -> list[dict[str, Any]]:
    def entry(token: int, logprob: float) -> dict[str, Any]:
        text = _token_text(served, token)
        return {"token": text, "logprob": logprob, "bytes": list(served.tokenizer.decode_single_token_bytes(token))}

    return [{**entry(t.token, t.logprob or 0.0), "top_logprobs": [entry(i, v) for i, v in (t.top or [])]}
            for t in tokens]


async def _stream_chat(served: Served, run: _Run, body: ChatCompletionRequest, meta: dict[str, Any],
                       prompt_tokens: int, include_usage: bool) -> AsyncIterator[str]:
    head = {**meta, "object": "chat.completion.chunk"}
    for i in range(body.n):
        yield _sse({**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                         "logprobs": None, "finish_reason": None}]})
    completion_tokens = 0
    try:
        async for piece in run.pieces():
            if not piece.text and piece.finish_reason is None and not body.logprobs:
                continue
            lp = {"content": _chat_logprobs(served, [piece.token])} if body.logprobs and piece.token else None
            delta = {"content": piece.text} if piece.text else {}
            completion_tokens += piece.completion_tokens if piece.finish_reason else 0
            yield _sse({**head, "choices": [{"index": piece.choice, "delta": delta, "logprobs": lp,
                                             "finish_reason": piece.finish_reason}]})
    except RuntimeError as e:
        yield _sse(ApiError(500, str(e), type="server_error").body())
        return
    if run.remaining:
        return
    if include_usage:
        yield _sse({**head, "choices": [], "usage": usage(prompt_tokens, completion_tokens, run.cached_tokens)})
    yield "data: [DONE]\n\n"


# -------------------------------------------------------------------------------------- tokenize
def _tokenize(served: Served, body: TokenizeRequest) -> dict[str, Any]:
    """vLLM's /tokenize: the ids a completion's prompt or a chat's messages become, through the very functions
    the two generation routes call, so a client's count is the server's (the playground fits a conversation
    to the context with it). No length limit: a prompt longer than the context is counted, not refused."""
    target = _target(served, body.model)
    if (body.prompt is None) == (body.messages is None):
        raise ApiError(400, "give exactly one of prompt (a completion's prompt) and messages (a chat's messages)",
                       param="prompt" if body.prompt is not None else "messages")
    ids = (_chat_prompt(served, body.messages, target) if body.messages is not None
           else _encode_prompts(served, body.prompt)[0])
    return {"count": len(ids), "max_model_len": served.n_positions, "tokens": ids}


# ------------------------------------------------------------------------------------ the command
def run_serve(source: str, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
              max_batch: int = 32, max_queue: int = 128, model_name: str | None = None,
              chat_format: str | None = None, tokenizer: str | None = None, dtype: str = "fp32",
              device: str = "auto", log_level: str = "info", quantize: str | None = None,
              prefix_cache_mb: float = PREFIX_CACHE_MB, adapters: Sequence[str] = ()) -> int:
    """`gpt2 serve`: load the model through gpt2.load (as every verb does), then serve it until Ctrl-C.

    quantize="int8": int8 weights (gpt2.generate.quant), a LoRA adapter merged first. adapters: NAME=DIR
    pairs (--adapter), LoRA adapters of the model served beside it (gpt2.serve.adapters); with int8 the
    base's matrices are int8 and each adapter's update stays in the model's dtype."""
    import uvicorn

    from gpt2.errors import UserError
    from gpt2.generate.chat import load_chat_format
    from gpt2.generate.quant import check_quantization
    from gpt2.generate.quant import quantize as quantized
    from gpt2.load import load
    from gpt2.serve.adapters import load_adapters, parse_adapter_specs

    if not 0 <= port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {port}")
    if not prefix_cache_mb >= 0:  # before the model loads: a typo costs no wait
        raise UserError(f"--prefix-cache-mb must be >= 0 (0 turns the prefix cache off), got {prefix_cache_mb}")
    check_quantization(quantize)
    name = model_name or Path(str(source).rstrip("/")).name or str(source)
    pairs = parse_adapter_specs(adapters, base_name=name)  # before loading anything: a typo costs no wait
    loaded = load(source, tokenizer=tokenizer, dtype=dtype, device=device)  # type: ignore[arg-type]
    named = load_adapters(pairs, base=loaded, tokenizer_given=tokenizer is not None)
    model, tok, fmt = loaded.model, loaded.tokenizer, loaded.chat_format
    if quantize is not None:
        model = quantized(model, quantize)  # type: ignore[arg-type]
    if chat_format is not None:
        fmt = load_chat_format(loaded.directory or ".", format=chat_format)
    app = create_app(model, tok, name=name, chat_format=fmt, api_key=api_key, max_batch=max_batch,
                     max_queue=max_queue, prefix_cache_mb=prefix_cache_mb, adapters=named)
    where = "loopback only" if host in ("127.0.0.1", "localhost", "::1") else "REACHABLE FROM OTHER MACHINES"
    served = f"{name!r} and {len(named)} adapter(s) ({', '.join(a.name for a in named)})" if named else repr(name)
    print(f"serving {served} on http://{host}:{port}/v1 ({where}; {'API key required' if api_key else 'no API key'}); "
          f"playground: http://{host}:{port}/", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
    return 0
