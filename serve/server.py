"""`alrt serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) in front of one model worker.

Endpoints: `GET /health` (503 `{"status": "loading"}` until the model is loaded, then 200 with counters),
`GET /metrics` (Prometheus text format, `serve/metrics.py`), `GET /v1/models`, `POST /v1/completions`,
`POST /v1/chat/completions`, with OpenAI's request and response shapes, server-sent events when `stream` is true
(and a last chunk with `usage` and no choices when `stream_options.include_usage` is), and OpenAI's error object:
400 for a bad request, 429 when the queue is full, 503 while loading. The socket is bound first and the model loaded
in the background, so a client can poll `/health`. A completion request may name any `model` (clients send whatever
they were configured with, and there is one model to answer with, as in llama-server); responses report the server's
own id. With `strict_model`, any other name is a 400 `model_not_found`. `/v1/models` lists only the server's id either
way. Chat messages become one document through `ChatTemplate.render` (our models are base LMs), and the reply ends at
the template's `turn_end`. Every answer, and the streamed chunk with its `finish_reason`, carries llama-server's
`timings` object.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from alrt_core.errors import UserError
from alrt_core.inference.decoder import Decoder
from alrt_core.inference.sampling import SamplingConfig
from alrt_core.inference.session import Generation, GenerationStats
from export.loader import LoadedModel
from serve.chat import ChatTemplate
from serve.limits import ServeLimits
from serve.metrics import CLIENT_CLOSED, CountRequests, ServeMetrics
from serve.openai_schema import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    GenerationFields,
    invalid,
    validation_error,
)
from serve.worker import Job, ModelWorker, NotReady, QueueFull

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions; chat defaults to the server's cap
DEFAULT_LIMITS = ServeLimits()
FINISH_REASONS = {"eos": "stop", "stop_string": "stop", "max_new_tokens": "length", "context_full": "length"}


@dataclass
class Reply:
    """The envelope every response and stream chunk of one request shares."""

    chat: bool
    model: str
    id: str = ""
    created: int = 0

    def __post_init__(self) -> None:
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def body(self, choices: list[dict[str, Any]], *, chunk: bool, **extra: Any) -> dict[str, Any]:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices, **extra}

    def choice(self, text: str | None, finish: str | None, *, chunk: bool, role: bool = False) -> dict[str, Any]:
        if not self.chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        if not chunk:
            return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                    "finish_reason": finish}
        delta: dict[str, Any] = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}


def usage(job: Job, generation: Generation) -> dict[str, int]:
    prompt, completion = len(job.prompt_ids), len(generation.token_ids)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def per_token_and_rate(count: int, milliseconds: float) -> tuple[float, float]:
    return (milliseconds / count if count else 0.0), (1000 * count / milliseconds if milliseconds > 0 else 0.0)


def timings(stats: GenerationStats) -> dict[str, float]:
    """llama-server's `timings`: the prompt's prefill (until the first token can be sampled) and the decoding."""
    prompt_ms, predicted_ms = 1000 * stats.time_to_first_token, 1000 * stats.decode_seconds
    prompt_per_token_ms, prompt_per_second = per_token_and_rate(stats.prompt_tokens, prompt_ms)
    predicted_per_token_ms, predicted_per_second = per_token_and_rate(stats.new_tokens, predicted_ms)
    return {
        "prompt_n": stats.prompt_tokens, "prompt_ms": prompt_ms, "prompt_per_token_ms": prompt_per_token_ms,
        "prompt_per_second": prompt_per_second, "predicted_n": stats.new_tokens, "predicted_ms": predicted_ms,
        "predicted_per_token_ms": predicted_per_token_ms, "predicted_per_second": predicted_per_second,
    }


def sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"


def create_app(
    loader: Callable[[], LoadedModel[Decoder]], *, model_name: str, limits: ServeLimits = DEFAULT_LIMITS,
    template: ChatTemplate | None = None, before_job: Callable[[Job], None] | None = None, strict_model: bool = False,
) -> FastAPI:
    """The app; `loader` runs on the worker thread once the server has started (so /health answers meanwhile).
    `model_name` is the id responses report; with `strict_model` it is also the only `model` a request may name."""
    template = template or ChatTemplate()
    worker = ModelWorker(loader, limits.max_queue, parallel=limits.parallel, threads=limits.threads,
                         before_job=before_job)
    metrics = ServeMetrics(worker)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        yield
        await asyncio.to_thread(worker.close)

    app = FastAPI(title="alrt serve", lifespan=lifespan)
    app.state.worker = worker
    app.add_middleware(CountRequests, requests=metrics.requests)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, error: APIError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse(validation_error(list(error.errors())).body(), status_code=400)  # not FastAPI's 422

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return JSONResponse(APIError(error.status_code, str(error.detail), type=kind).body(), status_code=error.status_code)

    def model_card() -> dict[str, Any]:
        return {"id": model_name, "object": "model", "created": started, "owned_by": "alrt"}

    def ready_model() -> LoadedModel[Decoder]:
        if worker.state != "ready" or worker.loaded is None:
            message = f"the model failed to load: {worker.error}" if worker.state == "failed" else "the model is still loading"
            raise APIError(503, message, type="service_unavailable", code=f"model_{worker.state}")
        return worker.loaded

    def make_job(body: GenerationFields, prompt_ids: list[int], requested: int | None, default: int,
                 stops: tuple[str, ...], prompt_param: str, tokens_param: str = "max_tokens") -> Job:
        loaded = ready_model()
        if strict_model and body.model != model_name:
            raise invalid(f"the model {body.model!r} does not exist; this server serves {model_name!r}",
                          param="model", code="model_not_found")
        context = loaded.model.config.seq_len
        prompt_limit = min(limits.max_prompt_tokens or context, context)
        if len(prompt_ids) > prompt_limit:
            raise invalid(f"the prompt is {len(prompt_ids)} tokens; this server accepts at most {prompt_limit} "
                          f"(model context {context})", param=prompt_param, code="context_length_exceeded")
        if requested is not None and requested > limits.max_tokens_cap:
            raise invalid(f"{tokens_param} is {requested}; this server allows at most {limits.max_tokens_cap}",
                          param=tokens_param, code="max_tokens_exceeded")
        sampling = SamplingConfig(
            temperature=1.0 if body.temperature is None else body.temperature, top_k=body.top_k,
            top_p=1.0 if body.top_p is None else body.top_p, repetition_penalty=body.repetition_penalty, seed=body.seed,
        )
        return Job(prompt_ids, min(requested or default, limits.max_tokens_cap), sampling, stops,
                   stream=bool(body.stream), loop=asyncio.get_running_loop())

    async def respond(job: Job, reply: Reply, request: Request, include_usage: bool) -> Response:
        try:
            worker.submit(job)
        except QueueFull as error:
            raise APIError(429, str(error), type="rate_limit_error", code="queue_full") from None
        except NotReady as error:
            raise APIError(503, str(error), type="service_unavailable") from None
        if job.stream:
            return StreamingResponse(stream(job, reply, include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        # Once the body is read, `receive()` returns only when the client disconnects: then stop the generation.
        disconnected = asyncio.ensure_future(request.receive())
        result = asyncio.ensure_future(job.events.get())
        try:
            await asyncio.wait({disconnected, result}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            disconnected.cancel()
            if not result.done():
                result.cancel()
                job.cancelled.set()
        if not result.done():  # cancelled above (a task reads as cancelled only once it runs again): the client left
            return Response(status_code=CLIENT_CLOSED)  # nobody reads it; the status is for the metrics
        kind, value = result.result()
        if kind == "error":
            raise APIError(500, value, type="server_error")
        metrics.observe(value.stats)
        finish = FINISH_REASONS.get(value.stats.stop_reason, "stop")
        body = reply.body([reply.choice(value.text, finish, chunk=False)], chunk=False, usage=usage(job, value),
                          timings=timings(value.stats))
        return JSONResponse(body)

    async def stream(job: Job, reply: Reply, include_usage: bool) -> AsyncIterator[str]:
        extra = {"usage": None} if include_usage else {}  # as OpenAI: every chunk has usage null but the last
        try:
            if reply.chat:
                yield sse(reply.body([reply.choice("", None, chunk=True, role=True)], chunk=True, **extra))
            while True:
                kind, value = await job.events.get()
                if kind == "text":
                    yield sse(reply.body([reply.choice(value, None, chunk=True)], chunk=True, **extra))
                    continue
                if kind == "error":
                    yield sse(APIError(500, value, type="server_error").body())
                    return
                metrics.observe(value.stats)
                finish = FINISH_REASONS.get(value.stats.stop_reason, "stop")
                yield sse(reply.body([reply.choice(None, finish, chunk=True)], chunk=True, **extra,
                                     timings=timings(value.stats)))
                if include_usage:
                    yield sse(reply.body([], chunk=True, usage=usage(job, value)))
                yield sse("[DONE]")
                return
        finally:
            job.cancelled.set()  # a no-op when finished; stops the generation when the client went away

    @app.get("/health")
    async def health() -> JSONResponse:
        if worker.state != "ready" or worker.loaded is None:
            detail = {"error": worker.error} if worker.error else {}
            return JSONResponse({"status": worker.state, **detail}, status_code=503)
        loaded = worker.loaded
        return JSONResponse({
            "status": "ok", "model": model_name, "kind": loaded.kind, "context": loaded.model.config.seq_len,
            "load_seconds": round(worker.load_seconds, 3), "queued": worker.queued, "max_queue": limits.max_queue,
            **asdict(worker.counts),
        })

    @app.get("/metrics")
    async def scrape() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str) -> dict[str, Any]:
        if model_id != model_name:
            raise APIError(404, f"the model {model_id!r} does not exist", type="not_found_error", param="model",
                           code="model_not_found")
        return model_card()

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        tokenizer = ready_model().tokenizer
        if isinstance(body.prompt, list) and body.prompt and isinstance(body.prompt[0], int):
            ids = list(body.prompt)  # token ids are taken as given (no BOS added)
            if any(not 0 <= token < tokenizer.vocab_size for token in ids):
                raise invalid(f"token ids must be in [0, {tokenizer.vocab_size})", param="prompt", code="invalid_value")
        else:
            text = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
            ids = [tokenizer.bos_id, *tokenizer.encode(text)]
        if not ids:
            raise invalid("the prompt is empty", param="prompt", code="invalid_value")
        job = make_job(body, ids, body.max_tokens, DEFAULT_COMPLETION_TOKENS, body.stops, "prompt")
        return await respond(job, Reply(chat=False, model=model_name), request, body.include_usage)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        tokenizer = ready_model().tokenizer
        document = template.render([(message.template_role, message.text) for message in body.messages])
        ids = [tokenizer.bos_id, *tokenizer.encode(document)]
        tokens_param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        job = make_job(body, ids, body.token_limit, limits.max_tokens_cap, (template.turn_end, *body.stops),
                       "messages", tokens_param)
        return await respond(job, Reply(chat=True, model=model_name), request, body.include_usage)

    return app


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything is loaded (port 0: any free port)."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
    except OSError as error:
        raise UserError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.set_inheritable(True)
    return sock


def run_server(app: FastAPI, sock: socket.socket, *, access_log: bool = False) -> None:
    """Serve until Ctrl-C; a model that fails to load stops the server (the caller reads `app.state.worker`)."""
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=access_log, timeout_graceful_shutdown=5))
    worker: ModelWorker = app.state.worker
    report_failure = worker.on_failed

    def stop_on_failure(failed: ModelWorker) -> None:
        if report_failure is not None:
            report_failure(failed)
        server.should_exit = True

    worker.on_failed = stop_on_failure
    server.run(sockets=[sock])
