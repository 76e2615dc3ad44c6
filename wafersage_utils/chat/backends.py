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
from pathlib import Path

from .hf_chat import HFChat, model_fingerprint
from .llm import ChatClient, ChatSettings, ResponseCache, truncation_of

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


class VLLMChat(HFChat):
    """vLLM's offline engine behind HFChat's cache and batching (only the generation differs)."""

    def __init__(self, path: str, cache_dir: Path, batch_size: int = 256, max_model_len: int = 4096,
                 gpu_memory_utilization: float = 0.85, seed: int = 0):
        from vllm import LLM
        self.llm = LLM(model=path, max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                       limit_mm_per_prompt={"image": 1}, seed=seed)
        self.name, self.batch_size = model_fingerprint(path), max(1, batch_size)
        self.cache = ResponseCache(cache_dir)
        self.n_requests = 0

    def _generate(self, requests: list[dict]) -> list[str]:
        from vllm import SamplingParams
        first = requests[0]  # HFChat batches only requests with equal sampling settings
        cut = truncation_of(first)
        params = SamplingParams(max_tokens=int(first.get("max_tokens", 256)),
                                temperature=float(first.get("temperature") or 0.0),
                                top_k=cut["top_k"] or -1, min_p=cut["min_p"])
        outs = self.llm.chat([r["messages"] for r in requests], params, use_tqdm=False)
        return [o.outputs[0].text if o.outputs else "" for o in outs]


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
    return HFChat(model, cache_dir, batch_size=batch_size)

