"""The HTTP app (FastAPI): routes, validation, streaming with server-sent events, and one log line per request."""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from pathlib import Path

from fastapi import Request  # at module level: FastAPI resolves the handlers' annotations from here

from ..chat.hf_chat import model_fingerprint
from .engine import Engine, Job, QueueFull
from .images import to_conversation
from .schema import RequestError, ServeConfig, parse_request

log = logging.getLogger("wafersage.serve")
GREEDY_BELOW = 1e-5  # temperatures under this sample greedily


def _emit_threadsafe(loop, events: asyncio.Queue, event: tuple) -> None:
    """Hand an event from the generation thread to the request's coroutine (dropped if the loop is gone)."""
    try:
        loop.call_soon_threadsafe(events.put_nowait, event)
    except RuntimeError:  # the event loop closed: the server is shutting down
        pass


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def printable(text: str, limit: int = 300) -> str:
    """A string safe to put in one log line: control characters (newlines above all, which would let a
    request forge log lines) escaped, and cut to `limit` characters."""
    text = str(text)[:limit]
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def prepare(req, cfg: ServeConfig, engine: Engine) -> tuple[list[dict], list, int, object]:
    """Admission of one request, alone (a worker thread): its images decoded, checked and cut to what the model
    sees, then its prompt built and counted. (conversation, images, pixels held, the processor's tensors)."""
    with engine.admission:  # a few requests decode their images at a time: decoding memory stays bounded too
        conversation, images = to_conversation(req, cfg)
        images = [engine.fit_image(im) for im in images]
        inputs = engine.admit(conversation, images)
    return conversation, images, sum(im.width * im.height for im in images), inputs


