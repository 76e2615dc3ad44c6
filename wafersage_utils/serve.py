"""Serve an exported model behind an OpenAI-compatible endpoint (the request and response format vLLM uses).

    wafersage-serve results/default --model sft            # the run folder's SFT (or rl) model
    wafersage-serve path/to/merged --image-root data/       # any exported folder; local images under data/
    python -m wafersage_utils.serve ...                      # the same, as a module

Routes: `GET /v1/models`, `POST /v1/chat/completions` (text and `image_url` content parts; images as data
URLs, or local paths inside `--image-root`; `max_tokens`/`max_completion_tokens`, `temperature`, `top_p`,
`stop`, `stream` with server-sent events and `stream_options.include_usage`), `GET /health`.

How it works: HTTP handlers (FastAPI on uvicorn) validate a request, decode its images and put it on a
bounded queue. One generation thread owns the model: it takes up to `batch_size` waiting requests with the
same sampling settings (waiting up to `batch_wait_ms` for a batch to fill), generates them together with
left padding, and hands each row its tokens as they come (streaming) until that row meets its own end of
sequence, `max_tokens` or stop string; the batch ends when every row has. Past the queue's bound a request
gets 429 at once; while the server shuts down, 503.

Safe by default: binds 127.0.0.1; remote image URLs are refused unless `--allow-remote-images`; local paths
are refused unless inside `--image-root` (symbolic links resolved first); request bodies, images per
request, pixels per image (checked from the header, before decoding: decompression bombs never inflate) and
`max_tokens` are bounded. Every refusal is a 4xx with an OpenAI-style JSON error body
(`{"error": {"message", "type", "param", "code"}}`), and every request writes one log line (status,
latency, queue wait, tokens).

Not supported, with a 400 rather than silently: `n` above 1, `tools`, logprobs. Accepted but not enforced:
`response_format` (vLLM constrains decoding to JSON; here the caller parses and repairs, as the pipeline
does), and `seed` for sampled requests (rows of a batch share one random stream).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import io
import ipaddress
import json
import logging
import socket
import threading
import time
import uuid
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import Request  # at module level: FastAPI resolves the handlers' annotations from here
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .hf_chat import model_fingerprint

log = logging.getLogger("wafersage.serve")


@dataclass(frozen=True)
class ServeConfig:
    """Everything the server is started with (the command's options)."""

    model_path: str
    served_model_name: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    batch_size: int = 8  # requests generated together
    batch_wait_ms: float = 10.0  # how long the first waiting request waits for others to join its batch
    max_queue: int = 64  # requests waiting beyond the running batch; past it, 429
    max_tokens_limit: int = 1024  # largest max_tokens accepted
    default_max_tokens: int = 256  # when a request names none
    max_request_bytes: int = 16 << 20  # request body
    max_images: int = 4  # images per request
    max_image_pixels: int = 4096 * 4096  # width x height per image, read from the header before decoding
    max_image_bytes: int = 8 << 20  # encoded size per image (data URL, file or download)
    image_root: str = ""  # local image paths are allowed only inside this folder ('' refuses them all)
    allow_remote_images: bool = False  # http(s) image URLs
    remote_timeout_s: float = 10.0
    device: str = ""  # '' picks cuda when present
    n_threads: int = 0  # torch threads (0 leaves torch's default)


class RequestError(Exception):
    """A refusal: HTTP status and an OpenAI-style error."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code or self.status}}


# ---------------------------------------------------------------- the request format

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageURL(_Strict):
    url: str
    detail: str | None = None


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart | ImagePart] | None = None
    name: str | None = None


class ChatRequest(BaseModel):
    """The chat-completions fields this server honours; unknown fields are ignored, as vLLM does."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = 1
    stream: bool = False
    stream_options: dict | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    response_format: dict | None = None
    logprobs: bool | None = None
    tools: list | None = None


def parse_request(raw: bytes) -> ChatRequest:
    """The body as a ChatRequest, or a 400 naming the first field that is wrong."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"request body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise RequestError(400, f"request body must be a JSON object, got {type(data).__name__}")
    try:
        req = ChatRequest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise RequestError(400, f"{where}: {err['msg']} (got {str(err.get('input'))[:80]!r})", param=where) from exc
    if req.n != 1:
        raise RequestError(400, f"n={req.n}: this server returns one choice per request", param="n")
    if req.tools:
        raise RequestError(400, "tools are not supported by this server", param="tools")
    if req.logprobs:
        raise RequestError(400, "logprobs are not supported by this server", param="logprobs")
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > 4 or any(not s for s in stops):
        raise RequestError(400, "stop: up to 4 non-empty strings", param="stop")
    return req


# ---------------------------------------------------------------- images

def _open_checked(data: bytes, what: str, cfg: ServeConfig):
    """A decoded RGB image, after checking its size from the header (a bomb is refused before it inflates)."""
    from PIL import Image, UnidentifiedImageError
    if len(data) > cfg.max_image_bytes:
        raise RequestError(413, f"{what}: {len(data)} bytes, above the limit of {cfg.max_image_bytes}", code="image_too_large")
    try:
        with warnings.catch_warnings():  # our own pixel limit, checked next, is the stricter one
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
        w, h = im.size
        if w * h > cfg.max_image_pixels:
            raise RequestError(400, f"{what}: {w} x {h} = {w * h} pixels, above the limit of {cfg.max_image_pixels}",
                               code="image_too_large")
        im.load()
        return im.convert("RGB")
    except RequestError:
        raise
    except Image.DecompressionBombError as exc:
        raise RequestError(400, f"{what}: refused as a decompression bomb ({exc})", code="image_too_large") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise RequestError(400, f"{what}: not a readable image ({type(exc).__name__}: {exc})", code="invalid_image") from exc


def _remote_host_allowed(url: str) -> str:
    """The address a remote fetch may connect to: the host's first resolved address, provided no address it
    resolves to is loopback, link-local or private (the server's own neighbourhood)."""
    from urllib.parse import urlparse
    host = urlparse(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        raise RequestError(400, f"image URL host {host!r} does not resolve", code="invalid_image") from exc
    for info in infos:
        addr = ipaddress.ip_address(info[4][0])
        if addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_reserved:
            raise RequestError(400, f"image URL host {host!r} is a private address ({addr}); refused",
                               code="image_url_refused")
    return infos[0][4][0]


def load_image(url: str, cfg: ServeConfig, what: str = "image"):
    """An image from a data URL, a local path (or file:// URL) inside the image root, or, when allowed, http(s)."""
    if url.startswith("data:"):
        head, _, payload = url.partition(",")
        if ";base64" not in head:
            raise RequestError(400, f"{what}: data URLs must be base64 (data:image/png;base64,...)", code="invalid_image")
        if len(payload) > cfg.max_image_bytes * 4 // 3 + 4:
            raise RequestError(413, f"{what}: data URL above the limit of {cfg.max_image_bytes} bytes", code="image_too_large")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RequestError(400, f"{what}: data URL is not valid base64 ({exc})", code="invalid_image") from exc
        return _open_checked(data, what, cfg)
    if url.startswith(("http://", "https://")):
        if not cfg.allow_remote_images:
            raise RequestError(400, f"{what}: remote image URLs are refused; send a data URL, or start the server "
                                    "with --allow-remote-images", code="image_url_refused")
        return _open_checked(_download(url, cfg, what), what, cfg)
    path_text = url.removeprefix("file://")
    if "://" in path_text:
        raise RequestError(400, f"{what}: unsupported URL scheme in {url[:40]!r}", code="invalid_image")
    if not cfg.image_root:
        raise RequestError(400, f"{what}: local image paths are refused; start the server with --image-root DIR "
                                "to allow paths inside DIR, or send a data URL", code="image_path_refused")
    root = Path(cfg.image_root).resolve()
    path = Path(path_text)
    path = (path if path.is_absolute() else root / path).resolve()
    if not path.is_relative_to(root):
        raise RequestError(403, f"{what}: {path_text!r} is outside the allowed image folder", code="image_path_refused")
    if not path.is_file():
        raise RequestError(400, f"{what}: no file {path_text!r} in the allowed image folder", code="invalid_image")
    if path.stat().st_size > cfg.max_image_bytes:
        raise RequestError(413, f"{what}: {path_text!r} is above the limit of {cfg.max_image_bytes} bytes",
                           code="image_too_large")
    return _open_checked(path.read_bytes(), what, cfg)


def _download(url: str, cfg: ServeConfig, what: str, transport=None) -> bytes:
    """GET `url` from the address that was checked: the connection goes to that address, with the URL's host
    as Host header and TLS server name, so a second DNS answer (DNS rebinding) cannot redirect it inward."""
    import httpx
    address = _remote_host_allowed(url)
    target = httpx.URL(url)
    pinned = target.copy_with(host=address)  # httpx brackets an IPv6 address itself
    headers = {"Host": target.netloc.decode("ascii")}
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    try:
        with httpx.Client(timeout=cfg.remote_timeout_s, follow_redirects=False, transport=transport) as client:
            request = client.build_request("GET", pinned, headers=headers, extensions=extensions)
            resp = client.send(request, stream=True)
            try:
                if resp.status_code != 200:
                    raise RequestError(400, f"{what}: {url[:80]} answered {resp.status_code}", code="invalid_image")
                buf = bytearray()
                for chunk in resp.iter_bytes():
                    buf += chunk
                    if len(buf) > cfg.max_image_bytes:
                        raise RequestError(413, f"{what}: download above {cfg.max_image_bytes} bytes",
                                           code="image_too_large")
                return bytes(buf)
            finally:
                resp.close()
    except httpx.HTTPError as exc:
        raise RequestError(400, f"{what}: download failed ({type(exc).__name__}: {exc})", code="invalid_image") from exc


def to_conversation(req: ChatRequest, cfg: ServeConfig) -> tuple[list[dict], list]:
    """transformers chat messages and the decoded images, in order."""
    convo, images = [], []
    for i, m in enumerate(req.messages):
        parts = [TextPart(type="text", text=m.content or "")] if not isinstance(m.content, list) else m.content
        items = []
        for j, part in enumerate(parts):
            if isinstance(part, ImagePart):
                if len(images) == cfg.max_images:
                    raise RequestError(400, f"more than {cfg.max_images} images in one request", param="messages")
                images.append(load_image(part.image_url.url, cfg, what=f"messages.{i}.content.{j}.image_url"))
                items.append({"type": "image"})
            else:
                items.append({"type": "text", "text": part.text})
        convo.append({"role": m.role, "content": items})
    return convo, images


# ---------------------------------------------------------------- generation

@dataclass
class Job:
    """One accepted request on its way through the queue and a batch."""

    conversation: list[dict]
    images: list
    max_tokens: int
    temperature: float
    top_p: float
    stops: list[str]
    emit: Any  # callable(event): ('delta', text) | ('done', finish_reason, usage, text) | ('error', status, message)
    stream: bool = False  # deltas are sent only to streamed requests
    enqueued: float = field(default_factory=time.perf_counter)
    started: float = 0.0
    cancelled: bool = False

    @property
    def settings(self) -> tuple:
        """Requests batch together only with equal sampling settings (all greedy ones are equal)."""
        return (True, round(self.temperature, 4), round(self.top_p, 4)) if self.temperature > 0 else (False, 0.0, 1.0)


class QueueFull(Exception):
    pass


class _Row:
    """Incremental decoding of one batch row: its tokens, the text already sent, and whether it is finished."""

    def __init__(self, job: Job, tokenizer, eos: set[int]):
        self.job, self.tok, self.eos = job, tokenizer, eos
        self.ids: list[int] = []
        self.sent = ""
        self.final = ""  # the whole answer once finished (the non-streamed reply)
        self.finish: str | None = None
        self.hold = max((len(s) for s in job.stops), default=1) - 1

    def push(self, token: int) -> None:
        if self.finish:
            return
        if self.job.cancelled:
            self.finish = "cancelled"
            return
        self.ids.append(token)
        if token in self.eos:
            self.end("stop", self._text())
            return
        text = self._text()
        for s in self.job.stops:
            at = text.find(s)
            if at >= 0:
                self.end("stop", text[:at])
                return
        if len(self.ids) >= self.job.max_tokens:
            self.end("length", text)
            return
        if text.endswith("\ufffd"):  # a character split across tokens: wait for the rest
            return
        self._flush(text[:len(text) - self.hold] if self.hold else text)

    def _text(self) -> str:
        return self.tok.decode(self.ids, skip_special_tokens=True)

    def end(self, finish: str, text: str) -> None:
        self.finish, self.final = finish, text
        self._flush(text)

    def _flush(self, text: str) -> None:
        if len(text) > len(self.sent) and text.startswith(self.sent):
            if self.job.stream:
                self.job.emit(("delta", text[len(self.sent):]))
            self.sent = text


def _tracker_class():
    from transformers import StoppingCriteria

    class BatchTracker(StoppingCriteria):
        """Feeds each new token to its row and tells generate which rows are finished."""

        def __init__(self, rows: list[_Row]):
            self.rows = rows

        def __call__(self, input_ids, scores, **kwargs):
            import torch
            last = input_ids[:, -1].tolist()
            for row, tok in zip(self.rows, last):
                row.push(tok)
            return torch.tensor([r.finish is not None for r in self.rows], device=input_ids.device)
    return BatchTracker


class Engine:
    """The model, its processor and one generation thread fed by a bounded queue."""

    def __init__(self, cfg: ServeConfig):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor
        if cfg.n_threads:
            torch.set_num_threads(cfg.n_threads)
        self.cfg = cfg
        self.device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.processor = AutoProcessor.from_pretrained(cfg.model_path)
        self.processor.tokenizer.padding_side = "left"
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.model = AutoModelForImageTextToText.from_pretrained(cfg.model_path, dtype=dtype).to(self.device).eval()
        gen = self.model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.processor.tokenizer.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos])
        self.pad_id = self.processor.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = min(self.eos)
        self._pending: deque[Job] = deque()
        self._cv = threading.Condition()
        self._running = True
        self.stats = {"batches": 0, "rows": 0, "max_batch": 0}
        self._tracker = _tracker_class()
        self._thread = threading.Thread(target=self._loop, name="wafersage-generate", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._cv:
            if not self._running:
                raise RequestError(503, "the server is shutting down", kind="server_error", code="shutting_down")
            if len(self._pending) >= self.cfg.max_queue:
                raise QueueFull()
            self._pending.append(job)
            self._cv.notify()

    def queued(self) -> int:
        return len(self._pending)

    def stop(self) -> None:
        with self._cv:
            self._running = False
            left = list(self._pending)
            self._pending.clear()
            self._cv.notify_all()
        for job in left:
            job.emit(("error", 503, "the server shut down before this request was generated"))
        self._thread.join(timeout=30)

    def _take_batch(self) -> list[Job]:
        """The oldest waiting job and up to batch_size - 1 more with the same sampling settings."""
        with self._cv:
            while self._running and not self._pending:
                self._cv.wait(0.5)
            if not self._running:
                return []
            deadline = self._pending[0].enqueued + self.cfg.batch_wait_ms / 1000
            while self._running and len(self._pending) < self.cfg.batch_size:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cv.wait(left)
            if not self._pending:
                return []
            key = self._pending[0].settings
            batch = [j for j in self._pending if j.settings == key and not j.cancelled][: self.cfg.batch_size]
            dropped = [j for j in self._pending if j.cancelled]
            for j in batch + dropped:
                self._pending.remove(j)
            return batch

    def _loop(self) -> None:
        while self._running:
            batch = self._take_batch()
            if batch:
                try:
                    self._generate(batch)
                except Exception as exc:
                    log.exception("generation failed for a batch of %d", len(batch))
                    for job in batch:
                        job.emit(("error", 500, f"generation failed: {type(exc).__name__}: {exc}"))

    def _generate(self, batch: list[Job]) -> None:
        import torch
        now = time.perf_counter()
        for job in batch:
            job.started = now
        texts = self.processor.apply_chat_template([j.conversation for j in batch], add_generation_prompt=True,
                                                   tokenize=False)
        images = [im for j in batch for im in j.images]
        inputs = self.processor(text=texts, images=images or None, padding=True, return_tensors="pt").to(self.device)
        rows = [_Row(j, self.processor.tokenizer, self.eos) for j in batch]
        first = batch[0]
        sample = first.temperature > 0
        kwargs = dict(do_sample=sample, temperature=first.temperature if sample else None,
                      top_p=first.top_p if sample else None)
        with torch.inference_mode():
            self.model.generate(**inputs, max_new_tokens=max(j.max_tokens for j in batch), pad_token_id=self.pad_id,
                                stopping_criteria=[self._tracker(rows)], **kwargs)
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        self.stats["batches"] += 1
        self.stats["rows"] += len(batch)
        self.stats["max_batch"] = max(self.stats["max_batch"], len(batch))
        for row, n_prompt in zip(rows, prompt_tokens):
            if row.finish is None:  # generate stopped on its own length limit
                row.end("length", row._text())
            usage = {"prompt_tokens": int(n_prompt), "completion_tokens": len(row.ids),
                     "total_tokens": int(n_prompt) + len(row.ids)}
            row.job.emit(("done", "stop" if row.finish == "cancelled" else row.finish, usage, row.final or row.sent))


# ---------------------------------------------------------------- HTTP

def _emit_threadsafe(loop, events: asyncio.Queue, event: tuple) -> None:
    """Hand an event from the generation thread to the request's coroutine (dropped if the loop is gone)."""
    try:
        loop.call_soon_threadsafe(events.put_nowait, event)
    except RuntimeError:  # the event loop closed: the server is shutting down
        pass


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


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
                 (time.perf_counter() - started) * 1000, err.message)
        headers = {"Retry-After": "1"} if err.status in (429, 503) else None
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):  # unknown routes and methods: the same JSON error shape
        return JSONResponse(RequestError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code)

    @app.get("/health")
    async def health():
        return {"status": "ok", "queued": app.state.engine.queued()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "wafersage",
                                            "root": str(cfg.model_path), "max_tokens_limit": cfg.max_tokens_limit}]}

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
        try:
            req = parse_request(await read_body(request))
            if req.model != name:
                raise RequestError(404, f"The model `{req.model}` does not exist; this server serves `{name}`",
                                   param="model", code="model_not_found", kind="NotFoundError")
            max_tokens = req.max_completion_tokens or req.max_tokens or min(cfg.default_max_tokens, cfg.max_tokens_limit)
            if max_tokens > cfg.max_tokens_limit:
                raise RequestError(400, f"max_tokens={max_tokens} is above this server's limit of {cfg.max_tokens_limit}",
                                   param="max_tokens")
            conversation, images = await run_in_threadpool(to_conversation, req, cfg)
        except RequestError as err:
            return refuse(err, started, rid)

        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        job = Job(conversation, images, max_tokens, float(1.0 if req.temperature is None else req.temperature),
                  float(req.top_p or 1.0), [req.stop] if isinstance(req.stop, str) else list(req.stop or []),
                  emit=lambda ev: _emit_threadsafe(loop, events, ev), stream=req.stream)
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
                     "finish=%s", rid, status, req.stream, (time.perf_counter() - started) * 1000,
                     ((job.started or time.perf_counter()) - job.enqueued) * 1000, usage.get("prompt_tokens", 0),
                     usage.get("completion_tokens", 0), finish)

        if not req.stream:
            while True:
                ev = await events.get()
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


