"""The OpenAI-compatible app: /v1/models, /v1/chat/completions, /v1/completions (both streamed as server-sent
events when asked), /v1/score for a reward model, /health. Every refusal is a 4xx with an OpenAI error body;
requests wait in the scheduler and generate in batches."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.middleware.body_limit import RequestBodyLimitMiddleware

from tunelab.inference.engines.base import Engine
from tunelab.inference.engines.budget import ThinkingBudget
from tunelab.inference.engines.types import Completion, RequestError
from tunelab.inference.engines.types import Request as EngineRequest
from tunelab.inference.reasoning import thinking_template_kwargs
from tunelab.serve.protocol import ChatRequest, CompletionRequest, ScoreRequest, error_body
from tunelab.serve.scheduler import AsyncSink, QueueFull, Scheduler

MAX_BODY_BYTES = 4 * 1024 * 1024
DISCONNECT_POLL_SECONDS = 0.25


@dataclass(frozen=True)
class ServeSettings:
    api_key: str | None = None
    max_concurrency: int = 32
    max_queue: int = 256
    max_body_bytes: int = MAX_BODY_BYTES
    budget: ThinkingBudget = ThinkingBudget()  # the default thinking budget of every request (none: no forcing)
    rag: Any = None  # a Retriever (inference/rag): clues in every chat request's question, named in `sources`


class _ClientGone(Exception):
    pass


def _error(status: int, message: str, param: str | None = None, code: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    kind = {429: "rate_limit_error"}.get(status, "invalid_request_error" if status < 500 else "server_error")
    return JSONResponse(error_body(message, kind, param, code), status_code=status, headers=headers)


class _DeclaredBodyLimit:
    """ASGI middleware: a body whose Content-Length is over the limit gets a JSON 413 before anything reads it
    (Starlette's RequestBodyLimitMiddleware, inside it, answers those in plain text; it counts chunked bodies)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        declared = dict(scope.get("headers") or []).get(b"content-length") if scope["type"] == "http" else None
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _error(413, f"the request body is over {self.limit} bytes", code="body_too_large")(
                scope, receive, send)
        return await self.app(scope, receive, send)


def _usage(completions: list[Completion], choices_per_prompt: int | None = None) -> dict[str, int]:
    """OpenAI's count: the n choices of one prompt read it once; each prompt of a batch counts."""
    step = choices_per_prompt or len(completions) or 1
    prompt = sum(c.prompt_tokens for c in completions[::step])
    completion_tokens = sum(c.completion_tokens for c in completions)
    return {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens}


MAX_SCORE_PAIRS = 256


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)


def _score_pairs(prompt: Any, response: Any) -> tuple[list[Any], list[Any]]:
    """One (prompt, response) pair, each text or messages, or two lists of them of one length."""
    def one(value: Any) -> bool:
        return (isinstance(value, str) and bool(value)) or _is_messages(value)

    if one(prompt) and one(response):
        return [prompt], [response]
    if isinstance(prompt, list) and isinstance(response, list) and len(prompt) == len(response) and \
            all(one(p) for p in prompt) and all(one(r) for r in response):
        if not 0 < len(prompt) <= MAX_SCORE_PAIRS:
            raise RequestError(f"give 1 to {MAX_SCORE_PAIRS} pairs", param="prompt")
        return list(prompt), list(response)
    raise RequestError("prompt and response: one non-empty text (or a list of {role, content} messages) each, or "
                       "two lists of them of one length", param="prompt")


