"""Calls to any OpenAI-compatible chat endpoint (vLLM, hosted APIs), with a disk cache that makes reruns free.

The official `openai` client does the transport: timeouts, and retries with exponential backoff (honouring
`Retry-After`) on timeouts, connection errors, 408, 409, 429 and 5xx. This module adds what a pipeline
needs around it:

- requests built from a system prompt, a user prompt and an optional PNG sent as a base64 data URL;
- a response cache on disk keyed by (image hash, prompts, model, sampling parameters), written as each
  answer arrives, so a rerun costs nothing and an interrupted run resumes where it stopped;
- concurrency (a thread pool), progress, and per-request errors that are returned, never raised, so one
  bad answer does not stop a stage. Malformed bodies (no choices, no text) are retried once more.

The base URL and the key are never part of the cache key: the same model behind another server answers
from the same cache. The key itself is read from an environment variable named by a parameter.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..runner.runs import atomic_write_text

log = logging.getLogger("wafersage.llm")
_THINK = re.compile(r"<think>.*?(</think>|$)", re.S)


@dataclass(frozen=True)
class ChatSettings:
    """Which endpoint and model, and how to sample."""

    model: str
    base_url: str = "http://localhost:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the key ('EMPTY' if unset: vLLM)
    temperature: float = 0.2
    top_k: int = 0  # sample from the k likeliest tokens only (0: every token); vLLM and the hf backend
    min_p: float = 0.0  # drop tokens below this share of the likeliest one (0: none dropped)
    max_tokens: int = 1024
    seed: int | None = 0
    timeout_s: float = 120.0  # per attempt
    max_retries: int = 4  # transport retries (timeouts, 429, 5xx) with exponential backoff
    malformed_retries: int = 1  # further attempts when a 200 answer has no usable text
    concurrency: int = 4  # requests in flight
    json_mode: bool = False  # ask for a JSON object (response_format)

    def sampling(self) -> dict:
        """The parameters that change an answer (part of the cache key)."""
        out = {"temperature": self.temperature, "max_tokens": self.max_tokens, "seed": self.seed}
        if self.top_k or self.min_p:  # OpenAI's own API knows neither: sent only when asked for
            out["extra_body"] = {"top_k": int(self.top_k), "min_p": float(self.min_p)}
        if self.json_mode:
            out["response_format"] = {"type": "json_object"}
        return out


@dataclass
class ChatResult:
    """One answer (text) or the reason there is none (error); cached answers cost no request."""

    text: str | None
    error: str | None = None
    cached: bool = False
    seconds: float = 0.0
    finish_reason: str | None = None
    usage: dict = field(default_factory=dict)


class MalformedResponse(ValueError):
    """A 200 answer without usable text."""


def image_data_url(png: bytes) -> str:
    """A PNG as a data URL, the form every OpenAI-compatible server accepts for images."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def build_request(settings: ChatSettings, system: str, user: str, png: bytes | None = None,
                  follow_up: list[dict] | None = None) -> dict:
    """Chat-completions request body: system message, then the image (if any) and the user text, then any
    further turns (a repair request: the model's answer and what was wrong with it)."""
    content: list[dict] = []
    if png is not None:
        content.append({"type": "image_url", "image_url": {"url": image_data_url(png)}})
    content.append({"type": "text", "text": user})
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    return {"model": settings.model, "messages": messages + list(follow_up or []), **settings.sampling()}


def truncation_of(request: dict) -> dict:
    """The request's top_k and min_p (0 when unset: sample from every token). They travel in `extra_body`,
    where the OpenAI client passes them on and vLLM's server reads them."""
    extra = request.get("extra_body") or {}
    return {"top_k": int(extra.get("top_k") or 0), "min_p": float(extra.get("min_p") or 0.0)}


def cache_key(request: dict) -> str:
    """Hash of a request with each image replaced by its own hash: (image, prompts, model, parameters)."""
    def strip(obj):
        if isinstance(obj, dict):
            return {k: (hashlib.sha256(v.encode()).hexdigest() if k == "url" and str(v).startswith("data:")
                        else strip(v)) for k, v in obj.items()}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj
    return hashlib.sha256(json.dumps(strip(request), sort_keys=True).encode()).hexdigest()[:32]


def parse_response(body) -> tuple[str, str | None, dict]:
    """Text, finish reason and token usage of a chat-completions body; MalformedResponse if there is no text
    or any part has the wrong JSON type (a server's bug must fail one item, never the batch).

    Accepts the string content of OpenAI and vLLM, and the list-of-parts content some servers return.
    """
    if not isinstance(body, dict):
        raise MalformedResponse(f"the answer is a JSON {type(body).__name__}, not an object")
    choices = body.get("choices")
    if not choices:
        raise MalformedResponse(f"no choices in the answer (keys: {sorted(map(str, body))[:12]})")
    if not isinstance(choices, list) or not isinstance(choices[0], dict):
        raise MalformedResponse(f"choices is a {type(choices).__name__} of "
                                f"{type(choices[0]).__name__ if isinstance(choices, list) else '?'}; "
                                "expected a list of objects")
    msg = choices[0].get("message")
    if msg is None:
        msg = {}
    if not isinstance(msg, dict):
        raise MalformedResponse(f"choices[0].message is a {type(msg).__name__}, not an object")
    content = msg.get("content")
    if isinstance(content, list):
        content = "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    if content is not None and not isinstance(content, str):
        raise MalformedResponse(f"message content is a {type(content).__name__}, not text")
    finish = choices[0].get("finish_reason")
    finish = finish if isinstance(finish, str) or finish is None else str(finish)
    if not content or not content.strip():
        refusal = msg.get("refusal")
        raise MalformedResponse(f"refused: {str(refusal)[:200]}" if refusal else
                                f"empty content (finish_reason {finish!r})")
    text = strip_reasoning(content)  # Qwen3 thinking models served without a reasoning parser
    if not text:
        raise MalformedResponse("only reasoning, no answer (raise max_tokens?)")
    usage = body.get("usage")
    usage = {str(k): v for k, v in usage.items() if isinstance(v, int | float) and not isinstance(v, bool)} \
        if isinstance(usage, dict) else {}  # a wrong-typed usage is dropped: the answer itself is fine
    return text, finish, usage


