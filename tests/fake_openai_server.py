"""A small OpenAI-compatible server on 127.0.0.1 that fails on purpose (failure injection for synthesis tests).

What it does with a request is decided by `plan(prompt, attempt) -> action`, where `attempt` counts the
requests seen for that prompt. Actions: "ok", "500", "429" (with `Retry-After: 0`), "400", "drop" (close
the connection without an answer), "malformed" (200 with a body that is not JSON), "empty" (200 with no
choices), "slow" (answer after `slow_seconds`, past the client's timeout). The default `failure_plan`
spreads prompts over these by a hash of the prompt, so tests can compute the expected outcome of every
record. Successful answers are a deterministic story built from the quoted words of the prompt.

Run by hand: `python tests/fake_openai_server.py --port 8011 --plan failures`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ACTIONS = ("ok", "500", "429", "400", "drop", "malformed", "empty", "slow")


def bucket(prompt: str, n: int = 10) -> int:
    return int(hashlib.sha1(prompt.encode()).hexdigest(), 16) % n


def failure_plan(prompt: str, attempt: int) -> str:
    """Per prompt: 10% always 500, 10% always 400, the rest fail transiently in one way, then succeed."""
    b = bucket(prompt)
    if b == 0:
        return "500"  # permanent server error: must end up in the failures after all retries
    if b == 1:
        return "400"  # not retryable: must fail at once
    transient = {
        2: ("500", 1),
        3: ("429", 2),
        4: ("drop", 1),
        5: ("malformed", 1),
        6: ("empty", 1),
        7: ("slow", 1),
    }
    if b in transient:
        action, times = transient[b]
        return action if attempt <= times else "ok"
    return "ok"


def expected_outcome(prompt: str) -> str:
    """'failed' or 'generated' for a prompt under `failure_plan` with enough retries (>= 2)."""
    return "failed" if bucket(prompt) in (0, 1) else "generated"


def ok_plan(prompt: str, attempt: int) -> str:
    return "ok"


def fake_story(prompt: str) -> str:
    if prompt.startswith("Summarize"):
        return "A child plays and is happy."
    words = re.findall(r'"([^"]+)"', prompt) or ["thing"]
    body = " ".join(f"The child saw the {w}." for w in words)
    return f"Once upon a time, there was a child. {body}\n\nIn the end, everyone was happy. ({bucket(prompt, 10**6)})"


class FakeOpenAIServer:
    def __init__(
        self,
        plan: Callable[[str, int], str] = failure_plan,
        delay: float = 0.0,
        slow_seconds: float = 3.0,
        port: int = 0,
    ):
        self.plan = plan
        self.delay = delay
        self.slow_seconds = slow_seconds
        self.attempts: Counter[str] = Counter()
        self.actions: Counter[str] = Counter()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
                    self.close_connection = True

            def do_GET(self):
                if self.path.rstrip("/") in ("/health", "/v1/health"):
                    self._send(200, b'{"status":"ok"}')
                elif self.path.rstrip("/") == "/v1/models":
                    self._send(
                        200,
                        json.dumps({"object": "list", "data": [{"id": "fake", "object": "model"}]}).encode(),
                    )
                else:
                    self._send(404, b'{"error":"not found"}')

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                payload = json.loads(self.rfile.read(length) or b"{}")
                chat = self.path.endswith("/chat/completions")
                if chat:
                    prompt = next(
                        (m["content"] for m in reversed(payload.get("messages", [])) if m["role"] == "user"),
                        "",
                    )
                else:
                    prompt = payload.get("prompt", "")
                with server._lock:
                    server.attempts[prompt] += 1
                    attempt = server.attempts[prompt]
                action = server.plan(prompt, attempt)
                with server._lock:
                    server.actions[action] += 1
                if server.delay:
                    time.sleep(server.delay)
                if action == "500":
                    return self._send(
                        500, b'{"error":{"message":"injected server error","type":"server_error"}}'
                    )
                if action == "429":
                    return self._send(
                        429,
                        b'{"error":{"message":"injected rate limit","type":"rate_limit"}}',
                        {"Retry-After": "0"},
                    )
                if action == "400":
                    return self._send(
                        400, b'{"error":{"message":"injected bad request","type":"invalid_request"}}'
                    )
                if action == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)  # no status line, no body
                    return None
                if action == "malformed":
                    return self._send(200, b'{"id": "x", "choices": [ {"index": 0, "mess')
                if action == "empty":
                    return self._send(
                        200, json.dumps({"id": "x", "object": "chat.completion", "choices": []}).encode()
                    )
                if action == "slow":
                    time.sleep(server.slow_seconds)
                text = fake_story(prompt)
                if chat:
                    choice = {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                    kind = "chat.completion"
                else:
                    choice = {"index": 0, "text": text, "finish_reason": "stop"}
                    kind = "text_completion"
                body = {
                    "id": f"fake-{attempt}",
                    "object": kind,
                    "created": int(time.time()),
                    "model": payload.get("model", "fake"),
                    "choices": [choice],
                    "usage": {
                        "prompt_tokens": len(prompt.split()),
                        "completion_tokens": len(text.split()),
                        "total_tokens": 0,
                    },
                }
                return self._send(200, json.dumps(body).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)  # loopback only
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread: threading.Thread | None = None

    def start(self) -> FakeOpenAIServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--plan", choices=["ok", "failures"], default="failures")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--max_seconds", type=float, default=600.0, help="stop after this long (bounded)")
    a = parser.parse_args()
    server = FakeOpenAIServer(ok_plan if a.plan == "ok" else failure_plan, delay=a.delay, port=a.port).start()
    print(server.url, flush=True)
    time.sleep(a.max_seconds)
    server.stop()


if __name__ == "__main__":
    main()
