"""The OpenAI-compatible server (wafersage_utils.serving) with the tiny Qwen3-VL: the official `openai` client and
the model card's curl request get answers, streaming matches the whole answer, concurrent requests are batched
without changing greedy answers, the queue bound answers 429, and every refusal is a 4xx with a JSON error."""
import base64
import io
import json
import logging
import os
import subprocess
import sys
import threading

import httpx
import pytest
from PIL import Image

from tests.test_synth import _one
from wafersage_utils.maps import render
from wafersage_utils.serving import cli, schema
from wafersage_utils.serving import images as image_urls
from wafersage_utils.training import tiny_vlm

QUESTION = "What type of defect pattern is visible on this wafer map?"


def _png(size: int = 64) -> bytes:
    m, _ = _one("Edge-Loc", angle=90.0, span=60.0, depth=0.3, density=1.0)
    buf = io.BytesIO()
    render.to_image(m, size).convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _messages(url: str, text: str = QUESTION) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny Qwen3-VL with random weights, saved like an export (random answers: the wiring is under test)."""
    root = tmp_path_factory.mktemp("served")
    texts = [QUESTION, "The failures cluster at the edge near 3 o'clock.", "A donut ring of failures."] * 20
    return tiny_vlm.build_tiny_vlm(texts, root / "tiny-served", tiny_vlm.TinySpec(image_size=32, vocab_size=512), seed=0)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    (root / "wafer.png").write_bytes(_png())
    return root


@pytest.fixture(scope="module")
def srv(model_dir, images):
    cfg = schema.ServeConfig(model_path=str(model_dir), served_model_name="tiny", port=0, batch_size=8,
                            image_root=str(images), max_tokens_limit=256, max_request_bytes=1 << 20,
                            max_image_pixels=512 * 512, n_threads=1)
    with cli.BackgroundServer(cfg) as s:
        yield s


@pytest.fixture(scope="module")
def client(srv):
    from openai import OpenAI
    return OpenAI(base_url=srv.url, api_key="unused", max_retries=0, timeout=60)


def test_models_and_a_chat_completion_with_the_openai_client(client, srv, caplog):
    assert [m.id for m in client.models.list()] == ["tiny"]
    with caplog.at_level(logging.INFO, logger="wafersage.serve"):
        r = client.chat.completions.create(model="tiny", messages=_messages(_data_url(_png())), max_tokens=12,
                                           temperature=0)
    choice = r.choices[0]
    assert r.object == "chat.completion" and r.model == "tiny" and r.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length") and 1 <= r.usage.completion_tokens <= 12
    assert r.usage.prompt_tokens > 16  # the image's 16 tokens and the question
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    line = [rec.getMessage() for rec in caplog.records if r.id in rec.getMessage()]
    assert len(line) == 1 and "status=200" in line[0] and "latency_ms=" in line[0] \
        and f"completion_tokens={r.usage.completion_tokens}" in line[0]


def test_streaming_sends_the_same_answer_in_pieces_then_usage(client):
    kw = dict(model="tiny", messages=_messages(_data_url(_png())), max_tokens=16, temperature=0)
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2  # really in pieces


def test_max_tokens_and_stop_strings_end_the_answer(client):
    kw = dict(model="tiny", messages=_messages(_data_url(_png())), temperature=0)
    long = client.chat.completions.create(**kw, max_tokens=24)
    short = client.chat.completions.create(**kw, max_tokens=3)
    assert short.usage.completion_tokens == 3 and short.choices[0].finish_reason == "length"
    text = long.choices[0].message.content
    assert long.choices[0].message.content.startswith(short.choices[0].message.content.strip()[:3])
    if len(text) > 6:  # stop at a piece of the greedy answer: the answer ends just before it
        stop = text[len(text) // 2: len(text) // 2 + 3]
        cut = client.chat.completions.create(**kw, max_tokens=24, stop=[stop])
        assert cut.choices[0].finish_reason == "stop" and cut.choices[0].message.content == text[: text.find(stop)]
        pieces = client.chat.completions.create(**kw, max_tokens=24, stop=stop, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in pieces if c.choices) == text[: text.find(stop)]


def test_concurrent_requests_are_batched_and_greedy_answers_do_not_change(client, srv):
    questions = [QUESTION, "Where are the defects located on the wafer?", "Describe the wafer.", "Why?"] * 2
    alone = [client.chat.completions.create(model="tiny", messages=_messages(_data_url(_png()), q), max_tokens=10,
                                            temperature=0).choices[0].message.content for q in questions]
    engine = srv.app.state.engine
    before = dict(engine.stats)
    out = [None] * len(questions)
    barrier = threading.Barrier(len(questions))

    def ask(i):
        barrier.wait()
        out[i] = client.chat.completions.create(model="tiny", messages=_messages(_data_url(_png()), questions[i]),
                                                max_tokens=10, temperature=0).choices[0].message.content
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(questions))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert out == alone
    assert engine.stats["rows"] - before["rows"] == len(questions)
    assert engine.stats["batches"] - before["batches"] < len(questions)  # some requests shared a batch


def test_requests_past_the_queue_bound_get_429_with_a_json_error(model_dir):
    cfg = schema.ServeConfig(model_path=str(model_dir), served_model_name="tiny", port=0, batch_size=1, max_queue=1,
                            batch_wait_ms=0, n_threads=1)
    with cli.BackgroundServer(cfg) as s:
        body = {"model": "tiny", "messages": _messages(_data_url(_png())), "max_tokens": 64, "temperature": 0}
        codes, bodies = [None] * 6, [None] * 6
        barrier = threading.Barrier(6)

        def post(i):
            barrier.wait()
            r = httpx.post(f"{s.url}/chat/completions", json=body, timeout=60)
            codes[i], bodies[i] = r.status_code, r.json()
        threads = [threading.Thread(target=post, args=(i,)) for i in range(6)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    assert codes.count(200) >= 1 and codes.count(429) >= 1 and set(codes) <= {200, 429}
    refused = next(b for c, b in zip(codes, bodies) if c == 429)
    assert refused["error"]["code"] == "queue_full" and "capacity" in refused["error"]["message"]


def test_the_model_cards_curl_request_with_a_local_image(srv, images):
    """The card's request as written, with the served model's name and an image path inside --image-root."""
    payload = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Describe the wafer map defect pattern."},
        {"type": "image_url", "image_url": {"url": "wafer.png"}}]}], "max_tokens": 256})
    out = subprocess.run(["curl", "-sS", "-X", "POST", f"{srv.url}/chat/completions", "-H",
                          "Content-Type: application/json", "--data", payload],
                         capture_output=True, text=True, timeout=120, check=True)
    body = json.loads(out.stdout)
    assert "choices" in body, body
    assert body["choices"][0]["message"]["role"] == "assistant" and body["usage"]["completion_tokens"] >= 1
    absolute = dict(json.loads(payload))
    absolute["messages"][0]["content"][1]["image_url"]["url"] = str(images / "wafer.png")
    assert httpx.post(f"{srv.url}/chat/completions", json=absolute, timeout=60).status_code == 200


def _bomb(tmp_path) -> bytes:
    """A PNG of a few kilobytes that decodes to 144 million pixels."""
    buf = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("case", ["remote", "outside", "dotdot", "symlink", "missing", "bomb", "big_image", "not_image",
                                  "bad_base64", "too_many_images", "body_too_large", "max_tokens", "wrong_model",
                                  "not_json", "bad_field", "n", "unknown_part"])
def test_refusals_are_4xx_with_json_errors(srv, images, tmp_path, case):
    outside = tmp_path / "secret.png"
    outside.write_bytes(_png())
    link = images / f"link-{case}.png"
    if case == "symlink" and not link.exists():
        link.symlink_to(outside)
    url = {"remote": "https://example.com/wafer.png", "outside": str(outside), "dotdot": f"../{outside.parent.name}/x.png",
           "symlink": link.name, "missing": "nope.png", "bomb": _data_url(_bomb(tmp_path)),
           "big_image": _data_url(_png(600)), "not_image": _data_url(b"GIF89a not really"),
           "bad_base64": "data:image/png;base64,@@@"}.get(case, _data_url(_png()))
    body = {"model": "tiny", "messages": _messages(url), "max_tokens": 8}
    if case == "too_many_images":
        body["messages"][0]["content"] = [{"type": "image_url", "image_url": {"url": url}}] * 5 + [{"type": "text", "text": "?"}]
    if case == "body_too_large":
        body["messages"][0]["content"][1]["text"] = "x" * (1 << 20)
    if case == "max_tokens":
        body["max_tokens"] = 100000
    if case == "wrong_model":
        body["model"] = "gpt-4o"
    if case == "bad_field":
        body["temperature"] = "hot"
    if case == "n":
        body["n"] = 3
    if case == "unknown_part":
        body["messages"][0]["content"].append({"type": "input_audio", "input_audio": {"data": ""}})
    raw = b"{not json" if case == "not_json" else json.dumps(body).encode()
    r = httpx.post(f"{srv.url}/chat/completions", content=raw, headers={"Content-Type": "application/json"}, timeout=60)
    expected = {"outside": 403, "dotdot": 403, "symlink": 403, "wrong_model": 404, "body_too_large": 413}.get(case, 400)
    assert r.status_code == expected, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"] and "code" in err
    if case == "remote":
        assert "--allow-remote-images" in err["message"]
    if case in ("bomb", "big_image"):
        assert "pixels" in err["message"] and err["code"] == "image_too_large"
    if case == "bad_field":
        assert err["param"] == "temperature"


def test_unknown_routes_and_methods_answer_json(srv):
    r = httpx.get(f"{srv.url}/completions-nope", timeout=10)
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(f"{srv.url}/chat/completions", timeout=10)
    assert r.status_code == 405 and "error" in r.json()


def test_local_paths_are_refused_without_an_image_root(model_dir, images):
    cfg = schema.ServeConfig(model_path=str(model_dir), served_model_name="tiny", port=0, n_threads=1)
    with pytest.raises(schema.RequestError, match="--image-root") as err:
        image_urls.load_image(str(images / "wafer.png"), cfg)
    assert err.value.status == 400


def test_remote_images_when_allowed_never_reach_private_addresses(model_dir):
    cfg = schema.ServeConfig(model_path=str(model_dir), allow_remote_images=True)
    for url in ("http://127.0.0.1:9/x.png", "http://localhost/x.png", "http://169.254.169.254/latest"):
        with pytest.raises(schema.RequestError, match="not a public"):
            image_urls.load_image(url, cfg)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_remote_image_is_fetched_from_the_checked_address(monkeypatch, scheme):
    # DNS rebinding: the name resolves to a public address when checked and to loopback afterwards. The fetch
    # must connect to the address that was checked (Host header and TLS name still the URL's), never resolve
    # again; a private first answer is refused before any connection.
    answers = iter([[(2, 1, 6, "", ("93.184.216.34", 0))], [(2, 1, 6, "", ("127.0.0.1", 0))]])
    monkeypatch.setattr(image_urls.socket, "getaddrinfo", lambda host, port, *a, **k: next(answers))
    seen = []

    def handler(request):
        seen.append(request)
        return httpx.Response(200, content=_png())
    cfg = schema.ServeConfig(model_path="unused", allow_remote_images=True)
    data = image_urls.download(f"{scheme}://wafers.example.org:8443/a.png?x=1", cfg, "image",
                           transport=httpx.MockTransport(handler))
    assert data == _png() and len(seen) == 1
    req = seen[0]
    assert (req.url.scheme, req.url.host, req.url.port, req.url.path, req.url.query) == \
        (scheme, "93.184.216.34", 8443, "/a.png", b"x=1")
    assert req.headers["host"] == "wafers.example.org:8443"
    assert req.extensions.get("sni_hostname") == ("wafers.example.org" if scheme == "https" else None)
    with pytest.raises(schema.RequestError, match="not a public"):  # the second answer, checked afresh
        image_urls.download("http://wafers.example.org/a.png", cfg, "image", transport=httpx.MockTransport(handler))
    assert len(seen) == 1


def test_a_remote_image_over_the_size_limit_is_refused(monkeypatch):
    monkeypatch.setattr(image_urls.socket, "getaddrinfo", lambda *a, **k: [(2, 1, 6, "", ("93.184.216.34", 0))])
    cfg = schema.ServeConfig(model_path="unused", allow_remote_images=True, max_image_bytes=100)
    big = httpx.MockTransport(lambda request: httpx.Response(200, content=b"x" * 1000))
    with pytest.raises(schema.RequestError, match="download above 100 bytes") as err:
        image_urls.download("http://wafers.example.org/a.png", cfg, "image", transport=big)
    assert err.value.status == 413
    moved = httpx.MockTransport(lambda request: httpx.Response(302, headers={"location": "http://127.0.0.1/"}))
    with pytest.raises(schema.RequestError, match="answered 302"):  # redirects are never followed
        image_urls.download("http://wafers.example.org/a.png", cfg, "image", transport=moved)


def test_resolve_model_finds_a_run_folders_models(tmp_path, model_dir):
    run = tmp_path / "myrun"
    (run / "models" / "rl").mkdir(parents=True)
    os.symlink(model_dir, run / "models" / "rl" / "merged")
    assert cli.resolve_model(str(run), "rl") == (str(run / "models" / "rl" / "merged"), "myrun-rl")
    with pytest.raises(FileNotFoundError, match=r"no exported 'sft' model.*\['rl'\]"):
        cli.resolve_model(str(run), "sft")
    assert cli.resolve_model(str(model_dir))[1] == "tiny-served"


def test_the_console_command_serves_on_a_free_port(model_dir):
    proc = subprocess.Popen([sys.executable, "-m", "wafersage_utils.serving", str(model_dir), "--port", "0",
                             "--served-model-name", "cli", "--threads", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        assert "wafersage-serve: model 'cli' at http://127.0.0.1:" in line, line
        url = line.split(" at ")[1].split()[0]
        for _ in range(600):  # the model loads after the socket is bound
            try:
                r = httpx.get(f"{url}/models", timeout=5)
                break
            except httpx.TransportError:
                import time
                time.sleep(0.1)
        assert r.json()["data"][0]["id"] == "cli"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
