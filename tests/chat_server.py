"""A scripted OpenAI-compatible chat server on localhost for tests: answers 429, 500, slow, malformed or 400
on cue, otherwise a real-format chat.completion whose content comes from a responder function."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "openai"


def body(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def last_user_text(request: dict) -> str:
    content = request["messages"][-1]["content"]
    return content if isinstance(content, str) else content[-1]["text"]


def echo(request: dict) -> str:
    return f"echo: {last_user_text(request)}"


class Script:
    """What the server answers, one behaviour per request: ok, 429, 500, slow, malformed, 400."""

    def __init__(self, plan: list[str], default: str = "ok", responder=echo):
        self.plan, self.default, self.requests, self.responder = list(plan), default, [], responder
        self.lock = threading.Lock()

    def next(self, request: dict) -> str:
        with self.lock:
            self.requests.append(request)
            return self.plan.pop(0) if self.plan else self.default


def _handler(script: Script):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, code: int, payload: bytes, headers: dict | None = None):
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            try:
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (the slow-answer case)
                pass

        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            what = script.next(request)
            if isinstance(what, bytes):  # a 200 with exactly this body (wrong-shaped JSON, say)
                return self._send(200, what)
            if what == "429":
                return self._send(429, b'{"error": {"message": "Rate limit reached", "type": "requests"}}',
                                  {"retry-after-ms": "20"})
            if what == "500":
                return self._send(500, b'{"error": {"message": "internal error"}}', {"retry-after-ms": "20"})
            if what == "400":
                return self._send(400, json.dumps(body("vllm_error.json")).encode())
            if what == "slow":
                time.sleep(1.5)
            if what == "malformed":
                return self._send(200, b'{"id": "chatcmpl-1", "choices": [{"message": {"content": "trunc')
            answer = body("openai_chat_completion.json")
            answer["choices"][0]["message"]["content"] = script.responder(request)
            return self._send(200, json.dumps(answer).encode())
    return Handler


@pytest.fixture
def server():
    servers = []

    def start(plan, default="ok", responder=echo):
        script = Script(plan, default, responder)
        srv = ThreadingHTTPServer(("127.0.0.1", 0), _handler(script))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/v1", script
    yield start
    for srv in servers:
        srv.shutdown()