# ---------------------------------------------------------------- entry points

def resolve_model(path: str, which: str = "sft") -> tuple[str, str]:
    """(model folder, default served name) for an exported folder or a run folder's `which` model."""
    p = Path(path)
    if (p / "config.json").exists():
        return str(p), (p.parent.name if p.name == "merged" else p.name)
    candidate = p / "models" / which / "merged"
    if (candidate / "config.json").exists():
        return str(candidate), f"{p.name}-{which}"
    if p.exists() and (p / "models").is_dir():
        have = sorted(d.name for d in (p / "models").iterdir() if (d / "merged" / "config.json").exists())
        raise FileNotFoundError(f"{p}: no exported {which!r} model (models/{which}/merged/config.json); "
                                f"this run has {have or 'none'}")
    raise FileNotFoundError(f"{path}: neither a model folder (config.json) nor a run folder (models/<name>/merged)")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket; port 0 picks a free one (read it back from getsockname)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


class BackgroundServer:
    """The server on a thread of this process (tests, notebooks, benchmarks): `url` is its /v1 base."""

    def __init__(self, cfg: ServeConfig, engine: Engine | None = None):
        import uvicorn
        self.sock = bind_socket(cfg.host, cfg.port)
        port = self.sock.getsockname()[1]
        self.url = f"http://{cfg.host}:{port}/v1"
        self.app = create_app(cfg, engine)
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.time() + 600
        while not self.server.started:
            if not self.thread.is_alive() or time.time() > deadline:
                raise RuntimeError("the server did not start (see the log above)")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
        self.sock.close()


