"""The request format of the endpoint (OpenAI chat completions, as vLLM takes it), the server's settings and
its refusals."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


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
    max_prompt_tokens: int = 4096  # prompt tokens of one request (text and image tokens), counted on admission
    max_images: int = 4  # images per request
    max_image_pixels: int = 4096 * 4096  # width x height per image, read from the header before decoding
    max_image_bytes: int = 8 << 20  # encoded size per image (data URL, file or download)
    max_held_image_pixels: int = 64 << 20  # decoded image pixels held by all admitted, unfinished requests; past it, 429
    admission_slots: int = 4  # requests decoding and tokenising at once (each may decode max_images images of max_image_pixels)
    image_root: str = ""  # local image paths are allowed only inside this folder ('' refuses them all)
    allow_remote_images: bool = False  # http(s) image URLs
    remote_timeout_s: float = 10.0  # the whole download of one remote image (connect, headers and body)
    api_key: str = ""  # when set, every /v1 request must carry `Authorization: Bearer <key>` (never logged)
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
