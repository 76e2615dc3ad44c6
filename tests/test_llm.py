"""The OpenAI-compatible client: request building, parsing of recorded bodies, retries, cache and resume,
against a scripted local HTTP server (no network)."""
import base64
import json

import pytest

from tests.chat_server import body
from wafersage_utils.chat import llm

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


def settings(url: str, **kw) -> llm.ChatSettings:
    base = dict(model="wafer-teacher", base_url=url, api_key_env="WAFERSAGE_TEST_KEY", timeout_s=0.5,
                max_retries=3, concurrency=2)
    return llm.ChatSettings(**(base | kw))


def test_request_carries_image_as_data_url_and_sampling_parameters():
    req = llm.build_request(llm.ChatSettings(model="m", temperature=0.3, json_mode=True), "sys", "where?", PNG)
    assert req["model"] == "m" and req["temperature"] == 0.3 and req["response_format"] == {"type": "json_object"}
    assert req["messages"][0] == {"role": "system", "content": "sys"}
    image, text = req["messages"][1]["content"]
    assert image["image_url"]["url"].startswith("data:image/png;base64,")
    assert base64.b64decode(image["image_url"]["url"].split(",", 1)[1]) == PNG
    assert text == {"type": "text", "text": "where?"}


def test_cache_key_depends_on_image_prompt_model_and_parameters_only():
    s = llm.ChatSettings(model="m")
    k = llm.cache_key(llm.build_request(s, "sys", "q", PNG))
    assert k == llm.cache_key(llm.build_request(llm.ChatSettings(model="m", base_url="http://other/v1"), "sys", "q", PNG))
    assert k != llm.cache_key(llm.build_request(s, "sys", "q", PNG + b"\0"))
    assert k != llm.cache_key(llm.build_request(s, "sys", "q2", PNG))
    assert k != llm.cache_key(llm.build_request(llm.ChatSettings(model="m2"), "sys", "q", PNG))
    assert k != llm.cache_key(llm.build_request(llm.ChatSettings(model="m", temperature=0.9), "sys", "q", PNG))


@pytest.mark.parametrize("name, text", [
    ("openai_chat_completion.json", "The failing dies form a compact blob at the center"),
    ("vllm_chat_completion.json", '{"defect_types": ["Scratch"]'),
    ("qwen3_think_tags.json", "Failures cluster at the edge around 3 o'clock as an arc."),
    ("content_parts.json", "A continuous ring of failures runs around the edge."),
])
def test_parse_recorded_bodies(name, text):
    got, finish, usage = llm.parse_response(body(name))
    assert got.startswith(text) and "<think>" not in got
    assert finish == "stop"


@pytest.mark.parametrize("name, reason", [("refusal.json", "refused"), ("vllm_error.json", "no choices")])
def test_parse_rejects_bodies_without_text(name, reason):
    with pytest.raises(llm.MalformedResponse, match=reason):
        llm.parse_response(body(name))


def test_retries_429_and_500_then_caches(server, tmp_path):
    url, script = server(["429", "500", "ok"])
    client = llm.ChatClient(settings(url), tmp_path)
    req = llm.build_request(client.settings, "sys", "q1", PNG)
    res = client.complete(req)
    assert res.error is None and res.text == "echo: q1" and not res.cached
    assert len(script.requests) == 3
    again = llm.ChatClient(settings(url), tmp_path).complete(req)
    assert again.cached and again.text == "echo: q1" and len(script.requests) == 3  # no new request