def build_parser() -> argparse.ArgumentParser:
    d = ServeConfig(model_path="")
    p = argparse.ArgumentParser(prog="wafersage-serve", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help="an exported model folder (config.json inside) or a run folder (results/<run>)")
    p.add_argument("--model", dest="which", default="sft", help="which model of a run folder: sft or rl")
    p.add_argument("--served-model-name", default="", help="the name clients send (default: from the folder)")
    p.add_argument("--host", default=d.host, help="address to bind; anything but loopback exposes the model")
    p.add_argument("--port", type=int, default=d.port, help="port (0 picks a free one, printed at start)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="requests generated together")
    p.add_argument("--batch-wait-ms", type=float, default=d.batch_wait_ms, help="wait for a batch to fill")
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="waiting requests before 429")
    p.add_argument("--max-tokens-limit", type=int, default=d.max_tokens_limit, help="largest max_tokens accepted")
    p.add_argument("--default-max-tokens", type=int, default=d.default_max_tokens, help="when a request names none")
    p.add_argument("--max-request-mb", type=float, default=d.max_request_bytes / 2**20, help="request body limit")
    p.add_argument("--max-images", type=int, default=d.max_images, help="images per request")
    p.add_argument("--max-image-pixels", type=int, default=d.max_image_pixels, help="width x height per image")
    p.add_argument("--image-root", default="", help="folder whose files requests may name as local image paths")
    p.add_argument("--allow-remote-images", action="store_true", help="fetch http(s) image URLs (public hosts only)")
    p.add_argument("--device", default="", help="cpu, cuda, cuda:1 (default: cuda when present)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return p


def main(argv: list[str] | None = None) -> None:
    import uvicorn
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        path, default_name = resolve_model(args.model, args.which)
    except FileNotFoundError as exc:
        raise SystemExit(f"wafersage-serve: {exc}") from None
    cfg = ServeConfig(model_path=path, served_model_name=args.served_model_name or default_name, host=args.host,
                      port=args.port, batch_size=max(1, args.batch_size), batch_wait_ms=args.batch_wait_ms,
                      max_queue=max(0, args.max_queue), max_tokens_limit=args.max_tokens_limit,
                      default_max_tokens=args.default_max_tokens, max_request_bytes=int(args.max_request_mb * 2**20),
                      max_images=args.max_images, max_image_pixels=args.max_image_pixels, image_root=args.image_root,
                      allow_remote_images=args.allow_remote_images, device=args.device, n_threads=args.threads)
    try:
        loopback = all(ipaddress.ip_address(i[4][0]).is_loopback for i in socket.getaddrinfo(cfg.host, None))
    except (socket.gaierror, ValueError):
        loopback = False
    if not loopback:
        log.warning("binding %s: the model is reachable from other machines, without authentication", cfg.host)
    sock = bind_socket(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]
    server = uvicorn.Server(uvicorn.Config(create_app(cfg), log_level="warning", access_log=False, lifespan="on"))
    print(f"wafersage-serve: model {cfg.served_model_name!r} at http://{host}:{port}/v1 (Ctrl-C stops)", flush=True)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
