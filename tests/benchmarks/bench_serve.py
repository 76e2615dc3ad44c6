"""Load on the OpenAI-compatible server: N concurrent clients for T seconds, batch 1 against batch 8, side by side.

    python tests/benchmarks/bench_serve.py [--model results/default] [--duration 20] [--max-tokens 32]

Each configuration starts the server as its own process (`python -m wafersage_utils.serving --port 0`), so the
clients (threads of this process, one HTTP connection each) never share an interpreter with it. Every client
sends chat requests back to back for T seconds: one real WM-811K wafer map (../shared/data) as a PNG data URL
and one of the model card's four questions, greedy. Printed per configuration: requests per second, completion
tokens per second, latency percentiles, and errors by status.

Targets (issue 8): no errors at a concurrency equal to the batch size, and throughput at batch 8 at least 3x
that at batch 1. The last row overloads a small queue on purpose: its 429s are the bound working, not errors.
The model is the run folder's SFT model when `--model` names a run that has one, else a random-weight tiny
Qwen3-VL built here (its answers run to max_tokens, so it measures generation, not the model's quality).
Run it alone: two cores, and other processes distort the timings.
"""
from __future__ import annotations

import argparse
import base64
import io
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from wafersage_utils.corpus.vqa import CARD_PROMPTS
from wafersage_utils.maps import loaders, render, synth
from wafersage_utils.serving import cli
from wafersage_utils.training import tiny_vlm


def wafer_urls(n: int, size: int) -> list[str]:
    path = loaders.DEFAULT_FILES["wm811k"]
    maps = (list(loaders.load_wm811k(path, max_maps=n).wafer_map) if path.exists()
            else list(synth.generate(synth.SynthConfig(n_wafers=n)).wafer_map))[:n]
    out = []
    for m in maps:
        buf = io.BytesIO()
        render.to_image(m, size).convert("RGB").save(buf, format="PNG")
        out.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())
    return out


def start_server(model: str, which: str, batch: int, queue: int, threads: int, extra: list[str] | None = None):
    cmd = [sys.executable, "-m", "wafersage_utils.serving", model, "--model", which, "--port", "0", "--batch-size",
           str(batch), "--max-queue", str(queue), "--threads", str(threads), "--served-model-name", "bench",
           *(extra or [])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if " at " not in line:
        proc.kill()
        raise RuntimeError(f"the server did not start: {line!r}")
    url = line.split(" at ")[1].split()[0]
    for _ in range(1200):
        try:
            httpx.get(f"{url}/models", timeout=30).raise_for_status()
            return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server never answered /v1/models")


def drive(url: str, clients: int, seconds: float, urls: list[str], max_tokens: int, seed: int) -> dict:
    latencies, tokens, statuses = [], [], Counter()
    lock = threading.Lock()
    questions = list(CARD_PROMPTS.values())
    start = time.perf_counter()
    stop_at = start + seconds

    def client(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        with httpx.Client(timeout=120) as http:
            while time.perf_counter() < stop_at:
                body = {"model": "bench", "max_tokens": max_tokens, "temperature": 0, "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": rng.choice(urls)}},
                    {"type": "text", "text": rng.choice(questions)}]}]}
                t0 = time.perf_counter()
                try:
                    r = http.post(f"{url}/chat/completions", json=body)
                    status = r.status_code
                    n = r.json()["usage"]["completion_tokens"] if status == 200 else 0
                except httpx.HTTPError as exc:
                    status, n = type(exc).__name__, 0
                dt = time.perf_counter() - t0
                with lock:
                    statuses[status] += 1
                    if status == 200:
                        latencies.append(dt)
                        tokens.append(n)
                if status == 429:
                    time.sleep(0.05)
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    wall = time.perf_counter() - start
    lat = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {"ok": len(latencies), "rps": len(latencies) / wall, "tok_s": sum(tokens) / wall,
            "p50": np.percentile(lat, 50), "p90": np.percentile(lat, 90), "p99": np.percentile(lat, 99),
            "errors": {k: v for k, v in statuses.items() if k != 200}, "wall": wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="results/default", help="a run folder or an exported model folder")
    ap.add_argument("--which", default="sft", help="which model of a run folder")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of load per configuration")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the server")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    try:
        model, _ = cli.resolve_model(args.model, args.which)
        size = 64
    except FileNotFoundError:
        model, size = str(tiny_vlm.build_tiny_vlm(list(CARD_PROMPTS.values()) * 20, Path(tmp.name) / "tiny",
                                                  tiny_vlm.TinySpec(image_size=64), seed=0)), 64
    urls = wafer_urls(64, size)
    print(f"model {model}; {len(urls)} real wafer maps at {size} px; {args.duration:.0f} s per row; "
          f"max_tokens {args.max_tokens}; server torch threads {args.threads}")
    rows = [("batch 1, 1 client", 1, 64, 1), ("batch 1, 8 clients", 1, 64, 8), ("batch 8, 8 clients", 8, 64, 8),
            ("batch 8, queue 8, 32 clients (overload)", 8, 8, 32)]
    results = {}
    print(f"{'configuration':42s} {'req/s':>7s} {'tok/s':>7s} {'p50 ms':>8s} {'p90 ms':>8s} {'p99 ms':>8s}  errors")
    for label, batch, queue, clients in rows:
        proc, url = start_server(model, args.which, batch, queue, args.threads)
        try:
            drive(url, clients, min(3.0, args.duration), urls, args.max_tokens, args.seed + 99)  # warm-up
            r = drive(url, clients, args.duration, urls, args.max_tokens, args.seed)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        results[label] = r
        print(f"{label:42s} {r['rps']:7.2f} {r['tok_s']:7.1f} {r['p50']:8.0f} {r['p90']:8.0f} {r['p99']:8.0f}  "
              f"{r['errors'] or 'none'}", flush=True)
    b1, b8 = results["batch 1, 8 clients"], results["batch 8, 8 clients"]
    ratio = b8["rps"] / b1["rps"]
    print(f"throughput batch 8 / batch 1 (8 clients each): {ratio:.2f}x (target >= 3x); "
          f"tokens/s ratio {b8['tok_s'] / b1['tok_s']:.2f}x")
    print(f"errors at concurrency = batch size: batch 1: {results['batch 1, 1 client']['errors'] or 'none'}; "
          f"batch 8: {b8['errors'] or 'none'} (target: none)")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
