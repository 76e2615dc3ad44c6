"""Images named by a request: data URLs, local paths inside the image root, and (when allowed) public remote URLs,
each size-checked before decoding, and the request turned into the chat template's conversation."""
from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import socket
import time
import warnings
from pathlib import Path

from .schema import ChatRequest, ImagePart, RequestError, ServeConfig, TextPart


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
    """The address a remote fetch may connect to: the host's first resolved address, provided every address it
    resolves to is globally routable (the standard library's classification: no loopback, private, link-local,
    shared, reserved, documentation or multicast address; an IPv4-mapped IPv6 address is judged as IPv4)."""
    from urllib.parse import urlparse
    host = urlparse(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError) as exc:
        raise RequestError(400, f"image URL host {host!r} does not resolve", code="invalid_image") from exc
    if not infos:
        raise RequestError(400, f"image URL host {host!r} does not resolve", code="invalid_image")
    for info in infos:
        addr = ipaddress.ip_address(info[4][0].split("%")[0])
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if not addr.is_global or addr.is_multicast:
            raise RequestError(400, f"image URL host {host!r} resolves to {addr}, which is not a public (globally "
                                    "routable) address; refused", code="image_url_refused")
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
        return _open_checked(download(url, cfg, what), what, cfg)
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


def download(url: str, cfg: ServeConfig, what: str, transport=None) -> bytes:
    """GET `url` from the address that was checked: the connection goes to that address, with the URL's host
    as Host header and TLS server name, so a second DNS answer (DNS rebinding) cannot redirect it inward."""
    import httpx
    deadline = time.monotonic() + cfg.remote_timeout_s
    address = _remote_host_allowed(url)
    target = httpx.URL(url)
    pinned = target.copy_with(host=address)  # httpx brackets an IPv6 address itself
    headers = {"Host": target.netloc.decode("ascii")}
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    def left() -> float:  # the whole download shares one budget: a server that drips bytes cannot hold us
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RequestError(400, f"{what}: download took longer than {cfg.remote_timeout_s:g} s",
                               code="image_timeout")
        return remaining
    try:
        # each connect or read may block a quarter of the budget at most, so the whole download ends within
        # 1.25 x remote_timeout_s however the server paces its bytes
        step = min(left(), max(0.25, cfg.remote_timeout_s / 4))
        with httpx.Client(timeout=step, follow_redirects=False, transport=transport) as client:
            request = client.build_request("GET", pinned, headers=headers, extensions=extensions)
            resp = client.send(request, stream=True)
            try:
                if resp.status_code != 200:
                    raise RequestError(400, f"{what}: {url[:80]} answered {resp.status_code}", code="invalid_image")
                buf = bytearray()
                for chunk in resp.iter_bytes():
                    left()
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
    n_images = sum(isinstance(part, ImagePart) for m in req.messages if isinstance(m.content, list) for part in m.content)
    if n_images > cfg.max_images:  # counted before any image is fetched or decoded
        raise RequestError(400, f"more than {cfg.max_images} images in one request ({n_images})", param="messages")
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
