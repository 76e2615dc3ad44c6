"""Serve an exported model behind an OpenAI-compatible endpoint (the request and response format vLLM uses).

    wafersage-serve results/default --model sft            # the run folder's SFT (or rl) model
    wafersage-serve path/to/merged --image-root data/       # any exported folder; local images under data/
    python -m wafersage_utils.serving ...                      # the same, as a module

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
import ipaddress
import logging
import os
import socket
import threading
import time
from pathlib import Path

from .app import create_app
from .engine import Engine
from .schema import ServeConfig

log = logging.getLogger("wafersage.serve")


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
    p.add_argument("--max-prompt-tokens", type=int, default=d.max_prompt_tokens,
                   help="prompt tokens per request (text and image tokens), counted on admission")
    p.add_argument("--max-held-image-mpixels", type=float, default=d.max_held_image_pixels / 2**20,
                   help="decoded image megapixels held by all waiting requests together; past it, 429")
    p.add_argument("--remote-timeout-s", type=float, default=d.remote_timeout_s,
                   help="the whole download of one remote image")
    p.add_argument("--api-key-env", default="",
                   help="environment variable holding an API key that every /v1 request must send as "
                        "`Authorization: Bearer <key>`; required when --host is not a loopback address")
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
    api_key = ""
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env, "").strip()
        if not api_key:
            raise SystemExit(f"wafersage-serve: --api-key-env {args.api_key_env}: that environment variable is "
                             "empty or unset")
    try:
        loopback = all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback
                       for i in socket.getaddrinfo(args.host, None))
    except (socket.gaierror, ValueError):
        loopback = False
    if not loopback and not api_key:
        raise SystemExit(f"wafersage-serve: --host {args.host} is reachable from other machines; give "
                         "--api-key-env NAME (clients then send `Authorization: Bearer <key>`), or bind 127.0.0.1")
    cfg = ServeConfig(model_path=path, served_model_name=args.served_model_name or default_name, host=args.host,
                      port=args.port, batch_size=max(1, args.batch_size), batch_wait_ms=args.batch_wait_ms,
                      max_queue=max(0, args.max_queue), max_tokens_limit=args.max_tokens_limit,
                      default_max_tokens=args.default_max_tokens, max_request_bytes=int(args.max_request_mb * 2**20),
                      max_images=args.max_images, max_image_pixels=args.max_image_pixels, image_root=args.image_root,
                      allow_remote_images=args.allow_remote_images, device=args.device, n_threads=args.threads,
                      max_prompt_tokens=args.max_prompt_tokens,
                      max_held_image_pixels=int(args.max_held_image_mpixels * 2**20),
                      remote_timeout_s=args.remote_timeout_s, api_key=api_key)
    sock = bind_socket(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]
    server = uvicorn.Server(uvicorn.Config(create_app(cfg), log_level="warning", access_log=False, lifespan="on"))
    print(f"wafersage-serve: model {cfg.served_model_name!r} at http://{host}:{port}/v1 (Ctrl-C stops)", flush=True)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