def test_truncated_sampling_reaches_the_server_only_when_asked_for(server, tmp_path):
    # top_k / min_p travel in extra_body, which the OpenAI client merges into the JSON body, where vLLM's
    # server reads them; a request that asks for neither sends neither (OpenAI's own API rejects them) and
    # keeps the key it had before the settings existed.
    plain = llm.build_request(llm.ChatSettings(model="m", temperature=1.0), "sys", "q", PNG)
    assert "extra_body" not in plain and llm.truncation_of(plain) == {"top_k": 0, "min_p": 0.0}
    cut = llm.build_request(llm.ChatSettings(model="m", temperature=1.0, top_k=5), "sys", "q", PNG)
    assert cut["extra_body"] == {"top_k": 5, "min_p": 0.0} and llm.cache_key(cut) != llm.cache_key(plain)
    url, script = server(["ok", "ok"])
    client = llm.ChatClient(settings(url, temperature=1.0, top_k=5, min_p=0.05), tmp_path)
    assert client.complete(llm.build_request(client.settings, "sys", "q1", PNG)).error is None
    client = llm.ChatClient(settings(url, temperature=1.0), tmp_path)
    assert client.complete(llm.build_request(client.settings, "sys", "q2", PNG)).error is None
    sent, unsent = script.requests
    assert (sent["top_k"], sent["min_p"]) == (5, 0.05) and "extra_body" not in sent
    assert "top_k" not in unsent and "min_p" not in unsent


def test_timeout_is_retried(server, tmp_path):
    url, script = server(["slow", "ok"])
    res = llm.ChatClient(settings(url), tmp_path).complete(llm.build_request(settings(url), "", "q", None))
    assert res.error is None and res.text == "echo: q" and len(script.requests) == 2


def test_retries_exhausted_is_an_error_not_an_exception_and_not_cached(server, tmp_path):
    url, script = server([], default="500")
    client = llm.ChatClient(settings(url, max_retries=1), tmp_path)
    res = client.complete(llm.build_request(client.settings, "", "q", None))
    assert res.text is None and "500" in res.error and len(script.requests) == 2
    assert len(client.cache) == 0


def test_client_error_is_not_retried(server, tmp_path):
    url, script = server(["400"])
    res = llm.ChatClient(settings(url), tmp_path).complete(llm.build_request(settings(url), "", "q", None))
    assert "400" in res.error and "does not exist" in res.error and len(script.requests) == 1


def test_malformed_body_is_retried_once_then_reported(server, tmp_path):
    url, script = server(["malformed", "ok"])
    client = llm.ChatClient(settings(url), tmp_path)
    assert client.complete(llm.build_request(client.settings, "", "a", None)).text == "echo: a"
    url2, script2 = server([], default="malformed")
    client2 = llm.ChatClient(settings(url2), tmp_path / "other")
    res = client2.complete(llm.build_request(client2.settings, "", "b", None))
    assert res.text is None and res.error.startswith("malformed response") and len(script2.requests) == 2


def test_interrupted_run_resumes_from_the_cache(server, tmp_path):
    """A run that died after some answers (here: the server starts failing) costs only the rest on rerun."""
    url, script = server(["ok"] * 3, default="400")
    client = llm.ChatClient(settings(url, concurrency=1), tmp_path)
    reqs = [llm.build_request(client.settings, "sys", f"q{i}", PNG) for i in range(6)]
    first = client.complete_many(reqs, progress=False)
    assert [r.error is None for r in first] == [True] * 3 + [False] * 3
    url2, script2 = server([])
    rerun = llm.ChatClient(settings(url2, concurrency=3), tmp_path).complete_many(reqs, progress=False)
    assert [r.text for r in rerun] == [f"echo: q{i}" for i in range(6)]
    assert [r.cached for r in rerun] == [True] * 3 + [False] * 3 and len(script2.requests) == 3


def test_concurrent_answers_keep_request_order(server, tmp_path):
    url, _ = server([])
    client = llm.ChatClient(settings(url, concurrency=4), tmp_path)
    res = client.complete_many([llm.build_request(client.settings, "", f"q{i}", None) for i in range(12)], progress=False)
    assert [r.text for r in res] == [f"echo: q{i}" for i in range(12)]


