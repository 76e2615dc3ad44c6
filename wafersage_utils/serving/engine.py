"""The batching generation engine: one thread owns the model, takes waiting requests with the same sampling settings
in batches, and streams each row its tokens until its own stop."""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..chat.vision_attention import batch_vision_attention
from .schema import RequestError, ServeConfig

log = logging.getLogger("wafersage.serve")


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
    pixels: int = 0  # decoded image pixels this job holds until it finishes (the server's image budget)
    released: bool = False
    inputs: Any = None  # the processor's tensors for this request alone, made on admission (`Engine.admit`)

    @property
    def settings(self) -> tuple:
        """Requests batch together only with equal sampling settings (all greedy ones are equal)."""
        return (True, round(self.temperature, 4), round(self.top_p, 4)) if self.temperature > 0 else (False, 0.0, 1.0)


class QueueFull(Exception):
    pass


class _PrepareFailed(Exception):
    """The processor could not turn a batch's requests into inputs together."""


class _Row:
    """Incremental decoding of one batch row: its tokens, the text already sent, and whether it is finished."""

    def __init__(self, job: Job, tokenizer, eos: set[int], n_prompt: int = 0):
        self.job, self.tok, self.eos, self.n_prompt = job, tokenizer, eos, n_prompt
        self.ids: list[int] = []
        self.answered = False
        self.sent = ""
        self.final = ""  # the whole answer once finished (the non-streamed reply)
        self.finish: str | None = None
        self.hold = max((len(s) for s in job.stops), default=1) - 1

    def push(self, token: int) -> None:
        if self.finish:
            return
        if self.job.cancelled:
            self.finish = "cancelled"
            self.answer()
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
        self.answer()

    def answer(self) -> None:
        """The row's reply, the moment the row is finished: a short answer never waits for the longest row of
        its batch (nor for a row whose caller went away)."""
        if self.answered:
            return
        self.answered = True
        usage = {"prompt_tokens": self.n_prompt, "completion_tokens": len(self.ids),
                 "total_tokens": self.n_prompt + len(self.ids)}
        self.job.emit(("done", "stop" if self.finish == "cancelled" else self.finish, usage, self.final or self.sent))

    def _flush(self, text: str) -> None:
        if len(text) > len(self.sent) and text.startswith(self.sent):
            if self.job.stream:
                self.job.emit(("delta", text[len(self.sent):]))
            self.sent = text


_SEQUENCE_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")
_IMAGE_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")