def create_app(cfg: ServeConfig, engine: Engine | None = None):
    """The FastAPI application; `engine` is loaded from cfg.model_path unless given."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    name = cfg.served_model_name or Path(cfg.model_path).name
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app):
        app.state.engine = engine or Engine(cfg)
        log.info("serving %s (%s) on %s, batch %d, queue %d", name, model_fingerprint(cfg.model_path),
                 app.state.engine.device, cfg.batch_size, cfg.max_queue)
        yield
        app.state.engine.stop()

    app = FastAPI(title="WaferSAGE OpenAI-compatible server", lifespan=lifespan)

    def refuse(err: RequestError, started: float, rid: str = "-") -> JSONResponse:
        log.info("chat %s status=%d latency_ms=%.0f refused: %s", rid, err.status,
                 (time.perf_counter() - started) * 1000, printable(err.message))
        headers = {"Retry-After": "1"} if err.status in (429, 503) else None
        if err.status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):  # unknown routes and methods: the same JSON error shape
        return JSONResponse(RequestError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request, exc):  # anything unforeseen: still JSON, never a traceback or a plain 500
        log.exception("unhandled error on %s %s", request.method, printable(request.url.path))
        return JSONResponse(RequestError(500, "internal server error", kind="server_error").body(), status_code=500)

    def unauthorized(request: Request) -> JSONResponse | None:
        """With an API key configured, every /v1 route needs `Authorization: Bearer <key>` (OpenAI's convention);
        /health stays open for load balancers. (A check in each route, not an HTTP middleware: Starlette's
        middleware wrapper hides a client's disconnect from the route.)"""
        if not cfg.api_key:
            return None
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), cfg.api_key.encode()):
            return None
        return refuse(RequestError(401, "missing or wrong API key: send `Authorization: Bearer <key>`",
                                   kind="authentication_error", code="invalid_api_key"), time.perf_counter())

    @app.get("/health")
    async def health():
        return {"status": "ok", "queued": app.state.engine.queued()}

    @app.get("/v1/models")
    async def models(request: Request):  # the served name only: the folder it was loaded from is the operator's
        if (denied := unauthorized(request)) is not None:
            return denied
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "wafersage",
                                            "root": name, "max_tokens_limit": cfg.max_tokens_limit}]}

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cfg.max_request_bytes:
            raise RequestError(413, f"request body of {declared} bytes is above the limit of {cfg.max_request_bytes}",
                               code="request_too_large")
        buf = bytearray()
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > cfg.max_request_bytes:
                raise RequestError(413, f"request body above the limit of {cfg.max_request_bytes} bytes",
                                   code="request_too_large")
        return bytes(buf)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        from starlette.concurrency import run_in_threadpool
        started, rid = time.perf_counter(), _completion_id()
        if (denied := unauthorized(request)) is not None:
            return denied
        try:
            req = parse_request(await read_body(request))
            if req.model != name:
                raise RequestError(404, f"The model `{req.model}` does not exist; this server serves `{name}`",
                                   param="model", code="model_not_found", kind="NotFoundError")
            max_tokens = req.max_completion_tokens or req.max_tokens or min(cfg.default_max_tokens, cfg.max_tokens_limit)
            if max_tokens > cfg.max_tokens_limit:
                raise RequestError(400, f"max_tokens={max_tokens} is above this server's limit of {cfg.max_tokens_limit}",
                                   param="max_tokens")
            conversation, images, pixels, inputs = await run_in_threadpool(prepare, req, cfg, app.state.engine)
        except RequestError as err:
            return refuse(err, started, rid)

        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        temperature = float(1.0 if req.temperature is None else req.temperature)
        if temperature < GREEDY_BELOW:  # as vLLM: a vanishing temperature is greedy (dividing by it overflows)
            temperature = 0.0
        job = Job(conversation, images, max_tokens, temperature,
                  float(req.top_p or 1.0), [req.stop] if isinstance(req.stop, str) else list(req.stop or []),
                  emit=lambda ev: _emit_threadsafe(loop, events, ev), stream=req.stream, pixels=pixels, inputs=inputs)
        try:
            app.state.engine.submit(job)
        except QueueFull:
            return refuse(RequestError(429, f"the server is at capacity ({cfg.batch_size} generating, "
                                            f"{cfg.max_queue} queued); retry later", kind="rate_limit_error",
                                       code="queue_full"), started, rid)
        except RequestError as err:
            return refuse(err, started, rid)

        def log_done(status: int, finish: str, usage: dict) -> None:
            log.info("chat %s status=%d stream=%s latency_ms=%.0f queue_ms=%.0f prompt_tokens=%s completion_tokens=%s "
                     "finish=%s", rid, status, bool(req.stream), (time.perf_counter() - started) * 1000,
                     ((job.started or time.perf_counter()) - job.enqueued) * 1000, usage.get("prompt_tokens", 0),
                     usage.get("completion_tokens", 0), finish)

        if not req.stream:
            while True:
                try:
                    ev = await asyncio.wait_for(events.get(), timeout=0.1)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():  # the caller gave up: free its place in the batch
                        job.cancelled = True
                        log_done(499, "cancelled", {})
                        return JSONResponse(RequestError(499, "client closed the request").body(), status_code=499)
                    continue
                if ev[0] == "error":
                    log_done(ev[1], "error", {})
                    return JSONResponse(RequestError(ev[1], ev[2], kind="server_error").body(), status_code=ev[1])
                _, finish, usage, text = ev
                log_done(200, finish, usage)
                return JSONResponse({
                    "id": rid, "object": "chat.completion", "created": int(time.time()), "model": name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                                 "finish_reason": finish}],
                    "usage": usage})

        include_usage = bool((req.stream_options or {}).get("include_usage"))

        def chunk(delta: dict, finish: str | None = None, usage: dict | None = None, choices: bool = True) -> str:
            body = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": name,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else []}
            if usage is not None:
                body["usage"] = usage
            return f"data: {json.dumps(body)}\n\n"

        async def stream():
            try:
                yield chunk({"role": "assistant", "content": ""})
                while True:
                    ev = await events.get()
                    if ev[0] == "delta":
                        yield chunk({"content": ev[1]})
                    elif ev[0] == "error":
                        log_done(ev[1], "error", {})
                        yield f"data: {json.dumps(RequestError(ev[1], ev[2], kind='server_error').body())}\n\n"
                        break
                    else:
                        _, finish, usage, _ = ev
                        log_done(200, finish, usage)
                        yield chunk({}, finish)
                        if include_usage:
                            yield chunk({}, usage=usage, choices=False)
                        break
                yield "data: [DONE]\n\n"
            finally:  # the client went away: its row stops at the next token
                job.cancelled = True

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app
