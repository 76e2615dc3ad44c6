"""The `hf` backend: a local transformers VLM (a path or hub name) answering OpenAI-format chat requests.

Requests are the same dicts the remote client sends (:func:`.llm.build_request`); images arrive as PNG data
URLs and are decoded back. Answers are greedy (or sampled at the request's temperature), generated in
batches (greedy ones leave their batch when they end: :mod:`.decoding`; a picture that several questions of
a batch show is decoded, processed and encoded once), and cached on disk under the same
keys as remote answers, with the model named by its path and a fingerprint of its config and weight files, so
retraining into the same folder does not reuse stale answers.
"""
from __future__ import annotations

import base64
import hashlib
import io
import logging
import time
from pathlib import Path

from tqdm.auto import tqdm

from .decoding import greedy_dropping_finished
from .llm import ChatResult, ResponseCache, cache_key, strip_reasoning, truncation_of
from .vision_attention import batch_vision_attention

log = logging.getLogger("wafersage.hf_chat")


# Written beside an exported model for the scorer and the model card (how to render and ask), after the export
# and sometimes after its answers were cached: it does not change what the weights answer to a given message.
NOT_FINGERPRINTED = frozenset({"wafersage.json"})


def model_fingerprint(path: str) -> str:
    """Path plus a hash of the config and weight files (hub names: the name). Files up to 256 MB are hashed
    whole (a LoRA merge can change only bytes deep inside); bigger ones by size, modification time and head.
    The scorer's metadata (`NOT_FINGERPRINTED`) is left out, so documenting an export keeps its cached answers."""
    p = Path(path)
    if not p.is_dir():
        return path
    h = hashlib.sha256()
    files = sorted(p.glob("*.json")) + sorted(p.glob("*.safetensors"))
    for f in (f for f in files if f.name not in NOT_FINGERPRINTED):
        st = f.stat()
        h.update(f.name.encode())
        h.update(str(st.st_size).encode())
        with open(f, "rb") as fh:
            if st.st_size <= 256 << 20:
                h.update(fh.read())
            else:
                h.update(str(st.st_mtime_ns).encode())
                h.update(fh.read(1 << 16))
    return f"{path}@{h.hexdigest()[:12]}"


def to_hf_messages(messages: list[dict], decoded: dict | None = None) -> tuple[list[dict], list]:
    """OpenAI-format messages as transformers chat messages, and the PIL images in order. With `decoded` (a dict
    kept across calls), each distinct image URL is decoded once and its image object shared."""
    from PIL import Image
    decoded = {} if decoded is None else decoded
    out, images = [], []
    for m in messages:
        content = m["content"]
        if isinstance(content, str):
            out.append({"role": m["role"], "content": [{"type": "text", "text": content}]})
            continue
        items = []
        for part in content:
            if part["type"] == "image_url":
                url = part["image_url"]["url"]
                if url not in decoded:
                    decoded[url] = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
                images.append(decoded[url])
                items.append({"type": "image"})
            else:
                items.append({"type": "text", "text": part["text"]})
        out.append({"role": m["role"], "content": items})
    return out, images


def _text_length(request: dict) -> int:
    """Characters of text in a request's messages (images excluded)."""
    total = 0
    for m in request["messages"]:
        content = m["content"]
        total += len(content) if isinstance(content, str) else sum(len(p.get("text", "")) for p in content)
    return total


def _distinct_objects(items: list) -> tuple[list[int], list[int]]:
    """Where each distinct object (by identity) first appears in `items`, and each item's number among them."""
    first: dict[int, int] = {}
    positions, index = [], []
    for i, item in enumerate(items):
        if id(item) not in first:
            first[id(item)] = len(positions)
            positions.append(i)
        index.append(first[id(item)])
    return positions, index