def test_key_comes_from_the_named_environment_variable(server, tmp_path, monkeypatch):
    monkeypatch.setenv("WAFERSAGE_TEST_KEY", "sk-test-123")
    url, _ = server([])
    client = llm.ChatClient(settings(url), tmp_path)
    assert client._client.api_key == "sk-test-123"
    assert "sk-test-123" not in json.dumps(llm.settings_record(client.settings))


WRONG_SHAPES = [
    b'{"choices": {"0": {"message": {"content": "x"}}}}',  # choices an object
    b'{"choices": ["x"]}',  # a choice that is not an object
    b'{"choices": [{"message": "hello"}]}',  # message a string
    b'{"choices": [{"message": {"content": 42}}]}',  # content a number
    b'{"choices": [{"message": {"content": {"text": "x"}}}]}',  # content an object
    b'[1, 2, 3]',  # not an object at all
    b'"just text"',
    b'null',
]


@pytest.mark.parametrize("raw", WRONG_SHAPES)
def test_wrong_json_types_fail_one_item_not_the_batch(server, tmp_path, raw):
    # Each used to raise (KeyError, AttributeError, TypeError) out of complete_many and stop the stage.
    url, script = server([raw, raw], default="ok")
    client = llm.ChatClient(settings(url, concurrency=1, malformed_retries=1), tmp_path)
    reqs = [llm.build_request(client.settings, "", f"q{i}", None) for i in range(3)]
    res = client.complete_many(reqs, progress=False)
    assert res[0].text is None and res[0].error.startswith("malformed response")
    assert [r.text for r in res[1:]] == ["echo: q1", "echo: q2"]
    assert len(llm.ResponseCache(tmp_path)) == 2  # the failed item is not cached


def test_wrong_typed_usage_is_dropped_but_the_answer_kept(server, tmp_path):
    good = body("openai_chat_completion.json")
    good["usage"] = ["tokens", 3]
    good["choices"][0]["finish_reason"] = 7
    url, _ = server([json.dumps(good).encode()])
    res = llm.ChatClient(settings(url), tmp_path).complete(llm.build_request(settings(url), "", "q", None))
    assert res.error is None and res.usage == {} and res.finish_reason == "7"


@pytest.mark.parametrize("entry", ['[1, 2]', '{"text": 5}', '{"finish_reason": "stop"}', '"text"',
                                   '{"text": "x", "usage": [1]}', '\x00\xff not json'])
def test_wrong_shaped_cache_entries_are_misses(server, tmp_path, entry):
    url, script = server([])
    client = llm.ChatClient(settings(url), tmp_path)
    req = llm.build_request(client.settings, "", "q", None)
    path = client.cache._path(llm.cache_key(req))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(entry, errors="surrogateescape")
    res = client.complete_many([req], progress=False)[0]
    assert res.text == "echo: q" and not res.cached and len(script.requests) == 1
    assert json.loads(path.read_text())["text"] == "echo: q"  # rewritten with the real answer


def test_temporaries_of_a_killed_cache_write_are_swept(tmp_path):
    import os
    import time
    (tmp_path / "ab").mkdir()
    old = tmp_path / "ab" / ".abcd.json.x1y2.tmp"
    fresh = tmp_path / "ab" / ".abce.json.z3.tmp"
    old.write_text('{"te')
    fresh.write_text('{"te')
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    cache = llm.ResponseCache(tmp_path)
    assert cache.swept == 1 and not old.exists() and fresh.exists()  # a write in flight elsewhere is left alone


def test_an_exception_inside_one_request_is_that_items_error(server, tmp_path, monkeypatch):
    url, _ = server([])
    client = llm.ChatClient(settings(url, concurrency=2), tmp_path)

    def boom(request):
        if "q1" in json.dumps(request):
            raise RuntimeError("transport exploded")
        return llm.ChatResult("fine")
    monkeypatch.setattr(client, "_call", boom)
    res = client.complete_many([llm.build_request(client.settings, "", f"q{i}", None) for i in range(3)], progress=False)
    assert [r.text for r in res] == ["fine", None, "fine"] and "transport exploded" in res[1].error