def _tool_calls(completion: Completion) -> list[dict[str, Any]]:
    return [{"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
            for call in completion.tool_calls]


def create_app(engine: Engine, settings: ServeSettings = ServeSettings(), *,
               log: Callable[[str], None] | None = None) -> FastAPI:
    """The app over ``engine``: generation endpoints when it generates, /v1/score when it scores (a reward
    model)."""
    scheduler = Scheduler(engine, settings.max_concurrency, settings.max_queue) if engine.can_generate else None
    say = log or (lambda line: None)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if scheduler is not None:
            scheduler.start()
        yield
        if scheduler is not None:
            scheduler.stop()

    app = FastAPI(title="tunelab", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    def names() -> list[str]:
        return list(engine.models)

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, error: RequestError) -> JSONResponse:
        return _error(error.status, str(error), error.param, error.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {"msg": "invalid request", "loc": ()}
        where = [str(part) for part in first.get("loc", ()) if part != "body"]
        if first.get("type") == "json_invalid":
            return _error(400, f"the body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}",
                          code="invalid_json")
        message = f"{'.'.join(where) or 'body'}: {first['msg']}"
        return _error(400, message, ".".join(where) or None, "invalid_value")

    @app.exception_handler(HTTPException)
    async def _http(_: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 413:  # Starlette's body limit, by Content-Length or while a chunked body is read
            return _error(413, f"the request body is over {settings.max_body_bytes} bytes", code="body_too_large")
        return _error(error.status_code, str(error.detail))

    @app.exception_handler(Exception)
    async def _failure(_: Request, error: Exception) -> JSONResponse:  # a bug or a failed generation: still JSON
        say(f"500 {type(error).__name__}: {error}")
        return _error(500, f"the server failed: {type(error).__name__}: {error}", code="server_error")

    @app.exception_handler(QueueFull)
    async def _full(_: Request, error: QueueFull) -> JSONResponse:
        return _error(429, "the server is busy: too many requests are waiting; retry shortly",
                      code="queue_full", headers={"Retry-After": "1"})

    @app.middleware("http")
    async def _authorize(http: Request, call_next: Callable) -> Any:
        started = time.perf_counter()
        if settings.api_key and http.url.path.startswith("/v1"):
            given = http.headers.get("authorization", "")
            expected = f"Bearer {settings.api_key}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                say(f"401 {http.method} {http.url.path}")
                return _error(401, "missing or wrong API key: send Authorization: Bearer KEY", code="invalid_api_key")
        response = await call_next(http)
        if response.status_code >= 400:  # successes are logged by their handlers, with token counts
            say(f"{response.status_code} {http.method} {http.url.path} "
                f"{(time.perf_counter() - started) * 1000:.0f} ms")
        return response

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": names(),
                "running": scheduler.running if scheduler else 0, "waiting": scheduler.waiting if scheduler else 0}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        created = int(time.time())
        data = []
        for name, served in engine.models.items():
            data.append({"id": name, "object": "model", "created": created, "owned_by": "tunelab",
                         "root": served.adapter or name, "parent": engine.base_name if served.adapter else None})
        return {"object": "list", "data": data}

    def generation_engine(model: str | None) -> Engine:
        if not engine.can_generate:
            raise RequestError(f"'{engine.served(model).name}' is a reward model: it scores answers; use /v1/score",
                               param="model", code="model_not_supported")
        return engine

    def prepare(body: ChatRequest | CompletionRequest, messages: list[dict] | None, prompt: str | None,
                tools: Any, parse_tools: bool) -> list[EngineRequest]:
        """One engine request per choice, each checked (model, prompt length, settings) before it waits."""
        active = generation_engine(body.model)
        served = active.served(body.model)
        body.refuse_unsupported()
        limit = body.token_limit()
        if limit is not None and limit < 1:
            raise RequestError(f"max_tokens must be at least 1, got {limit}", param="max_tokens")
        budget = body.budget(settings.budget) if messages is not None else None
        template_kwargs = getattr(body, "chat_template_kwargs", None)
        if budget is not None and not set(thinking_template_kwargs(True)) & set(template_kwargs or {}):
            # forcing asks for thinking, unless the request switched it itself
            template_kwargs = {**(template_kwargs or {}), **thinking_template_kwargs(True)}
        probe = EngineRequest(messages=messages, prompt=prompt, tools=tools, model=served.name,
                              parse_tools=parse_tools, parse_reasoning=messages is not None,
                              template_kwargs=template_kwargs, budget=budget)
        ids = tuple(active.prompt_ids(probe))  # rendered once: the checks and the worker reuse it
        # no max_tokens: the rest of the context (at least one token, so a prompt too long is refused below)
        tokens = limit if limit is not None else max(1, active.context_length - len(ids))
        requests = []
        for index in range(body.n):
            request = replace(probe, sampling=body.sampling(tokens, index), prompt_ids=ids)
            active.check(request)
            requests.append(request)
        return requests

    async def run(requests: list[EngineRequest], http: Request) -> list[Completion]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        sinks = [AsyncSink(loop, events, index) for index in range(len(requests))]
        assert scheduler is not None
        scheduler.submit(requests, sinks)
        results: dict[int, Completion] = {}
        try:
            while len(results) < len(requests):
                try:
                    index, kind, value = await asyncio.wait_for(events.get(), DISCONNECT_POLL_SECONDS)
                except asyncio.TimeoutError:
                    if await http.is_disconnected():
                        raise _ClientGone from None
                    continue
                if kind == "done":
                    results[index] = value
                elif kind == "error":
                    raise value
        finally:
            for sink in sinks:
                sink.cancelled.set()
        return [results[i] for i in range(len(requests))]

    def stream(requests: list[EngineRequest], make_chunk: Callable[[int, dict[str, Any], str | None], dict],
               include_usage: bool, chat: bool, started: float, path: str,
               choices_per_prompt: int | None = None) -> StreamingResponse:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        sinks = [AsyncSink(loop, events, index) for index in range(len(requests))]
        assert scheduler is not None
        scheduler.submit(requests, sinks)

        def line(payload: dict[str, Any]) -> str:
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

        async def events_out() -> AsyncIterator[str]:
            finished: dict[int, Completion] = {}
            status = "200"
            try:
                if chat:
                    for index in range(len(requests)):
                        yield line(make_chunk(index, {"role": "assistant", "content": ""}, None))
                while len(finished) < len(requests):
                    index, kind, value = await events.get()
                    if kind == "text":
                        yield line(make_chunk(index, {"content": value} if chat else {"text": value}, None))
                    elif kind == "reasoning":
                        yield line(make_chunk(index, {"reasoning_content": value}, None))
                    elif kind == "done":
                        finished[index] = value
                        if value.tool_calls:
                            calls = [{"index": i, **call} for i, call in enumerate(_tool_calls(value))]
                            yield line(make_chunk(index, {"tool_calls": calls}, None))
                        yield line(make_chunk(index, {} if chat else {"text": ""}, value.finish_reason))
                    else:
                        status = "500"
                        yield line(error_body(f"generation failed: {type(value).__name__}: {value}",
                                              "server_error"))
                        break
                if include_usage and status == "200":
                    chunk = make_chunk(0, {}, None)
                    chunk["choices"], chunk["usage"] = [], _usage([finished[i] for i in sorted(finished)],
                                                                    choices_per_prompt)
                    yield line(chunk)
                yield "data: [DONE]\n\n"
            except asyncio.CancelledError:
                status = "499"
                raise
            finally:
                for sink in sinks:
                    sink.cancelled.set()  # a client that went away frees its row at the next step
                tokens = sum(c.completion_tokens for c in finished.values())
                reasons = ",".join(sorted({c.finish_reason for c in finished.values()})) or "cancelled"
                say(f"{status} POST {path} stream model={requests[0].model} completion_tokens={tokens} {reasons} "
                    f"{(time.perf_counter() - started) * 1000:.0f} ms")

        return StreamingResponse(events_out(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def log_done(path: str, model: str, completions: list[Completion], started: float) -> None:
        usage = _usage(completions)
        say(f"200 POST {path} model={model} prompt_tokens={usage['prompt_tokens']} "
            f"completion_tokens={usage['completion_tokens']} {(time.perf_counter() - started) * 1000:.0f} ms")

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, http: Request) -> Any:
        started = time.perf_counter()
        messages = [message.plain() for message in body.messages]
        choice = body.tool_choice
        if isinstance(choice, dict) or choice not in (None, "auto", "none"):
            raise RequestError(f"tool_choice {json.dumps(choice)} is not supported; use \"auto\" or \"none\"",
                               param="tool_choice")
        active = generation_engine(body.model)
        if body.tools and choice != "none" and active.served(body.model).tool_parser is None:
            raise RequestError(f"the chat template of '{active.served(body.model).name}' defines no tool calls",
                               param="tools")
        sources = None
        if settings.rag is not None:  # the index's chunks close to the question go into it
            [messages], [hits] = await asyncio.to_thread(settings.rag.augment, [messages])
            sources = [{key: value for key, value in hit.as_json().items() if key != "text"} for hit in hits]
        requests = await asyncio.to_thread(prepare, body, messages, None, body.tools, choice != "none")
        ident, created, model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), requests[0].model or ""

        def chunk(index: int, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            payload = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                       "choices": [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}]}
            if sources is not None and "role" in delta:  # the first chunk names the retrieved chunks
                payload["sources"] = sources
            return payload

        if body.stream:
            include = bool(body.stream_options and body.stream_options.include_usage)
            return stream(requests, chunk, include, True, started, http.url.path)
        try:
            completions = await run(requests, http)
        except _ClientGone:
            say(f"499 POST {http.url.path} model={model} (client went away)")
            return JSONResponse({}, status_code=499)
        log_done(http.url.path, model, completions, started)
        choices = []
        for index, completion in enumerate(completions):
            message: dict[str, Any] = {"role": "assistant",
                                       "content": completion.text if completion.text or not completion.tool_calls
                                       else None}
            if completion.tool_calls:
                message["tool_calls"] = _tool_calls(completion)
            if completion.reasoning:
                message["reasoning_content"] = completion.reasoning
            choices.append({"index": index, "message": message, "finish_reason": completion.finish_reason,
                            "logprobs": None})
        response = {"id": ident, "object": "chat.completion", "created": created, "model": model,
                    "choices": choices, "usage": _usage(completions)}
        return response if sources is None else {**response, "sources": sources}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: Request) -> Any:
        started = time.perf_counter()
        if body.echo or body.suffix:
            raise RequestError("echo and suffix are not supported", param="echo" if body.echo else "suffix")
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if not prompts or len(prompts) * body.n > 64:
            raise RequestError("give 1 to 64 prompts (times n)", param="prompt")
        requests = [request for prompt in prompts
                    for request in await asyncio.to_thread(prepare, body, None, prompt, None, False)]
        ident, created, model = f"cmpl-{uuid.uuid4().hex}", int(time.time()), requests[0].model or ""

        def chunk(index: int, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            return {"id": ident, "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": index, "text": delta.get("text", ""), "finish_reason": finish,
                                 "logprobs": None}]}

        if body.stream:
            include = bool(body.stream_options and body.stream_options.include_usage)
            return stream(requests, chunk, include, False, started, http.url.path, body.n)
        try:
            done = await run(requests, http)
        except _ClientGone:
            return JSONResponse({}, status_code=499)
        log_done(http.url.path, model, done, started)
        usage = _usage(done, body.n)
        return {"id": ident, "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": i, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None}
                            for i, c in enumerate(done)], "usage": usage}

    @app.post("/v1/score")
    async def score(body: ScoreRequest) -> Any:
        if not engine.can_score:
            raise RequestError("this server serves generation models; /v1/score needs a reward model (stage rm): "
                               "tunelab serve --adapter RM_FOLDER", param="model", code="model_not_supported")
        served = engine.served(body.model)
        prompts, responses = _score_pairs(body.prompt, body.response)
        values = await asyncio.to_thread(engine.score, prompts, responses, served.name)
        say(f"200 POST /v1/score model={served.name} {len(values)} pairs")
        return {"object": "list", "model": served.name,
                "data": [{"index": i, "object": "score", "score": v} for i, v in enumerate(values)]}

    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=settings.max_body_bytes)
    app.add_middleware(_DeclaredBodyLimit, limit=settings.max_body_bytes)  # added last: runs first
    return app