def collate(parts: list, pad_id: int):
    """The inputs of a batch from each request's own processor output, as the processor makes them for the
    batch with left padding: token tensors left-padded (`pad_id`, attention 0), image tensors joined in request
    order (a request without images adds none). None when the parts do not join that way (a key this does not
    know, a token tensor missing or of another shape): the caller then prepares the batch with the processor."""
    import torch
    from transformers import BatchFeature
    keys = list(parts[0]) + [k for p in parts[1:] for k in p if k not in parts[0]]
    if "input_ids" not in keys or any(k not in _SEQUENCE_KEYS and k not in _IMAGE_KEYS for k in keys):
        return None
    width = max(int(p["input_ids"].shape[1]) for p in parts if "input_ids" in p)
    out = {}
    for key in keys:
        if key in _SEQUENCE_KEYS:
            values = [p.get(key) for p in parts]
            if any(v is None or v.dim() != 2 or v.shape[0] != 1 for v in values):
                return None
            fill = pad_id if key == "input_ids" else 0
            out[key] = torch.cat([torch.nn.functional.pad(v, (width - v.shape[1], 0), value=fill) for v in values])
        else:
            out[key] = torch.cat([p[key] for p in parts if key in p])
    return BatchFeature(out)


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
        batch_vision_attention(self.model)  # same-size pictures attend in one call per layer (the same outputs)
        gen = self.model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.processor.tokenizer.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos])
        self.pad_id = self.processor.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = min(self.eos)
        self._pending: deque[Job] = deque()
        self._cv = threading.Condition()
        self._prep = threading.Lock()  # the processor (its tokenizer's padding state) is not safe across threads
        self.admission = threading.BoundedSemaphore(max(1, cfg.admission_slots))
        self.held_pixels = 0
        tok = self.processor.tokenizer
        self.control_tokens = sorted({t.content for t in tok.added_tokens_decoder.values()
                                      if t.special or (t.content.startswith("<|") and t.content.endswith("|>"))}
                                     | set(tok.all_special_tokens), key=len, reverse=True)
        size = getattr(self.processor.image_processor, "size", None) or {}
        self.max_input_pixels = int(size.get("longest_edge") or size.get("max_pixels") or 0)
        self._running = True
        self.stats = {"batches": 0, "rows": 0, "max_batch": 0}
        self._tracker = _tracker_class()
        self._thread = threading.Thread(target=self._loop, name="wafersage-generate", daemon=True)
        self._thread.start()

    def admit(self, conversation: list[dict], images: list):
        """Check one request alone before it may join a batch: no control token in its text, and its prompt
        prepared by the processor and within the token limit. Returns the processor's tensors (a batch joins
        them: :func:`collate`, without preparing the requests again); any problem is a 400 for this request
        only, so nothing it holds can fail the requests batched with it."""
        for i, message in enumerate(conversation):
            for j, part in enumerate(message["content"]):
                text = part.get("text") or ""
                hit = next((t for t in self.control_tokens if t in text), None)
                if hit:
                    raise RequestError(400, f"messages.{i}.content.{j}: the text holds the control token {hit!r}; "
                                            "roles and images are given by the message structure, not by tokens in text",
                                       param=f"messages.{i}.content", code="control_token")
        try:
            with self._prep:
                text = self.processor.apply_chat_template([conversation], add_generation_prompt=True, tokenize=False)
                inputs = self.processor(text=text, images=images or None, return_tensors="pt")
        except Exception as exc:  # noqa: BLE001 — whatever the template or processor rejects is this request's 400
            raise RequestError(400, f"the request cannot be prepared for the model ({type(exc).__name__})",
                               code="invalid_request") from exc
        n = int(inputs["input_ids"].shape[1])
        if n > self.cfg.max_prompt_tokens:
            raise RequestError(400, f"the prompt is {n} tokens (images included), above this server's limit of "
                                    f"{self.cfg.max_prompt_tokens}", param="messages", code="prompt_too_long")
        return inputs

    def fit_image(self, im):
        """An image no larger than the processor would make it anyway (it resizes to at most max pixels): what a
        queued request holds in memory is what the model will see, not the upload's full size."""
        if self.max_input_pixels and im.width * im.height > self.max_input_pixels:
            scale = (self.max_input_pixels / (im.width * im.height)) ** 0.5
            im = im.resize((max(1, int(im.width * scale)), max(1, int(im.height * scale))))
        return im

    def submit(self, job: Job) -> None:
        with self._cv:
            if not self._running:
                raise RequestError(503, "the server is shutting down", kind="server_error", code="shutting_down")
            if len(self._pending) >= self.cfg.max_queue:
                raise QueueFull()
            if job.pixels and self.held_pixels + job.pixels > self.cfg.max_held_image_pixels:
                raise RequestError(429, f"the server holds {self.held_pixels} image pixels of waiting requests; this "
                                        f"request's {job.pixels} would pass the limit of "
                                        f"{self.cfg.max_held_image_pixels}; retry later",
                                   kind="rate_limit_error", code="image_memory_full")
            self.held_pixels += job.pixels
            self._pending.append(job)
            self._cv.notify()

    def _release(self, job: Job) -> None:
        with self._cv:
            if not job.released:
                job.released = True
                self.held_pixels -= job.pixels

    def queued(self) -> int:
        return len(self._pending)

    def stop(self) -> None:
        with self._cv:
            self._running = False
            left = list(self._pending)
            self._pending.clear()
            self._cv.notify_all()
        for job in left:
            self._release(job)
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
            key = next((j.settings for j in self._pending if not j.cancelled), None)
            batch = [j for j in self._pending if j.settings == key and not j.cancelled][: self.cfg.batch_size]
            dropped = [j for j in self._pending if j.cancelled]
            for j in batch + dropped:
                self._pending.remove(j)
        for j in dropped:  # their clients went away while they waited
            self._release(j)
        return batch

    def _loop(self) -> None:
        while self._running:
            batch = self._take_batch()
            if batch:
                self._run(batch)

    def _run(self, batch: list[Job]) -> None:
        """Generate a batch. If its inputs cannot be prepared together, each request is generated alone, so a
        failure stays with the request that causes it; an error reaches a caller as a generic message (never
        another request's text)."""
        try:
            self._generate(batch)
        except _PrepareFailed:
            if len(batch) > 1:
                log.warning("the inputs of a batch of %d could not be prepared together; one by one", len(batch))
                for job in batch:
                    self._run([job])
            else:
                log.exception("the inputs of one request could not be prepared")
                batch[0].emit(("error", 500, "the request could not be prepared for the model"))
        except Exception as exc:
            log.exception("generation failed for a batch of %d", len(batch))
            for job in batch:
                job.emit(("error", 500, f"generation failed ({type(exc).__name__}); the request was not answered"))
        finally:
            for job in batch:
                self._release(job)

    def _generate(self, batch: list[Job]) -> None:
        import torch
        now = time.perf_counter()
        for job in batch:
            job.started = now
        inputs = collate([j.inputs for j in batch], self.pad_id) if all(j.inputs is not None for j in batch) else None
        if inputs is None:  # a job made without admission (or inputs that do not join): the processor, on the batch
            images = [im for j in batch for im in j.images]
            try:
                with self._prep:
                    texts = self.processor.apply_chat_template([j.conversation for j in batch],
                                                               add_generation_prompt=True, tokenize=False)
                    inputs = self.processor(text=texts, images=images or None, padding=True, return_tensors="pt")
            except Exception as exc:
                raise _PrepareFailed(type(exc).__name__) from exc
        inputs = inputs.to(self.device)
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        rows = [_Row(j, self.processor.tokenizer, self.eos, int(n)) for j, n in zip(batch, prompt_tokens)]
        first = batch[0]
        sample = first.temperature > 0
        kwargs = dict(do_sample=sample, temperature=first.temperature if sample else None,
                      top_p=first.top_p if sample else None)
        self.stats["batches"] += 1  # counted before generating: a row may answer (and its caller read these) early
        self.stats["rows"] += len(batch)
        self.stats["max_batch"] = max(self.stats["max_batch"], len(batch))
        with torch.inference_mode():
            self.model.generate(**inputs, max_new_tokens=max(j.max_tokens for j in batch), pad_token_id=self.pad_id,
                                stopping_criteria=[self._tracker(rows)], **kwargs)
        for row in rows:
            if row.finish is None:  # generate stopped on its own length limit
                row.end("length", row._text())
            row.answer()
