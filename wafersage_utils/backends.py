"""Which engine answers the evaluation's questions: `hf`, `vllm` or `openai`, all behind one interface.

Every backend takes the same OpenAI-format chat requests (`inference.requests_for`) through
`complete_many(requests, desc, progress)`, has a `name` that goes into the cache key, and caches answers on
disk, so re-running the evaluation regenerates nothing:

- `hf`: transformers, batched with left padding (`hf_chat.HFChat`);
- `vllm`: vLLM's offline engine (`LLM.chat`), for a GPU with vLLM installed; `auto` picks it there and `hf`
  elsewhere;
- `openai`: any OpenAI-compatible endpoint (a vLLM server, a hosted API) through `llm.ChatClient`: the row
  for a large proprietary model, like the paper's baseline.
"""
from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path

from .hf_chat import model_fingerprint
from .llm import ChatClient, ChatResult, ChatSettings, ResponseCache, cache_key, strip_reasoning

log = logging.getLogger("wafersage.backends")
BACKENDS = ("auto", "hf", "vllm", "openai")


def vllm_available() -> bool:
    """vLLM installed and a CUDA device present."""
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch
    return torch.cuda.is_available()


class OpenAIChat(ChatClient):
    """The remote client, named by its model (the cache key does not include the server's address)."""

    @property
    def name(self) -> str:
        return self.settings.model


class VLLMChat:
    """Batched generation with vLLM's offline engine; answers cached under the model's fingerprint."""

    def __init__(self, path: str, cache_dir: Path, max_model_len: int = 4096, gpu_memory_utilization: float = 0.85,
                 seed: int = 0):
        from vllm import LLM
        self.llm = LLM(model=path, max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                       limit_mm_per_prompt={"image": 1}, seed=seed)
        self.name = model_fingerprint(path)
        self.cache = ResponseCache(cache_dir)
        self.n_requests = 0

    def complete_many(self, requests: list[dict], desc: str = "vllm", progress: bool = True) -> list[ChatResult]:
        from vllm import SamplingParams
        keys = [cache_key(dict(r, model=self.name)) for r in requests]
        results: list[ChatResult | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, k in enumerate(keys):
            hit = self.cache.get(k)
            if hit is not None:
                results[i] = ChatResult(hit["text"], cached=True)
            else:
                r = requests[i]
                groups.setdefault((r.get("max_tokens", 256), float(r.get("temperature") or 0.0)), []).append(i)
        for (max_tokens, temperature), idx in groups.items():
            t0 = time.perf_counter()
            self.n_requests += len(idx)
            outs = self.llm.chat([requests[i]["messages"] for i in idx],
                                 SamplingParams(max_tokens=int(max_tokens), temperature=temperature),
                                 use_tqdm=progress)
            dt = (time.perf_counter() - t0) / max(1, len(idx))
            for i, out in zip(idx, outs):
                text = strip_reasoning(out.outputs[0].text if out.outputs else "")
                if text:
                    self.cache.put(keys[i], {"text": text, "model": self.name})
                    results[i] = ChatResult(text, seconds=dt)
                else:
                    results[i] = ChatResult(None, "empty generation", seconds=dt)
        return results


def make_chat(backend: str, model: str, cache_dir: Path, batch_size: int = 16, base_url: str = "",
              api_key_env: str = "OPENAI_API_KEY", concurrency: int = 4, timeout_s: float = 120.0):
    """A chat backend for `model` (a folder or hub id; for `openai`, the served model's name)."""
    if backend not in BACKENDS:
        raise ValueError(f"answer backend {backend!r}: expected one of {BACKENDS}")
    if backend == "auto":
        backend = "vllm" if vllm_available() else "hf"
        log.info("answer backend auto: %s", backend)
    if backend == "vllm":
        if not vllm_available():
            raise RuntimeError("backend 'vllm' needs the vllm package and a CUDA GPU; use 'hf' or 'auto' here")
        return VLLMChat(model, cache_dir)
    if backend == "openai":
        if not base_url:
            raise ValueError(f"backend 'openai' for {model!r} needs a base_url (e.g. http://localhost:8000/v1)")
        settings = ChatSettings(model=model, base_url=base_url, api_key_env=api_key_env, concurrency=concurrency,
                                timeout_s=timeout_s, temperature=0.0)
        return OpenAIChat(settings, cache_dir)
    from .hf_chat import HFChat
    return HFChat(model, cache_dir, batch_size=batch_size)