class _OncePerPicture:
    """An image processor that processes each distinct picture object of a call once and gives every
    occurrence its outputs: the same pixel values and grid, row for row, as processing them all (tested).
    The questions of a batch that show the same map share one decoded picture (:func:`to_hf_messages`)."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):  # everything but the call is the wrapped processor's
        if name == "inner":  # not yet set (a copy being made): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __call__(self, images, **kwargs):
        import torch
        if not isinstance(images, list | tuple) or kwargs.get("return_tensors") != "pt":
            return self.inner(images, **kwargs)
        positions, index = _distinct_objects(list(images))
        if len(positions) == len(images):
            return self.inner(images, **kwargs)
        out = self.inner([images[i] for i in positions], **kwargs)
        if set(out) != {"pixel_values", "image_grid_thw"}:
            return self.inner(images, **kwargs)  # outputs this wrapper does not know how to repeat
        grid = out["image_grid_thw"]
        chunks = out["pixel_values"].split(grid.prod(-1).tolist())
        out["pixel_values"] = torch.cat([chunks[j] for j in index])
        out["image_grid_thw"] = grid[index]
        return out


class HFChat:
    """Batched generation with a local image-text-to-text model, behind the ChatClient interface."""

    def __init__(self, path: str, cache_dir: Path, batch_size: int = 64, device: str = "", length_grouped: bool = True,
                 drop_finished: bool = True, batched_vision: bool = True, shared_pictures: bool = True):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.processor = AutoProcessor.from_pretrained(path)
        self.processor.tokenizer.padding_side = "left"  # decoder-only batches pad on the left
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype).to(self.device).eval()
        if batched_vision:  # same-size pictures attend in one call per layer (the same outputs)
            batch_vision_attention(self.model)
        self.name, self.batch_size = model_fingerprint(path), max(1, batch_size)
        self.cache = ResponseCache(cache_dir)
        self.n_requests, self.length_grouped, self.drop_finished = 0, length_grouped, drop_finished
        self.shared_pictures = shared_pictures
        if shared_pictures and hasattr(self.processor, "image_processor"):
            self.processor.image_processor = _OncePerPicture(self.processor.image_processor)

    def _generate(self, requests: list[dict]) -> list[str]:
        import torch
        decoded: dict = {}
        convs, images = zip(*(to_hf_messages(r["messages"], decoded) for r in requests))
        texts = self.processor.apply_chat_template(list(convs), add_generation_prompt=True, tokenize=False)
        flat = [im for ims in images for im in ims]
        inputs = self.processor(text=texts, images=flat or None, padding=True, return_tensors="pt").to(self.device)
        if self.shared_pictures and len(decoded) < len(flat):
            inputs = self._encode_pictures_once(inputs, flat)
        temp = float(requests[0].get("temperature") or 0.0)
        sampling = {}
        if temp > 0:  # all explicit, as TRL's groups are: else transformers keeps the 50 likeliest tokens
            cut = truncation_of(requests[0])  # (and a checkpoint's generation_config its own top_p)
            sampling = {"do_sample": True, "temperature": temp, "top_k": cut["top_k"], "top_p": 1.0,
                        "min_p": cut["min_p"] or None}
        # Greedy batches drop each answer from the batch once it ends (the same answers, less compute).
        decoding = sampling or {"do_sample": False,
                                **({"custom_generate": greedy_dropping_finished} if self.drop_finished else {})}
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=int(requests[0].get("max_tokens", 256)), **decoding)
        return self.processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    def _encode_pictures_once(self, inputs, flat: list) -> dict:
        """The model inputs with each distinct picture of the batch encoded once: the vision tower runs on the
        distinct pictures and its outputs (the picture embeddings and Qwen3-VL's deepstack features) are given
        to every question that shows the same picture, through transformers' `mm_encoder_outputs` (precomputed
        encoder outputs). A map asked several questions in one batch is seen once. Models whose picture
        features are not Qwen3-VL's keep `generate`'s own encoding."""
        import torch
        if getattr(self.model.config, "model_type", "") != "qwen3_vl" or "pixel_values" not in inputs:
            return inputs
        distinct, index = _distinct_objects(flat)
        grid = inputs["image_grid_thw"]
        chunks = inputs["pixel_values"].split(grid.prod(-1).tolist())
        with torch.inference_mode():
            seen = self.model.get_image_features(pixel_values=torch.cat([chunks[i] for i in distinct]),
                                                 image_grid_thw=grid[distinct], return_dict=True)
        per_picture = type(seen)(pooler_output=tuple(seen.pooler_output[j] for j in index),
                                 deepstack_features=[tuple(f[j] for j in index) for f in seen.deepstack_features])
        out = {k: v for k, v in inputs.items() if k != "pixel_values"}
        return out | {"mm_encoder_outputs": {"image": per_picture}}

    def complete_many(self, requests: list[dict], desc: str = "hf", progress: bool = True) -> list[ChatResult]:
        """Answers in request order; cached ones are not generated again."""
        # A sampled request's key names the truncation it was sampled with (none, unless asked for).
        keyed = [dict(r, model=self.name, **(truncation_of(r) if float(r.get("temperature") or 0) > 0 else {}))
                 for r in requests]
        keys = [cache_key(r) for r in keyed]
        results: list[ChatResult | None] = [None] * len(requests)
        todo = []
        for i, k in enumerate(keys):
            hit = self.cache.get(k)
            if hit is not None:
                results[i] = ChatResult(hit["text"], cached=True)
            else:
                todo.append(i)
        # A batch shares its sampling settings: batches are cut within groups of equal settings.
        groups: dict[tuple, list[int]] = {}
        for i in todo:
            r = requests[i]
            groups.setdefault((r.get("max_tokens"), r.get("temperature"), *truncation_of(r).values()), []).append(i)
        # Within a group, requests of similar text length share a batch: less padding, and answers of similar
        # length, so a batch's generation stops soon after its own answers end.
        if self.length_grouped:
            groups = {k: sorted(g, key=lambda i: _text_length(requests[i])) for k, g in groups.items()}
        batches = [g[s: s + self.batch_size] for g in groups.values() for s in range(0, len(g), self.batch_size)]
        for idx in tqdm(batches, desc=desc, disable=not progress, mininterval=2.0):
            t0 = time.perf_counter()
            self.n_requests += len(idx)
            try:
                texts = self._generate([requests[i] for i in idx])
            except Exception as exc:  # a failing batch is recorded per request, the stage goes on
                log.warning("generation failed: %s", exc)
                for i in idx:
                    results[i] = ChatResult(None, f"{type(exc).__name__}: {exc}")
                continue
            dt = (time.perf_counter() - t0) / len(idx)
            for i, text in zip(idx, texts):
                text = strip_reasoning(text)
                if text:
                    self.cache.put(keys[i], {"text": text, "model": self.name})
                    results[i] = ChatResult(text, seconds=dt)
                else:
                    results[i] = ChatResult(None, "empty generation", seconds=dt)
        return results