def strip_reasoning(text: str) -> str:
    """The answer without a leading <think>...</think> block (or an unfinished one)."""
    return _THINK.sub("", text).strip()


class ResponseCache:
    """One JSON file per answered request under folder/<2 hex>/<key>.json, written atomically.

    An entry that is not a record of an answer (torn, or valid JSON of the wrong shape) is a miss: the request
    is asked again and the entry rewritten. Temporary files left by a killed writer are swept when the cache
    is opened (only those older than `stale_s`, so another process's write in flight is left alone).
    """

    def __init__(self, folder: Path, stale_s: float = 600.0):
        self.folder = Path(folder)
        self.swept = self._sweep(stale_s)

    def _sweep(self, stale_s: float) -> int:
        if not self.folder.exists():
            return 0
        n, now = 0, time.time()
        for tmp in self.folder.glob("*/.*.json.*.tmp"):
            try:
                if now - tmp.stat().st_mtime > stale_s:
                    tmp.unlink()
                    n += 1
            except FileNotFoundError:
                pass
        if n:
            log.info("removed %d temporary file(s) left by an interrupted cache write in %s", n, self.folder)
        return n

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        path = self._path(key)
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):  # a torn or unreadable file: a miss
            log.warning("ignoring unreadable cache entry %s", path)
            return None
        if not (isinstance(record, dict) and isinstance(record.get("text"), str)
                and isinstance(record.get("finish_reason"), str | None)
                and isinstance(record.get("usage", {}), dict)):
            log.warning("ignoring cache entry of the wrong shape %s (expected an object with a text)", path)
            return None
        return record

    def put(self, key: str, record: dict) -> None:
        atomic_write_text(self._path(key), json.dumps(record, sort_keys=True))

    def __len__(self) -> int:
        return sum(1 for _ in self.folder.glob("*/*.json")) if self.folder.exists() else 0


class ChatClient:
    """Cached, concurrent chat completions against one OpenAI-compatible endpoint."""

    def __init__(self, settings: ChatSettings, cache_dir: Path):
        from openai import OpenAI
        self.settings = settings
        self.cache = ResponseCache(cache_dir)
        key = os.environ.get(settings.api_key_env) or "EMPTY"  # vLLM accepts any key unless started with one
        self._client = OpenAI(base_url=settings.base_url, api_key=key, timeout=settings.timeout_s,
                              max_retries=settings.max_retries)
        self.n_requests = 0  # attempts started by this client, not counting the client's own retries
        self._lock = threading.Lock()

    def _call(self, request: dict) -> ChatResult:
        from openai import APIError
        t0 = time.perf_counter()
        attempts = 1 + self.settings.malformed_retries
        error = "no attempt made"
        for _ in range(attempts):
            with self._lock:
                self.n_requests += 1
            try:
                raw = self._client.chat.completions.with_raw_response.create(**request)
                try:
                    body = json.loads(raw.http_response.text)
                except json.JSONDecodeError as exc:
                    raise MalformedResponse(f"body is not JSON ({exc.msg} at char {exc.pos})") from exc
                text, finish, usage = parse_response(body)
                return ChatResult(text, None, False, time.perf_counter() - t0, finish, usage)
            except MalformedResponse as exc:
                error = f"malformed response: {exc}"
            except APIError as exc:  # retries already spent by the client, or a 4xx that must not be retried
                status = getattr(exc, "status_code", None)
                return ChatResult(None, f"{type(exc).__name__}{f' {status}' if status else ''}: {exc}",
                                  False, time.perf_counter() - t0)
        return ChatResult(None, error, False, time.perf_counter() - t0)

    def complete(self, request: dict) -> ChatResult:
        """One request: from the cache if answered before, else from the server (cached on success). Never
        raises: anything that goes wrong with this one request is its result's error, so the batch goes on."""
        try:
            return self._complete(request)
        except Exception as exc:  # noqa: BLE001 — the contract is one item's error, never the batch's
            log.warning("request failed: %s: %s", type(exc).__name__, exc)
            return ChatResult(None, f"{type(exc).__name__}: {exc}")

    def _complete(self, request: dict) -> ChatResult:
        key = cache_key(request)
        hit = self.cache.get(key)
        if hit is not None:
            return ChatResult(hit["text"], None, True, 0.0, hit.get("finish_reason"), hit.get("usage", {}))
        res = self._call(request)
        if res.error is None:
            self.cache.put(key, {"text": res.text, "finish_reason": res.finish_reason, "usage": res.usage,
                                 "model": request.get("model"), "seconds": round(res.seconds, 3)})
        else:
            log.warning("request failed: %s", res.error)
        return res

    def complete_many(self, requests: list[dict], desc: str = "chat", progress: bool = True) -> list[ChatResult]:
        """Answers in request order; up to `concurrency` in flight, each cached the moment it arrives."""
        with ThreadPoolExecutor(max_workers=max(1, self.settings.concurrency)) as pool:
            return list(tqdm(pool.map(self.complete, requests), total=len(requests), desc=desc,
                             disable=not progress, mininterval=2.0))


def settings_record(settings: ChatSettings) -> dict:
    """Settings as saved with a run's metrics (never the key itself)."""
    return asdict(settings)
